//! Criterion micro-benchmark of the policy compiler: one policy of deny rules with 100
//! prefixes each (IPv4 and IPv6 alternating) and TCP port ranges, compiled to map entries.
//! The end-to-end numbers (apply into the kernel, up to 1,000,000 prefixes) come from
//! `cargo xtask bench`.

use std::{fmt::Write as _, hint::black_box, path::Path};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use egress_agent::{
    compile::{CgroupResolution, compile},
    policy::{PolicySet, parse_str},
};

/// A policy with `prefixes` destinations, parsed from YAML as the agent would.
fn policy(prefixes: usize) -> PolicySet {
    let mut yaml = String::from(
        "apiVersion: egress.dev/v1alpha1\nkind: EgressPolicy\nmetadata:\n  name: bench\n\
         spec:\n  selector:\n    cgroups: [/bench]\n  egress:\n",
    );
    for (rule, start) in (0..prefixes).step_by(100).enumerate() {
        let _ = write!(
            yaml,
            "    - name: r{rule}\n      action: deny\n      protocol: tcp\n      \
             ports: [\"{}-{}\", 8080]\n      to:\n",
            1000 + rule % 500,
            2000 + rule % 500
        );
        for i in start..(start + 100).min(prefixes) {
            let n = i / 2;
            if i.is_multiple_of(2) {
                let _ = writeln!(
                    yaml,
                    "        - cidr: 10.{}.{}.{}/29",
                    (n >> 13) & 0xff,
                    (n >> 5) & 0xff,
                    (n & 0x1f) << 3
                );
            } else {
                let _ = writeln!(
                    yaml,
                    "        - cidr: fd00:0:{:x}:{:x}::/64",
                    n >> 16,
                    n & 0xffff
                );
            }
        }
    }
    match parse_str(Path::new("bench.yaml"), &yaml) {
        Ok(set) => set,
        Err(err) => panic!("the generated policy does not parse: {err}"),
    }
}

fn compiler(c: &mut Criterion) {
    let mut group = c.benchmark_group("compile");
    group.sample_size(10);
    for prefixes in [100, 10_000] {
        let set = policy(prefixes);
        let cgroups = CgroupResolution::default();
        group.bench_with_input(BenchmarkId::from_parameter(prefixes), &set, |b, set| {
            b.iter(|| compile(black_box(set), &cgroups, 0));
        });
    }
    group.finish();
}

criterion_group!(benches, compiler);
criterion_main!(benches);
