//! A userspace model of the kernel program's lookups over [`Compiled`] data.
//!
//! It follows the kernel's steps literally (deepest listed cgroup ancestor, scope with the
//! `ANY_UID` fallback, longest-prefix matches) so that tests can compare the compiler's output
//! with the reference evaluator without loading anything into a kernel.

use std::collections::HashMap;
use std::net::IpAddr;

use egress_common::dns::{HOST_KEY_BYTES, NameClassKey, NameSetId, host_key};
use egress_common::keys::{PORT_KEY_FULL_BITS, addr4_data, addr6_data, port_data};
use egress_common::ports::{ANY_PROTOCOL, PortTable, PortTableKey};
use egress_common::{
    ANY_UID, Decision, PARITY_BIT, PortData, ScopeKey, ScopeValue, config_flags, verdict,
};

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
    flags: u32,
    /// `HOSTNAMES`: the key's bytes up to its prefix length (parity byte included) → set.
    hostnames: HashMap<Vec<u8>, NameSetId>,
    name_classes: HashMap<NameClassKey, u32>,
    cgroups: HashMap<String, u32>,
    scopes: HashMap<ScopeKey, ScopeValue>,
    addr4: Lpm<8, u32>,
    addr6: Lpm<20, u32>,
    port_tables: HashMap<PortTableKey, PortTable>,
    ports: Lpm<7, Decision>,
}

impl MapSim {
    pub fn new(compiled: &Compiled) -> Self {
        let hostnames = compiled
            .hostnames
            .iter()
            .map(|(bits, data, set)| (data[..(*bits / 8) as usize].to_vec(), *set))
            .collect();
        Self {
            parity: compiled.parity,
            flags: compiled.flags,
            hostnames,
            name_classes: compiled.name_classes.iter().copied().collect(),
            cgroups: compiled.cgroups.iter().cloned().collect(),
            scopes: compiled.scopes.iter().copied().collect(),
            addr4: Lpm::new(compiled.addr4.iter()),
            addr6: Lpm::new(compiled.addr6.iter()),
            port_tables: compiled.ports.tables.iter().copied().collect(),
            ports: Lpm::new(compiled.ports.trie.iter()),
        }
    }

    /// The kernel's decision for a packet of the workload in `cgroup` (path relative to the
    /// cgroup2 root) owned by `uid`, to an address it learned no names for.
    pub fn decide(&self, cgroup: &str, uid: u32, dst: IpAddr, protocol: u8, port: u16) -> Decision {
        self.decide_named(cgroup, uid, dst, &[], protocol, port)
    }

    /// The kernel's decision for a packet to `dst` when the workload's cgroup learned `dst`
    /// for `names` (the learned entry holds [`Self::name_sets`] of them): the address
    /// decision, merged with the port decision of the name class of each set.
    pub fn decide_named(
        &self,
        cgroup: &str,
        uid: u32,
        dst: IpAddr,
        names: &[String],
        protocol: u8,
        port: u16,
    ) -> Decision {
        self.decide_with_sets(cgroup, uid, dst, &self.name_sets(names), protocol, port)
    }

    /// [`Self::decide_named`] for a learned entry holding `sets` (which an earlier
    /// generation may have handed out).
    pub fn decide_with_sets(
        &self,
        cgroup: &str,
        uid: u32,
        dst: IpAddr,
        sets: &[NameSetId],
        protocol: u8,
        port: u16,
    ) -> Decision {
        let Some(scope) = self.scope(cgroup, uid) else {
            return Decision::UNGOVERNED;
        };
        let mut decision = self
            .lookup(scope.scope, dst, protocol, port)
            .unwrap_or(scope.default);
        if self.flags & config_flags::HOSTS == 0 {
            return decision;
        }
        for set in sets.iter().copied() {
            let key = NameClassKey {
                scope: scope.scope,
                _pad: 0,
                set,
            };
            let Some(class) = self.name_classes.get(&key) else {
                continue;
            };
            if let Some(named) = self.port_lookup(*class, protocol, port) {
                decision = decision.merge(named, scope.flags);
            }
        }
        decision
    }

