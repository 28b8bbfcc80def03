//! `BPF_PROG_TEST_RUN` of the ingress program on crafted DNS responses: a builder for DNS
//! messages (including malformed ones: compression loops, lying counts, cut records) and the
//! frames that carry them from port 53, so that tests can teach the kernel addresses and
//! then judge packets to them with [`Datapath::test_run`].

use std::net::IpAddr;

use aya::{
    maps::{MapData, PerCpuArray},
    programs::{CgroupSkb, TestRun as _, TestRunOptions},
};
use egress_common::{maps, programs};

use super::{
    Datapath, DatapathError,
    test_run::{TestRunError, ip_frame},
};

/// Record types and the class the kernel reads.
pub const TYPE_A: u16 = 1;
pub const TYPE_CNAME: u16 = 5;
pub const TYPE_AAAA: u16 = 28;
pub const CLASS_IN: u16 = 1;

/// Port the crafted responses are delivered to.
const CLIENT_PORT: u16 = 40_000;
const DNS_PORT: u16 = 53;

impl Datapath {
    /// Runs the ingress program (and the DNS reader it tail-calls) once on `frame`, an
    /// Ethernet frame as for [`Datapath::test_run`]; true when it passed the packet.
    pub fn test_run_ingress(&mut self, frame: &[u8]) -> Result<bool, TestRunError> {
        let name = programs::INGRESS;
        let program: &mut CgroupSkb = self
            .ebpf
            .program_mut(name)
            .and_then(|program| program.try_into().ok())
            .ok_or(DatapathError::Missing {
                kind: "cgroup_skb program",
                name,
            })?;
        let result = program.test_run(TestRunOptions {
            data_in: Some(frame),
            repeat: 1,
            ..TestRunOptions::default()
        })?;
        Ok(result.return_value == 1)
    }

    /// One of the kernel's [`egress_common::counter`]s, summed over CPUs, without taking the
    /// map (unlike [`Datapath::take_counters`]).
    pub fn counter(&self, index: u32) -> Result<u64, DatapathError> {
        let name = maps::COUNTERS;
        let fail = |source| DatapathError::Map { name, source };
        let map = self
            .ebpf
            .map(name)
            .ok_or(DatapathError::Missing { kind: "map", name })?;
        let counters: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map).map_err(fail)?;
        Ok(counters.get(&index, 0).map_err(fail)?.iter().sum())
    }
}

/// A name as written on the wire: labels, then either the root (a 0 byte) or a compression
/// pointer to an offset of the message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WireName {
    pub labels: Vec<Vec<u8>>,
    pub pointer: Option<u16>,
}

impl WireName {
    /// `name`'s dot-separated labels, as written (case kept), ending at the root.
    pub fn plain(name: &str) -> Self {
        Self::labels_then(name, None)
    }

    /// Only a compression pointer to `to`.
    pub fn pointer(to: u16) -> Self {
        Self {
            labels: Vec::new(),
            pointer: Some(to),
        }
    }

    /// `prefix`'s labels (none when empty), then a pointer to `to` or the root.
    pub fn labels_then(prefix: &str, to: Option<u16>) -> Self {
        Self {
            labels: prefix
                .trim_end_matches('.')
                .split('.')
                .filter(|label| !label.is_empty())
                .map(|label| label.as_bytes().to_vec())
                .collect(),
            pointer: to,
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        for label in &self.labels {
            out.push(u8::try_from(label.len()).unwrap_or(u8::MAX));
            out.extend_from_slice(label);
        }
        match self.pointer {
            Some(to) => out.extend_from_slice(&(0xC000 | (to & 0x3FFF)).to_be_bytes()),
            None => out.push(0),
        }
    }
}

/// Where a record landed in the message, for compression pointers to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordAt {
    /// Offset of the owner name.
    pub owner: u16,
    /// Offset of the record data (a CNAME's target name).
    pub rdata: u16,
}

/// A DNS message being written; the header's question and answer counts follow what is
/// added unless overwritten with [`DnsMessage::set_counts`].
#[derive(Clone, Debug)]
pub struct DnsMessage {
    bytes: Vec<u8>,
}

