//! Criterion micro-benchmark of the event path in the agent: decoding a kernel connection
//! event from ring buffer bytes, and enriching it into an audit record.

use std::{hint::black_box, path::PathBuf};

use criterion::{Criterion, criterion_group, criterion_main};
use egress_agent::{
    audit::{KernelClock, RuleNames, decode_event, enrich},
    cgroup::{Hierarchy, PathCache, find_cgroup2_root},
};
use egress_common::ConnectionEvent;

fn event() -> ConnectionEvent {
    let mut dst = [0u8; 16];
    dst[..4].copy_from_slice(&[203, 0, 113, 10]);
    let mut src = [0u8; 16];
    src[..4].copy_from_slice(&[192, 0, 2, 1]);
    let mut comm = [0u8; 16];
    comm[..4].copy_from_slice(b"curl");
    ConnectionEvent {
        boot_ns: 1_000_000_000,
        generation: 1,
        cgroup_id: 1,
        socket_cookie: 42,
        rule: 1,
        audit_rule: 0,
        uid: 1000,
        pid: 4242,
        src,
        dst,
        src_port: 40_000,
        dst_port: 443,
        ip_version: 4,
        protocol: 6,
        verdict: 2,
        audit_verdict: 0,
        direction: 0,
        icmp_type: 0,
        _pad: [0; 2],
        dropped_packets: 1,
        comm,
    }
}

fn bytes(event: &ConnectionEvent) -> Vec<u8> {
    // SAFETY: ConnectionEvent is plain `repr(C)` data; viewing it as bytes is what the kernel
    // program's ring buffer write does.
    unsafe {
        std::slice::from_raw_parts(
            std::ptr::from_ref(event).cast::<u8>(),
            size_of::<ConnectionEvent>(),
        )
    }
    .to_vec()
}

fn decoder(c: &mut Criterion) {
    let raw = bytes(&event());
    c.bench_function("decode_event", |b| b.iter(|| decode_event(black_box(&raw))));

    // The cgroup cache resolves ids by walking the cgroup2 tree; without one (a build
    // machine), a directory stands in and the id stays unresolved, as for a vanished cgroup.
    let root = find_cgroup2_root().unwrap_or_else(|_| PathBuf::from("/"));
    let Ok(hierarchy) = Hierarchy::new(root) else {
        return;
    };
    let mut cgroups = PathCache::new(hierarchy);
    let clock = KernelClock::boot();
    let rules = RuleNames::default();
    let decoded = event();
    c.bench_function("decode_and_enrich", |b| {
        b.iter(|| {
            let event = decode_event(black_box(&raw)).unwrap_or(decoded);
            enrich(&event, &clock, &rules, &mut cgroups)
        });
    });
}

criterion_group!(benches, decoder);
criterion_main!(benches);
