//! `cargo xtask setup`: installs what a fresh Debian 12 machine lacks. Idempotent and fast
//! when everything is present; every check and action is printed.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::util;

/// The LLVM major version shared by the nightly toolchain and bpf-linker.
const LLVM_MAJOR: &str = "22";
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Debian packages the build and the integration tests need.
/// llvm-22-dev and libpolly-22-dev: bpf-linker links against LLVM 22 (its CMake config
/// references Polly, so llvm-sys's probe needs it). libzstd-dev: LLVM's link dependencies.
/// iproute2, curl, bpftool, nftables, iperf3: the integration tests and manual checks.
/// dnsmasq-base and bind9-dnsutils: the DNS server and `dig` of the hostname-rule tests.
const PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "iproute2",
    "curl",
    "bpftool",
    "iperf3",
    "nftables",
    "util-linux",
    "dnsmasq-base",
    "bind9-dnsutils",
];

pub fn run() -> Result<()> {
    util::section("setup");
    install_packages()?;
    install_rust_src()?;
    let linker = install_bpf_linker()?;
    check_llvm_versions(&linker)?;
    println!("setup: everything is in place");
    Ok(())
}

fn package_installed(pkg: &str) -> Result<bool> {
    let out = util::output(Command::new("dpkg-query").args(["-W", "-f=${db:Status-Abbrev}", pkg]))?;
    Ok(out.status.success() && String::from_utf8_lossy(&out.stdout).starts_with("ii"))
}

fn install_packages() -> Result<()> {
    let mut missing = Vec::new();
    for pkg in PACKAGES {
        if package_installed(pkg)? {
            println!("setup: package {pkg}: installed");
        } else {
            println!("setup: package {pkg}: missing");
            missing.push(*pkg);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    util::run(Command::new("apt-get").args(["update", "-q"]))?;
    util::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing),
    )
}

fn install_rust_src() -> Result<()> {
    let installed = util::stdout(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .context("the nightly toolchain is required to build the eBPF program")?;
    if installed.lines().any(|l| l.trim().starts_with("rust-src")) {
        println!("setup: rust-src (nightly): installed");
        return Ok(());
    }
    println!("setup: rust-src (nightly): missing");
    util::run(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        "nightly",
    ]))
}

fn install_bpf_linker() -> Result<PathBuf> {
    if let Some(path) = util::find_program("bpf-linker") {
        println!("setup: bpf-linker: {}", path.display());
        return Ok(path);
    }
    println!("setup: bpf-linker: missing, building it (takes a few minutes)");
    let prefix = format!("/usr/lib/llvm-{LLVM_MAJOR}");
    util::run(util::cargo().env("LLVM_PREFIX", &prefix).args([
        "install",
        "--locked",
        &format!("bpf-linker@{BPF_LINKER_VERSION}"),
        "--no-default-features",
        "--features",
        &format!("llvm-{LLVM_MAJOR}"),
    ]))?;
    util::find_program("bpf-linker")
        .context("bpf-linker was installed but is not on PATH or in ~/.cargo/bin")
}

/// The LLVM major version the nightly rustc was built with.
fn nightly_llvm_major() -> Result<String> {
    let out = util::stdout(Command::new("rustc").args(["+nightly", "--version", "--verbose"]))?;
    out.lines()
        .find_map(|l| l.strip_prefix("LLVM version:"))
        .and_then(|v| v.trim().split('.').next().map(str::to_owned))
        .context("`rustc +nightly --version --verbose` printed no LLVM version")
}

/// The LLVM major version bpf-linker is linked against, from the libLLVM it loads.
fn linker_llvm_major(linker: &Path) -> Result<Option<String>> {
    let out = util::stdout(Command::new("ldd").arg(linker))?;
    Ok(parse_ldd_llvm_major(&out))
}

/// Finds `libLLVM.so.22.1` (Debian) or `libLLVM-22.so` (upstream) in ldd output.
fn parse_ldd_llvm_major(ldd: &str) -> Option<String> {
    ldd.lines().find_map(|line| {
        let lib = line.split_whitespace().next()?;
        let rest = lib
            .strip_prefix("libLLVM.so.")
            .or_else(|| lib.strip_prefix("libLLVM-"))?;
        let major: String = rest.chars().take_while(char::is_ascii_digit).collect();
        (!major.is_empty()).then_some(major)
    })
}

fn check_llvm_versions(linker: &Path) -> Result<()> {
    let version = util::stdout(Command::new(linker).arg("--version"))?;
    println!("setup: {}", version.trim());
    let rustc = nightly_llvm_major()?;
    match linker_llvm_major(linker)? {
        Some(linked) if linked == rustc => {
            println!("setup: LLVM {rustc} in both rustc +nightly and bpf-linker");
            Ok(())
        }
        Some(linked) => bail!(
            "LLVM mismatch: rustc +nightly uses LLVM {rustc} but {} links LLVM {linked}; \
             reinstall bpf-linker against LLVM {rustc} (remove it and rerun `cargo xtask setup`)",
            linker.display()
        ),
        None => {
            println!(
                "setup: warning: ldd shows no libLLVM for {} (statically linked?); \
                 assuming it matches LLVM {rustc}",
                linker.display()
            );
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_ldd_llvm_major;

    #[test]
    fn reads_llvm_major_from_ldd() {
        let debian = "\tlinux-vdso.so.1 (0x00007ffc)\n\
                      \tlibLLVM.so.22.1 => /usr/lib/llvm-22/lib/libLLVM.so.22.1 (0x00007fa1)\n";
        assert_eq!(parse_ldd_llvm_major(debian).as_deref(), Some("22"));
        let upstream = "\tlibLLVM-21.so => /usr/lib/llvm-21/lib/libLLVM-21.so (0x1)\n";
        assert_eq!(parse_ldd_llvm_major(upstream).as_deref(), Some("21"));
        assert_eq!(
            parse_ldd_llvm_major("\tlibc.so.6 => /lib/libc.so.6\n"),
            None
        );
    }
}