impl DnsMessage {
    /// A standard response (QR, RD, RA set, no error) with an empty body.
    pub fn response(id: u16) -> Self {
        Self::with_flags(id, 0x8180)
    }

    /// A standard query (QR clear, RD set).
    pub fn query(id: u16) -> Self {
        Self::with_flags(id, 0x0100)
    }

    pub fn with_flags(id: u16, flags: u16) -> Self {
        let mut bytes = Vec::with_capacity(512);
        bytes.extend_from_slice(&id.to_be_bytes());
        bytes.extend_from_slice(&flags.to_be_bytes());
        bytes.extend_from_slice(&[0; 8]);
        Self { bytes }
    }

    /// The offset the next byte is written at.
    pub fn offset(&self) -> u16 {
        u16::try_from(self.bytes.len()).unwrap_or(u16::MAX)
    }

    /// Adds a question (class IN); returns the offset of its name.
    pub fn question(&mut self, name: &WireName, qtype: u16) -> u16 {
        let at = self.offset();
        name.encode(&mut self.bytes);
        self.bytes.extend_from_slice(&qtype.to_be_bytes());
        self.bytes.extend_from_slice(&CLASS_IN.to_be_bytes());
        self.bump(4);
        at
    }

    /// Adds an answer record (class IN) with `rdata` as it is.
    pub fn record(&mut self, owner: &WireName, rtype: u16, ttl: u32, rdata: &[u8]) -> RecordAt {
        let at = self.offset();
        owner.encode(&mut self.bytes);
        self.bytes.extend_from_slice(&rtype.to_be_bytes());
        self.bytes.extend_from_slice(&CLASS_IN.to_be_bytes());
        self.bytes.extend_from_slice(&ttl.to_be_bytes());
        let rdlen = u16::try_from(rdata.len()).unwrap_or(u16::MAX);
        self.bytes.extend_from_slice(&rdlen.to_be_bytes());
        let rdata_at = self.offset();
        self.bytes.extend_from_slice(rdata);
        self.bump(6);
        RecordAt {
            owner: at,
            rdata: rdata_at,
        }
    }

    /// An A record for an IPv4 address, an AAAA record for an IPv6 one.
    pub fn address(&mut self, owner: &WireName, ttl: u32, addr: IpAddr) -> RecordAt {
        match addr {
            IpAddr::V4(v4) => self.record(owner, TYPE_A, ttl, &v4.octets()),
            IpAddr::V6(v6) => self.record(owner, TYPE_AAAA, ttl, &v6.octets()),
        }
    }

    /// A CNAME record; `rdata` of the result is where `target` starts.
    pub fn cname(&mut self, owner: &WireName, ttl: u32, target: &WireName) -> RecordAt {
        let mut rdata = Vec::new();
        target.encode(&mut rdata);
        self.record(owner, TYPE_CNAME, ttl, &rdata)
    }

    /// Appends bytes as they are.
    pub fn raw(&mut self, bytes: &[u8]) {
        self.bytes.extend_from_slice(bytes);
    }

    /// Overwrites the question and answer counts of the header.
    pub fn set_counts(&mut self, questions: u16, answers: u16) {
        self.bytes[4..6].copy_from_slice(&questions.to_be_bytes());
        self.bytes[6..8].copy_from_slice(&answers.to_be_bytes());
    }

    /// Cuts the message to `len` bytes.
    pub fn truncate(&mut self, len: usize) {
        self.bytes.truncate(len);
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Adds one to the count at header offset `at`.
    fn bump(&mut self, at: usize) {
        let count = u16::from_be_bytes([self.bytes[at], self.bytes[at + 1]]);
        self.bytes[at..at + 2].copy_from_slice(&count.wrapping_add(1).to_be_bytes());
    }
}

/// How a crafted response travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DnsTransport {
    Udp,
    /// One TCP segment holding the message behind its correct length prefix.
    Tcp,
    /// One TCP segment holding the message behind this length prefix, right or wrong.
    TcpPrefix(u16),
}

