//! Hand-built headers for the techniques that write their own packets (raw sockets with
//! IP_HDRINCL, packet sockets) and ICMP echo requests.

use std::net::{IpAddr, Ipv4Addr};

/// IPv4 "more fragments" flag in the flags/offset field.
pub const MORE_FRAGMENTS: u16 = 0x2000;
/// Source port of every datagram this helper builds itself.
pub const SRC_PORT: u16 = 40_000;
/// Identifier of our echo requests.
const ECHO_ID: u16 = 0x6562;

pub use egress_tests::traffic::checksum;

/// An IPv4 header without options. `src` may be 0.0.0.0 on an IP_HDRINCL socket (the kernel
/// fills it in); `frag` is the flags/offset field (offset in 8-byte units).
pub struct Ipv4 {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub protocol: u8,
    pub id: u16,
    pub frag: u16,
}

impl Ipv4 {
    /// The 20-byte header for `payload_len` bytes of payload, checksummed.
    pub fn header(&self, payload_len: usize) -> Vec<u8> {
        let Self {
            src,
            dst,
            protocol,
            id,
            frag,
        } = self;
        let total = u16::try_from(20 + payload_len).unwrap_or(u16::MAX);
        let mut h = vec![0x45, 0];
        h.extend_from_slice(&total.to_be_bytes());
        h.extend_from_slice(&id.to_be_bytes());
        h.extend_from_slice(&frag.to_be_bytes());
        h.extend_from_slice(&[64, *protocol, 0, 0]);
        h.extend_from_slice(&src.octets());
        h.extend_from_slice(&dst.octets());
        let sum = checksum(&h);
        h[10..12].copy_from_slice(&sum.to_be_bytes());
        h
    }
}

/// A UDP header for `data_len` bytes of data, checksum 0 ("none", valid for IPv4 only;
/// IPv6 raw sockets get theirs from the kernel through IPV6_CHECKSUM).
pub fn udp_header(dst_port: u16, data_len: usize) -> Vec<u8> {
    let len = u16::try_from(8 + data_len).unwrap_or(u16::MAX);
    let mut h = Vec::with_capacity(8);
    h.extend_from_slice(&SRC_PORT.to_be_bytes());
    h.extend_from_slice(&dst_port.to_be_bytes());
    h.extend_from_slice(&len.to_be_bytes());
    h.extend_from_slice(&[0, 0]);
    h
}

/// An ICMP (IPv4, checksummed) or ICMPv6 (checksum left to the kernel) echo request.
pub fn echo_request(dst: IpAddr) -> Vec<u8> {
    let kind = if dst.is_ipv4() { 8 } else { 128 };
    let mut packet = vec![kind, 0, 0, 0];
    packet.extend_from_slice(&ECHO_ID.to_be_bytes());
    packet.extend_from_slice(&1u16.to_be_bytes());
    packet.extend_from_slice(b"egress-bypass-echo");
    if dst.is_ipv4() {
        let sum = checksum(&packet);
        packet[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    packet
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> Result<[u8; 6], String> {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|part| u8::from_str_radix(part, 16))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad MAC {text}: {e}"))?;
    bytes
        .try_into()
        .map_err(|_| format!("bad MAC {text}: not six bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_header_checksums_to_zero() {
        let header = Ipv4 {
            src: Ipv4Addr::new(192, 0, 2, 1),
            dst: Ipv4Addr::new(203, 0, 113, 10),
            protocol: 17,
            id: 7,
            frag: MORE_FRAGMENTS,
        }
        .header(16);
        assert_eq!(header.len(), 20);
        assert_eq!(checksum(&header), 0);
        assert_eq!(u16::from_be_bytes([header[2], header[3]]), 36);
    }

    #[test]
    fn parses_macs() {
        assert_eq!(parse_mac("02:00:0a:ff:00:01"), Ok([2, 0, 10, 255, 0, 1]));
        assert!(parse_mac("02:00").is_err());
    }
}