    /// The sets a learned entry holds for `names`, as the kernel computes them from a DNS
    /// answer: each name's `HOSTNAMES` set by longest prefix, without 0 and repeats, in
    /// order. Names the kernel could not key (an empty label, too long) have none.
    pub fn name_sets(&self, names: &[String]) -> Vec<NameSetId> {
        let mut sets = Vec::new();
        for name in names {
            let set = self.hostname_set(name);
            if set != 0 && !sets.contains(&set) {
                sets.push(set);
            }
        }
        sets
    }

    /// Longest-prefix match of `name`'s key in `HOSTNAMES`, byte by byte; 0 on a miss.
    fn hostname_set(&self, name: &str) -> NameSetId {
        let name = name.strip_suffix('.').unwrap_or(name);
        let mut data = [0u8; HOST_KEY_BYTES];
        let parity_byte = u8::from(self.parity == PARITY_BIT);
        let Some(used) = host_key(parity_byte, name.split('.').map(str::as_bytes), &mut data)
        else {
            return 0;
        };
        (1..=used)
            .rev()
            .find_map(|len| self.hostnames.get(&data[..len]).copied())
            .unwrap_or(0)
    }

    /// The ingress program's decision for a packet that starts a new inbound connection or
    /// flow to the workload, from `src` to `local_port`. `None`: not judged (no scope, or a
    /// scope whose `ingress_default` verdict is `NONE`), so it passes without further lookups.
    pub fn decide_ingress(
        &self,
        cgroup: &str,
        uid: u32,
        src: IpAddr,
        protocol: u8,
        local_port: u16,
    ) -> Option<Decision> {
        let scope = self.scope(cgroup, uid)?;
        if scope.ingress_default.verdict == verdict::NONE {
            return None;
        }
        let decision = self.lookup(scope.ingress_scope, src, protocol, local_port);
        Some(decision.unwrap_or(scope.ingress_default))
    }

    /// Steps 2 and 3: the deepest listed cgroup ancestor's class, then the scope for the uid
    /// or, failing that, for any uid.
    fn scope(&self, cgroup: &str, uid: u32) -> Option<&ScopeValue> {
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
        self.scopes
            .get(&key(uid))
            .or_else(|| self.scopes.get(&key(ANY_UID)))
    }

    /// Steps 4 and 5 under `scope` (an egress or an ingress scope id): the address class of
    /// `addr`, then the port entry; `None` on a miss at either, where the kernel uses the
    /// scope's default.
    fn lookup(&self, scope: u32, addr: IpAddr, protocol: u8, port: u16) -> Option<Decision> {
        let addr_class = match addr {
            IpAddr::V4(v4) => self.addr4.lookup(addr4_data(scope, v4.octets()), 64),
            IpAddr::V6(v6) => self.addr6.lookup(addr6_data(scope, v6.octets()), 160),
        }?;
        self.port_lookup(addr_class, protocol, port)
    }

    /// Step 5: the decision of an address or name class's rules for the protocol and port,
    /// from its table for the protocol (or, without one, for any protocol), or from `PORTS`
    /// where the table says so; `None` where no rule matches.
    fn port_lookup(&self, class: u32, protocol: u8, port: u16) -> Option<Decision> {
        let port = if protocol == IPPROTO_TCP || protocol == IPPROTO_UDP {
            port
        } else {
            0
        };
        let table = self
            .port_tables
            .get(&PortTableKey::new(class, protocol))
            .or_else(|| {
                self.port_tables
                    .get(&PortTableKey::new(class, ANY_PROTOCOL))
            })?;
        if table.runs == 0 {
            let data: PortData = port_data(class, protocol, port);
            return self.ports.lookup(data, PORT_KEY_FULL_BITS);
        }
        table.decide(port)
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

/// [`MapSim::decide_named`] on freshly indexed maps.
pub fn decide_named(
    compiled: &Compiled,
    cgroup_path: &str,
    uid: u32,
    dst: IpAddr,
    names: &[String],
    protocol: u8,
    port: u16,
) -> Decision {
    MapSim::new(compiled).decide_named(cgroup_path, uid, dst, names, protocol, port)
}

/// [`MapSim::decide_ingress`] on freshly indexed maps.
pub fn decide_ingress(
    compiled: &Compiled,
    cgroup_path: &str,
    uid: u32,
    src: IpAddr,
    protocol: u8,
    local_port: u16,
) -> Option<Decision> {
    MapSim::new(compiled).decide_ingress(cgroup_path, uid, src, protocol, local_port)
}
