//! Destination classification: two longest-prefix matches, whatever the number of rules.
//! The compiler flattened overlaps, excepts and the deny-beats-allow order ahead of time.

use aya_ebpf::maps::lpm_trie::Key;
use egress_common::{
    Decision, ScopeValue,
    keys::{self, ID_BITS, PORT_KEY_FULL_BITS},
};

use crate::{
    maps::{EGRESS_ADDR4, EGRESS_ADDR6, EGRESS_PORTS},
    packet::Packet,
};

pub fn decide(scope: &ScopeValue, packet: &Packet) -> Decision {
    let class = if packet.ip_version == 4 {
        let addr = [packet.dst[0], packet.dst[1], packet.dst[2], packet.dst[3]];
        let key = Key::new(ID_BITS + 32, keys::addr4_data(scope.scope, addr));
        EGRESS_ADDR4.get(&key).copied()
    } else {
        let key = Key::new(ID_BITS + 128, keys::addr6_data(scope.scope, packet.dst));
        EGRESS_ADDR6.get(&key).copied()
    };
    // No rule names this destination: the policies' defaults decide.
    let Some(class) = class else {
        return scope.default;
    };
    let key = Key::new(
        PORT_KEY_FULL_BITS,
        keys::port_data(class, packet.protocol, packet.dst_port),
    );
    // No rule of this class matches the protocol and port: the defaults decide.
    EGRESS_PORTS.get(&key).copied().unwrap_or(scope.default)
}