/// An Ethernet frame carrying `message` from `resolver` port 53 to `client`.
pub fn response_frame(
    resolver: IpAddr,
    client: IpAddr,
    transport: DnsTransport,
    message: &[u8],
) -> Vec<u8> {
    let mut payload = Vec::with_capacity(22 + message.len());
    payload.extend_from_slice(&DNS_PORT.to_be_bytes());
    payload.extend_from_slice(&CLIENT_PORT.to_be_bytes());
    let (protocol, prefix) = match transport {
        DnsTransport::Udp => {
            let len = u16::try_from(8 + message.len()).unwrap_or(u16::MAX);
            payload.extend_from_slice(&len.to_be_bytes());
            payload.extend_from_slice(&[0, 0]); // no checksum
            (17, None)
        }
        DnsTransport::Tcp | DnsTransport::TcpPrefix(_) => {
            payload.extend_from_slice(&1u32.to_be_bytes()); // sequence
            payload.extend_from_slice(&1u32.to_be_bytes()); // acknowledgment
            payload.extend_from_slice(&[0x50, 0x18]); // 20-byte header; PSH, ACK
            payload.extend_from_slice(&[0xFF, 0xFF, 0, 0, 0, 0]); // window, checksum, urgent
            let prefix = match transport {
                DnsTransport::TcpPrefix(prefix) => prefix,
                _ => u16::try_from(message.len()).unwrap_or(u16::MAX),
            };
            (6, Some(prefix))
        }
    };
    if let Some(prefix) = prefix {
        payload.extend_from_slice(&prefix.to_be_bytes());
    }
    payload.extend_from_slice(message);
    ip_frame(resolver, client, protocol, &payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_laid_out_as_on_the_wire() {
        let mut message = DnsMessage::response(7);
        let q = message.question(&WireName::plain("www.Example.com"), TYPE_A);
        assert_eq!(q, 12);
        let cname = message.cname(
            &WireName::pointer(q),
            60,
            &WireName::labels_then("edge", Some(q + 4)),
        );
        message.address(
            &WireName::pointer(cname.rdata),
            60,
            "192.0.2.1".parse().expect("ip"),
        );
        let bytes = message.bytes();
        assert_eq!(&bytes[..12], &[0, 7, 0x81, 0x80, 0, 1, 0, 2, 0, 0, 0, 0]);
        assert_eq!(&bytes[12..29], b"\x03www\x07Example\x03com\x00");
        assert_eq!(&bytes[29..33], &[0, 1, 0, 1]);
        assert_eq!(cname.owner, 33);
        assert_eq!(&bytes[33..35], &[0xC0, 12]);
        assert_eq!(&bytes[35..45], &[0, 5, 0, 1, 0, 0, 0, 60, 0, 7]);
        assert_eq!(cname.rdata, 45);
        assert_eq!(&bytes[45..52], &[4, b'e', b'd', b'g', b'e', 0xC0, 16]);
        assert_eq!(&bytes[52..54], &[0xC0, 45]);
        assert_eq!(&bytes[62..64], &[0, 4]);
        assert_eq!(&bytes[64..], &[192, 0, 2, 1]);
    }

    #[test]
    fn frames_carry_the_message_from_port_53() {
        let resolver: IpAddr = "192.0.2.53".parse().expect("ip");
        let client: IpAddr = "192.0.2.10".parse().expect("ip");
        let message = DnsMessage::response(1);
        let udp = response_frame(resolver, client, DnsTransport::Udp, message.bytes());
        assert_eq!(udp.len(), 14 + 20 + 8 + 12);
        assert_eq!(&udp[34..36], &53u16.to_be_bytes());
        assert_eq!(&udp[38..40], &20u16.to_be_bytes());
        let tcp = response_frame(resolver, client, DnsTransport::Tcp, message.bytes());
        assert_eq!(tcp.len(), 14 + 20 + 20 + 2 + 12);
        assert_eq!(&tcp[54..56], &12u16.to_be_bytes());
        let wrong = response_frame(
            resolver,
            client,
            DnsTransport::TcpPrefix(13),
            message.bytes(),
        );
        assert_eq!(&wrong[54..56], &13u16.to_be_bytes());
    }
}
