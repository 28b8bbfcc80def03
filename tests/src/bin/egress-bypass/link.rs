//! Packet sockets (AF_PACKET): a whole Ethernet frame written straight to a device. They
//! bypass the IP stack, so no cgroup hook sees them; this technique proves that limit.

use std::{
    ffi::CString,
    mem::{size_of, zeroed},
    net::{IpAddr, SocketAddr},
};

use crate::{
    Failure, Outcome,
    craft::{self, Ipv4},
    inet::setup,
    sys,
};

/// Source MAC of our frames (locally administered); the receiver does not check it.
const SRC_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
const ETH_P_IP: u16 = 0x0800;

/// Sends one UDP-in-IPv4 frame to `dst` out of `ifname`, addressed to `dst_mac`.
pub fn packet_socket(ifname: &str, dst_mac: &str, src: IpAddr, dst: SocketAddr) -> Outcome {
    let (IpAddr::V4(src_v4), IpAddr::V4(dst_v4)) = (src, dst.ip()) else {
        return Err(Failure::Setup("packet-socket frames are IPv4 only".into()));
    };
    let mac = craft::parse_mac(dst_mac).map_err(Failure::Setup)?;
    let name = CString::new(ifname).map_err(|e| Failure::Setup(format!("bad ifname: {e}")))?;
    // SAFETY: a NUL-terminated name we own.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        return Err(Failure::Setup(format!(
            "no interface {ifname}: {}",
            std::io::Error::last_os_error()
        )));
    }
    let fd = setup(
        sys::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(ETH_P_IP.to_be())),
        "socket(AF_PACKET)",
    )?;
    let payload = b"egress-bypass-packet-socket";
    let mut udp = craft::udp_header(dst.port(), payload.len());
    udp.extend_from_slice(payload);
    let mut frame = Vec::new();
    frame.extend_from_slice(&mac);
    frame.extend_from_slice(&SRC_MAC);
    frame.extend_from_slice(&ETH_P_IP.to_be_bytes());
    frame.extend_from_slice(
        &Ipv4 {
            src: src_v4,
            dst: dst_v4,
            protocol: 17,
            id: 1,
            frag: 0,
        }
        .header(udp.len()),
    );
    frame.extend_from_slice(&udp);
    // SAFETY: all-zero bytes are a valid sockaddr_ll.
    let mut ll: libc::sockaddr_ll = unsafe { zeroed() };
    ll.sll_family = libc::AF_PACKET as u16;
    ll.sll_protocol = ETH_P_IP.to_be();
    ll.sll_ifindex = i32::try_from(ifindex).map_err(|e| Failure::Setup(e.to_string()))?;
    ll.sll_halen = 6;
    ll.sll_addr[..6].copy_from_slice(&mac);
    Ok(sys::sendto_raw(
        &fd,
        &frame,
        0,
        (&raw const ll).cast(),
        size_of::<libc::sockaddr_ll>() as libc::socklen_t,
    )
    .map(drop))
}
