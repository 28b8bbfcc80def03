# The egress agent image. Build: docker build -t egress:dev .
# Stage 1 builds with the toolchains the project pins (stable 1.95 for the agent, the nightly
# whose LLVM matches bpf-linker for the kernel program); stage 2 is a small runtime.

ARG RUST_VERSION=1.95.0
ARG NIGHTLY=nightly-2026-05-19
ARG BPF_LINKER_VERSION=0.13.0
ARG LLVM_MAJOR=22

FROM rust:${RUST_VERSION}-bookworm AS build
ARG NIGHTLY
ARG BPF_LINKER_VERSION
ARG LLVM_MAJOR
# LLVM for bpf-linker (the same major as the nightly's), as cargo xtask setup installs it.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      llvm-${LLVM_MAJOR}-dev libpolly-${LLVM_MAJOR}-dev libzstd-dev \
 && rm -rf /var/lib/apt/lists/*
# egress-agent's build.rs (aya-build) runs the toolchain named `nightly`: make that name the
# pinned date (rustup takes any directory under toolchains/ as an installed toolchain).
RUN rustup toolchain install ${NIGHTLY} --profile minimal --component rust-src \
 && host="$(rustc -vV | sed -n 's/^host: //p')" \
 && ln -s "${RUSTUP_HOME}/toolchains/${NIGHTLY}-${host}" "${RUSTUP_HOME}/toolchains/nightly-${host}" \
 && LLVM_PREFIX=/usr/lib/llvm-${LLVM_MAJOR} cargo install --locked \
      bpf-linker@${BPF_LINKER_VERSION} --no-default-features --features llvm-${LLVM_MAJOR}
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin egress \
 && install -D target/release/egress /out/egress

FROM gcr.io/distroless/cc-debian12 AS runtime
COPY --from=build /out/egress /usr/bin/egress
# The agent needs uid 0 (with only CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN, set by the DaemonSet)
# to write the audit log and read the host cgroup tree.
USER 0:0
ENTRYPOINT ["/usr/bin/egress"]
CMD ["agent", "--policy=/etc/egress/policies"]
