//! Records the kernel program sends to the agent.

/// Direction of the judged packet.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Egress = 0,
    Ingress = 1,
}

/// One decision about one connection or flow, sent through the `EVENTS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionEvent {
    /// `bpf_ktime_get_boot_ns` when the packet was judged.
    pub boot_ns: u64,
    pub generation: u64,
    pub cgroup_id: u64,
    pub socket_cookie: u64,
    pub rule: u32,
    pub audit_rule: u32,
    pub uid: u32,
    /// Process that created or connected the socket, when known (0 otherwise).
    pub pid: u32,
    /// Source address; IPv4 in the first 4 bytes.
    pub src: [u8; 16],
    /// Destination address; IPv4 in the first 4 bytes.
    pub dst: [u8; 16],
    pub src_port: u16,
    pub dst_port: u16,
    /// 4 or 6.
    pub ip_version: u8,
    pub protocol: u8,
    pub verdict: u8,
    pub audit_verdict: u8,
    /// [`Direction`] as a byte.
    pub direction: u8,
    /// ICMP or ICMPv6 type, for ICMP flows.
    pub icmp_type: u8,
    pub _pad: [u8; 2],
    /// Packets of this attempt dropped so far, including this one (0 when allowed).
    pub dropped_packets: u32,
    /// Command name of `pid`, NUL padded.
    pub comm: [u8; 16],
}

/// Key of the `FLOWS` map: a flow of one socket to one peer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub socket_cookie: u64,
    pub dst: [u8; 16],
    pub dst_port: u16,
    pub protocol: u8,
    pub ip_version: u8,
    /// ICMP type for ICMP flows, 0 otherwise.
    pub icmp_type: u8,
    pub _pad: [u8; 3],
}

/// Value of the `FLOWS` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowState {
    /// Generation whose decision was reported.
    pub generation: u64,
    /// Packets of the flow dropped since it was reported (retransmissions fold in here).
    pub dropped: u64,
    pub verdict: u8,
    pub _pad: [u8; 7],
}

/// Value of the `SOCKETS` map, keyed by socket cookie: who owns a socket, recorded in
/// process context when it is created and updated in place when a process connects or sends
/// to an address with it, so that packets sent later from softirq context (retransmissions)
/// are still attributed. Removed when the socket is closed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketOwner {
    /// Thread group id (the process id as userspace sees it).
    pub pid: u32,
    /// The socket's owner uid (its creator's fsuid, as `bpf_get_socket_uid` reports).
    pub uid: u32,
    /// Command name, NUL padded.
    pub comm: [u8; 16],
    /// The socket's outbound TCP connection as last reported (zeroes: none yet).
    pub reported: ReportedConnection,
    /// The packet hook's last decision for the socket's TCP connection (zeroes: none yet).
    pub decided: DecidedConnection,
}

/// An outbound TCP connection's report state, kept in its socket's [`SocketOwner`] instead
/// of `FLOWS`: a TCP socket connects to one peer at a time, and a new `FLOWS` entry per
/// connection cost an LRU insert (about 500 ns of each short connection's SYN).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReportedConnection {
    /// Generation 0 (never active) until the first report.
    pub state: FlowState,
    pub dst: [u8; 16],
    pub dst_port: u16,
    /// 4 or 6: a widened IPv4 address can equal an IPv6 one.
    pub ip_version: u8,
    pub _pad: [u8; 5],
}

/// A TCP connection's decision, kept in its socket's [`SocketOwner`] so that its segments
/// after the SYN skip the lookup chain. A connection's decision depends only on what the
/// entry holds: the socket fixes the scope (its cgroup and owner uid never change), the
/// destination is compared, and every change of the policy maps comes with a new
/// generation. Decisions that name learned addresses are not kept (they change as DNS
/// answers arrive, without a new generation), nor are drops (each is reported).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DecidedConnection {
    /// Generation the decision was made under; 0 (never active): none.
    pub generation: u64,
    /// The entry's own key. An LRU element can be freed and reused for another socket
    /// while a program on another CPU still reads it; a differing cookie tells.
    pub socket_cookie: u64,
    pub decision: crate::Decision,
    pub dst: [u8; 16],
    pub dst_port: u16,
    /// 4 or 6: a widened IPv4 address can equal an IPv6 one.
    pub ip_version: u8,
    /// [`kept`]: whether a policy governs the socket; zero (an entry just created or
    /// reused) keeps nothing.
    pub kept: u8,
}

/// Values of [`DecidedConnection::kept`].
pub mod kept {
    pub const NOTHING: u8 = 0;
    /// No policy governs the socket: its packets pass uncounted.
    pub const UNGOVERNED: u8 = 1;
    /// The decision field decides.
    pub const GOVERNED: u8 = 2;
}
