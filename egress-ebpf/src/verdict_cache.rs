//! The decision of each open TCP connection, kept with its socket's owner
//! (`egress_common::event::DecidedConnection`): a connection's segments after its SYN are
//! judged by one lookup of their socket instead of the scope and destination lookups. Under
//! bulk traffic those lookups missed the CPU caches on nearly every segment (about 230 ns a
//! packet against 40 for an empty program, by BPF run-time stats).

use egress_common::{
    Decision, RuntimeConfig, SocketOwner, config_flags,
    event::{DecidedConnection, kept},
    verdict,
};

use crate::packet::{IPPROTO_TCP, Packet};

/// A kept decision, as [`lookup`] found it.
pub enum Cached {
    /// No policy governs the socket.
    Ungoverned,
    Governed(Decision),
}

/// Whether a decision about `packet` may be kept and used: a TCP segment, and no host rules.
/// ([`lookup`] leaves the SYN to the full path, which counts it as a connection and reports
/// it.)
pub fn applies(config: &RuntimeConfig, packet: &Packet) -> bool {
    packet.protocol == IPPROTO_TCP && config.flags & config_flags::HOSTS == 0
}

/// The decision the packet hook made for the connection of the socket with `socket_cookie`
/// and entry `connection` to `packet`'s destination under the active generation, if it made
/// one. Sockets the hooks did not record (accepted ones, those opened before the agent) have
/// no entry and are judged in full.
pub fn lookup(
    config: &RuntimeConfig,
    packet: &Packet,
    socket_cookie: u64,
    connection: Option<*mut SocketOwner>,
) -> Option<Cached> {
    if packet.tcp_syn || !applies(config, packet) {
        return None;
    }
    let owner = connection?;
    // SAFETY: an LRU value pointer valid for this program run; plain data.
    let decided = unsafe { &(*owner).decided };
    let matches = decided.generation == config.generation
        && decided.socket_cookie == socket_cookie
        && decided.dst == packet.dst
        && decided.dst_port == packet.dst_port
        && decided.ip_version == packet.ip_version;
    if !matches {
        return None;
    }
    // Zeroes keep nothing, and only allows are kept: an entry rewritten under us (an LRU
    // element reused for a new socket starts zeroed) is judged in full.
    match decided.kept {
        kept::UNGOVERNED => Some(Cached::Ungoverned),
        kept::GOVERNED if decided.decision.verdict == verdict::ALLOW => {
            Some(Cached::Governed(decided.decision))
        }
        _ => None,
    }
}

/// Keeps the decision made in full for `packet` (`None`: no policy governs its socket), for
/// the connection's later segments. Drops are not kept: each dropped segment is offered to
/// the report, which folds repeats into one record.
pub fn remember(
    config: &RuntimeConfig,
    packet: &Packet,
    socket_cookie: u64,
    connection: Option<*mut SocketOwner>,
    decision: Option<&Decision>,
) {
    if !applies(config, packet) {
        return;
    }
    if decision.is_some_and(|decision| decision.verdict == verdict::DENY) {
        return;
    }
    let Some(owner) = connection else {
        return;
    };
    // SAFETY: an LRU value pointer valid for this program run; plain data. The segments of
    // one TCP socket are sent under its lock, one at a time; an entry reused for another
    // socket meanwhile is told apart by the cookie written here.
    unsafe {
        (*owner).decided = DecidedConnection {
            generation: config.generation,
            socket_cookie,
            decision: decision.copied().unwrap_or(Decision::UNGOVERNED),
            dst: packet.dst,
            dst_port: packet.dst_port,
            ip_version: packet.ip_version,
            kept: if decision.is_some() {
                kept::GOVERNED
            } else {
                kept::UNGOVERNED
            },
        };
    }
}
