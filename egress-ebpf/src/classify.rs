//! Destination classification: two longest-prefix matches, whatever the number of rules.
//! The compiler flattened overlaps, excepts and the deny-beats-allow order ahead of time.

use aya_ebpf::maps::lpm_trie::Key;
use egress_common::{
    Decision, ScopeValue,
    keys::{self, ID_BITS, PORT_KEY_FULL_BITS},
    ports::{ANY_PROTOCOL, PortTableKey},
};

use crate::{
    maps::{EGRESS_ADDR4, EGRESS_ADDR6, EGRESS_PORT_TABLES, EGRESS_PORTS},
    names,
};

/// Where a packet or call is going.
pub struct Destination {
    /// 4 or 6.
    pub ip_version: u8,
    /// IPv4 addresses in the first four bytes.
    pub addr: [u8; 16],
    pub protocol: u8,
    /// Destination port for TCP and UDP, 0 otherwise.
    pub port: u16,
}

/// The egress decision for a packet or call to `to`. `names_of`: the cgroup whose learned
/// names count, or 0 when no policy has host rules. (Not an `Option`: a `None` passed to a
/// function the compiler keeps out of line leaves its payload register unset, and the
/// verifier rejects reading an unset register.) `established`: a packet of a TCP connection
/// past its SYN, which keeps the names its address was learned for after they expire.
pub fn decide(scope: &ScopeValue, to: &Destination, names_of: u64, established: bool) -> Decision {
    let by_address = decide_in(scope.scope, &scope.default, to);
    if names_of == 0 {
        return by_address;
    }
    names::merge_learned(&by_address, scope, to, names_of, established)
}

/// The ingress decision for a new inbound flow: `from` holds the remote (source) address
/// and the local (destination) port.
pub fn decide_inbound(scope: &ScopeValue, from: &Destination) -> Decision {
    decide_in(scope.ingress_scope, &scope.ingress_default, from)
}

/// Both directions share the maps under ids of their own: (scope, address) → class, then
/// (class, protocol, port) → decision, with `default` on any miss.
#[inline(always)]
fn decide_in(scope: u32, default: &Decision, to: &Destination) -> Decision {
    let class = if to.ip_version == 4 {
        let addr = [to.addr[0], to.addr[1], to.addr[2], to.addr[3]];
        let key = Key::new(ID_BITS + 32, keys::addr4_data(scope, addr));
        EGRESS_ADDR4.get(&key).copied()
    } else {
        let key = Key::new(ID_BITS + 128, keys::addr6_data(scope, to.addr));
        EGRESS_ADDR6.get(&key).copied()
    };
    // No rule names this address: the policies' defaults decide.
    let Some(class) = class else {
        return *default;
    };
    let mut decision = *default;
    // No rule of this class matches the protocol and port: the defaults decide.
    port_decision(class, to.protocol, to.port, &mut decision);
    decision
}

/// Writes the decision of the rules of address or name class `class` for `protocol` and
/// `port` (0 for protocols without ports) to `decision`; false, writing nothing, when none
/// of them matches. Out of line, with the result written through a pointer: its keys stay
/// off the callers' frames (the ingress program's call chain is within 20 bytes of the
/// verifier's 512), and a returned `Option<Decision>` would come back through a stack
/// pointer, which the verifier rejects.
#[inline(never)]
pub fn port_decision(class: u32, protocol: u8, port: u16, decision: &mut Decision) -> bool {
    // SAFETY: values of this map are plain data written whole by the agent.
    let table = unsafe { EGRESS_PORT_TABLES.get(PortTableKey::new(class, protocol)) }
        // No table of its own: the protocol is decided by the class's rules for any
        // protocol, if it has some.
        // SAFETY: as above.
        .or_else(|| unsafe { EGRESS_PORT_TABLES.get(PortTableKey::new(class, ANY_PROTOCOL)) });
    let Some(table) = table else {
        return false;
    };
    let found = if table.runs == 0 {
        // More runs than a table holds: the trie has them.
        let key = Key::new(PORT_KEY_FULL_BITS, keys::port_data(class, protocol, port));
        EGRESS_PORTS.get(&key).copied()
    } else {
        table.decide(port)
    };
    match found {
        Some(found) => {
            *decision = found;
            true
        }
        None => false,
    }
}
