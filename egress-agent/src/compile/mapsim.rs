//! A userspace model of the kernel program's lookups over [`Compiled`] data.
//!
//! It follows the kernel's steps literally (deepest listed cgroup ancestor, scope with the
//! `ANY_UID` fallback, longest-prefix matches) so that tests can compare the compiler's output
//! with the reference evaluator without loading anything into a kernel.

use std::collections::HashMap;
use std::net::IpAddr;

use egress_common::keys::{PORT_KEY_FULL_BITS, addr4_data, addr6_data, port_data};
use egress_common::{ANY_UID, Decision, PortData, ScopeKey, ScopeValue};

use super::Compiled;
use crate::policy::{IPPROTO_TCP, IPPROTO_UDP};

/// A longest-prefix-match table over fixed-size keys.
struct Lpm<const N: usize, V> {
    entries: HashMap<(u32, [u8; N]), V>,
}

fn masked<const N: usize>(mut data: [u8; N], len: u32) -> [u8; N] {
    for (i, byte) in data.iter_mut().enumerate() {
        let start = u32::try_from(i * 8).unwrap_or(u32::MAX);
        if start >= len {
            *byte = 0;
        } else if len - start < 8 {
            *byte &= 0xffu8 << (8 - (len - start));
        }
    }
    data
}

impl<const N: usize, V: Copy> Lpm<N, V> {
    fn new<'a>(list: impl Iterator<Item = &'a (u32, [u8; N], V)>) -> Self
    where
        V: 'a,
    {
        let entries = list
            .map(|(len, data, value)| ((*len, masked(*data, *len)), *value))
            .collect();
        Self { entries }
    }

    fn lookup(&self, data: [u8; N], full: u32) -> Option<V> {
        (0..=full)
            .rev()
            .find_map(|len| self.entries.get(&(len, masked(data, len))).copied())
    }
}

/// The maps of one compiled generation, indexed for lookups.
pub struct MapSim {
    parity: u32,
    cgroups: HashMap<String, u32>,
    scopes: HashMap<ScopeKey, ScopeValue>,
    addr4: Lpm<8, u32>,
    addr6: Lpm<20, u32>,
    ports: Lpm<7, Decision>,
}

impl MapSim {
    pub fn new(compiled: &Compiled) -> Self {
        Self {
            parity: compiled.parity,
            cgroups: compiled.cgroups.iter().cloned().collect(),
            scopes: compiled.scopes.iter().copied().collect(),
            addr4: Lpm::new(compiled.addr4.iter()),
            addr6: Lpm::new(compiled.addr6.iter()),
            ports: Lpm::new(compiled.ports.iter()),
        }
    }

    /// The kernel's decision for a packet of the workload in `cgroup` (path relative to the
    /// cgroup2 root) owned by `uid`.
    pub fn decide(&self, cgroup: &str, uid: u32, dst: IpAddr, protocol: u8, port: u16) -> Decision {
        // Ancestors from level 1 down to the cgroup itself; the deepest listed one wins.
        let mut class = self.parity;
        let mut path = String::new();
        for part in cgroup.split('/').filter(|p| !p.is_empty()) {
            path.push('/');
            path.push_str(part);
            if let Some(c) = self.cgroups.get(&path) {
                class = *c;
            }
        }
        let key = |uid| ScopeKey {
            cgroup_class: class,
            uid,
        };
        let Some(scope) = self
            .scopes
            .get(&key(uid))
            .or_else(|| self.scopes.get(&key(ANY_UID)))
        else {
            return Decision::UNGOVERNED;
        };
        let addr_class = match dst {
            IpAddr::V4(v4) => self.addr4.lookup(addr4_data(scope.scope, v4.octets()), 64),
            IpAddr::V6(v6) => self.addr6.lookup(addr6_data(scope.scope, v6.octets()), 160),
        };
        let Some(addr_class) = addr_class else {
            return scope.default;
        };
        let port = if protocol == IPPROTO_TCP || protocol == IPPROTO_UDP {
            port
        } else {
            0
        };
        let data: PortData = port_data(addr_class, protocol, port);
        self.ports
            .lookup(data, PORT_KEY_FULL_BITS)
            .unwrap_or(scope.default)
    }
}

/// [`MapSim::decide`] on freshly indexed maps; index once with [`MapSim::new`] for many packets.
pub fn decide(
    compiled: &Compiled,
    cgroup_path: &str,
    uid: u32,
    dst: IpAddr,
    protocol: u8,
    port: u16,
) -> Decision {
    MapSim::new(compiled).decide(cgroup_path, uid, dst, protocol, port)
}
