//! `BPF_PROG_TEST_RUN` of the loaded egress program on crafted packets: deterministic
//! verdicts for tests and a per-packet cost for benchmarks, with no network involved.
//!
//! For `cgroup_skb` programs the kernel expects an Ethernet frame, strips the link header
//! with `eth_type_trans` and runs the program with the data at the network header:
//! <https://github.com/torvalds/linux/blob/v6.18/net/bpf/test_run.c#L1000-L1060>

use std::{net::IpAddr, time::Duration};

use aya::programs::{ProgramError, TestRun as _, TestRunOptions};

use super::{Datapath, DatapathError};

/// The verdict and average cost of running the program on one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TestRunOutcome {
    pub passed: bool,
    /// Average time per run, as the kernel measured it.
    pub per_run: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum TestRunError {
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error("BPF_PROG_TEST_RUN failed: {0}")]
    Run(#[from] ProgramError),
}

impl Datapath {
    /// Runs the program `repeat` times on `frame` (an Ethernet frame, see [`Packet`]).
    pub fn test_run(&mut self, frame: &[u8], repeat: u32) -> Result<TestRunOutcome, TestRunError> {
        let result = self.program()?.test_run(TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..TestRunOptions::default()
        })?;
        Ok(TestRunOutcome {
            passed: result.return_value == 1,
            per_run: result.duration,
        })
    }
}

/// Transport of a crafted packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// A TCP SYN to the port.
    TcpSyn(u16),
    /// A TCP segment of an established connection (ACK) to the port.
    TcpAck(u16),
    Udp(u16),
    /// An ICMP or ICMPv6 echo request (by the address family).
    Echo,
    /// Another IP protocol, with an 8-byte zero payload.
    Other(u8),
}

/// A crafted outbound packet, as an Ethernet frame for `BPF_PROG_TEST_RUN`.
#[derive(Clone, Copy, Debug)]
pub struct Packet {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub transport: Transport,
}

impl Packet {
    pub fn frame(&self) -> Vec<u8> {
        let (protocol, payload) = self.transport_bytes();
        ip_frame(self.src, self.dst, protocol, &payload)
    }

    fn transport_bytes(&self) -> (u8, Vec<u8>) {
        const SOURCE_PORT: [u8; 2] = 40_000u16.to_be_bytes();
        let tcp = |port: u16, flags: u8| {
            let mut header = vec![0u8; 20];
            header[..2].copy_from_slice(&SOURCE_PORT);
            header[2..4].copy_from_slice(&port.to_be_bytes());
            header[12] = 0x50;
            header[13] = flags;
            header
        };
        match self.transport {
            Transport::TcpSyn(port) => (6, tcp(port, 0x02)),
            Transport::TcpAck(port) => (6, tcp(port, 0x10)),
            Transport::Udp(port) => {
                let mut header = vec![0u8; 8];
                header[..2].copy_from_slice(&SOURCE_PORT);
                header[2..4].copy_from_slice(&port.to_be_bytes());
                header[4..6].copy_from_slice(&8u16.to_be_bytes());
                (17, header)
            }
            Transport::Echo if self.dst.is_ipv4() => (1, vec![8, 0, 0, 0, 0, 1, 0, 1]),
            Transport::Echo => (58, vec![128, 0, 0, 0, 0, 1, 0, 1]),
            Transport::Other(protocol) => (protocol, vec![0u8; 8]),
        }
    }
}

/// An Ethernet frame holding an IP packet from `src` to `dst` (IPv6 unless both are IPv4)
/// with `payload` as its transport header and data.
pub(super) fn ip_frame(src: IpAddr, dst: IpAddr, protocol: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(14 + 40 + payload.len());
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1]);
    match (src, dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            frame.extend_from_slice(&0x0800u16.to_be_bytes());
            let total = u16::try_from(20 + payload.len()).unwrap_or(u16::MAX);
            frame.extend_from_slice(&[0x45, 0]);
            frame.extend_from_slice(&total.to_be_bytes());
            frame.extend_from_slice(&[0, 0, 0x40, 0, 64, protocol, 0, 0]);
            frame.extend_from_slice(&src.octets());
            frame.extend_from_slice(&dst.octets());
        }
        (src, dst) => {
            frame.extend_from_slice(&0x86DDu16.to_be_bytes());
            let payload_len = u16::try_from(payload.len()).unwrap_or(u16::MAX);
            frame.extend_from_slice(&[0x60, 0, 0, 0]);
            frame.extend_from_slice(&payload_len.to_be_bytes());
            frame.extend_from_slice(&[protocol, 64]);
            frame.extend_from_slice(&v6_octets(src));
            frame.extend_from_slice(&v6_octets(dst));
        }
    }
    frame.extend_from_slice(payload);
    frame
}

fn v6_octets(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_have_the_layout_the_kernel_expects() {
        let v4 = Packet {
            src: "192.0.2.1".parse().expect("ip"),
            dst: "203.0.113.10".parse().expect("ip"),
            transport: Transport::TcpSyn(443),
        }
        .frame();
        assert_eq!(v4.len(), 14 + 20 + 20);
        assert_eq!(&v4[12..14], &[0x08, 0x00]);
        assert_eq!(v4[14 + 9], 6);
        assert_eq!(&v4[14 + 16..14 + 20], &[203, 0, 113, 10]);
        assert_eq!(&v4[14 + 20 + 2..14 + 20 + 4], &443u16.to_be_bytes());
        assert_eq!(v4[14 + 20 + 13], 0x02);

        let v6 = Packet {
            src: "2001:db8::1".parse().expect("ip"),
            dst: "2001:db8:2::10".parse().expect("ip"),
            transport: Transport::Echo,
        }
        .frame();
        assert_eq!(v6.len(), 14 + 40 + 8);
        assert_eq!(&v6[12..14], &[0x86, 0xDD]);
        assert_eq!(v6[14 + 6], 58);
        assert_eq!(v6[14 + 40], 128);
    }
}
