//! The loaded programs of a `dns_kernel` test, and how it runs packets through them.

use std::{net::IpAddr, path::Path};

use egress_agent::{
    datapath::{
        test_run::{Packet, Transport},
        test_run_dns::{DnsMessage, DnsTransport, response_frame},
    },
    policy::{PolicySet, parse_str},
};
use egress_common::counter;
use egress_tests::test_run::LoadedPrograms;

use super::{CLIENT, RESOLVER, ip};

/// The DNS counters of the kernel, to tell "read and learned" from "unreadable".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsCounts {
    pub answers: u64,
    pub learned: u64,
    pub dropped: u64,
    pub unread: u64,
}

/// The loaded programs.
pub struct Bench {
    pub programs: LoadedPrograms,
}

impl Bench {
    pub fn new() -> Self {
        Self {
            programs: LoadedPrograms::load(),
        }
    }

    /// Parses, compiles and switches the programs to one policy with the given `spec` body
    /// (indented by two spaces).
    pub fn apply(&mut self, spec: &str) -> PolicySet {
        let yaml = format!(
            "---\napiVersion: egress.dev/v1alpha1\nkind: EgressPolicy\nmetadata: {{name: p}}\nspec:\n{spec}"
        );
        let set = parse_str(Path::new("dns_kernel.yaml"), &yaml)
            .unwrap_or_else(|e| panic!("policy does not load: {e}\n{yaml}"));
        self.programs.apply(&set);
        set
    }

    /// Runs the ingress program on `frame`; true when the answer was delivered.
    pub fn deliver_frame(&mut self, frame: &[u8]) -> bool {
        self.programs
            .datapath
            .test_run_ingress(frame)
            .expect("BPF_PROG_TEST_RUN of the ingress program")
    }

    /// Delivers `message` over UDP; true when it passed.
    pub fn deliver(&mut self, message: &DnsMessage) -> bool {
        self.deliver_frame(&response_frame(
            ip(RESOLVER),
            ip(CLIENT),
            DnsTransport::Udp,
            message.bytes(),
        ))
    }

    /// Delivers `message`, which must pass and be learned from.
    pub fn teach(&mut self, message: &DnsMessage) {
        let before = self.counts();
        assert!(self.deliver(message), "a readable answer was dropped");
        let after = self.counts();
        assert_eq!(after.answers, before.answers + 1, "answer not read");
        assert_eq!(
            (after.dropped, after.unread),
            (before.dropped, before.unread)
        );
    }

    /// Whether a TCP SYN to `dst` port `port` passes the egress program.
    pub fn syn(&mut self, dst: IpAddr, port: u16) -> bool {
        let src = if dst.is_ipv4() {
            ip(CLIENT)
        } else {
            ip("2001:db8::10")
        };
        let frame = Packet {
            src,
            dst,
            transport: Transport::TcpSyn(port),
        }
        .frame();
        self.programs
            .datapath
            .test_run(&frame, 1)
            .expect("BPF_PROG_TEST_RUN of the egress program")
            .passed
    }

    pub fn counts(&self) -> DnsCounts {
        let read = |index| self.programs.datapath.counter(index).expect("counters");
        DnsCounts {
            answers: read(counter::DNS_ANSWERS),
            learned: read(counter::DNS_LEARNED),
            dropped: read(counter::DNS_DROPPED),
            unread: read(counter::DNS_UNREAD),
        }
    }
}
