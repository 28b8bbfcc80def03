//! Writes compiled policy generations into the kernel maps, double-buffered.
//!
//! Every entry of a generation carries its parity (see `egress_common`). A new generation is
//! written beside the active one, then one store to the config map switches the program to
//! it, then the old generation's entries are removed. A failure while writing removes what
//! was written and leaves the active generation untouched and in force.

use std::{thread, time::Duration};

use aya::maps::{
    Array, HashMap, MapData, MapError,
    lpm_trie::{Key, LpmTrie},
};
use egress_common::{
    Addr4Data, Addr6Data, CgroupKey, Decision, PARITY_BIT, PortData, RuntimeConfig, ScopeKey,
    ScopeValue,
    dns::{HostKeyData, NameClassKey, NameSetId},
    maps,
    ports::{PortTable, PortTableKey},
};

use super::{DatapathError, take};
use crate::{cgroup::Hierarchy, compile::Compiled};

/// Programs that read the old parity finish within microseconds (they run inside an RCU
/// read-side section and never sleep); removing the old entries this long after the switch
/// cannot pull them from under a running program.
const RETIRE_GRACE: Duration = Duration::from_millis(20);

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("writing {what} of generation {generation} failed: {source}")]
    Map {
        what: &'static str,
        generation: u64,
        #[source]
        source: MapError,
    },
    #[error(
        "{failures} entries left in the inactive half of the maps could not be removed; generation {generation} was not written, the active one stays"
    )]
    Leftovers { failures: usize, generation: u64 },
}

/// What the active generation wrote, so it can be removed when it is replaced.
#[derive(Default)]
struct Written {
    cgroups: Vec<CgroupKey>,
    scopes: Vec<ScopeKey>,
    addr4: Vec<Key<Addr4Data>>,
    addr6: Vec<Key<Addr6Data>>,
    port_tables: Vec<PortTableKey>,
    ports: Vec<Key<PortData>>,
    hostnames: Vec<Key<HostKeyData>>,
    name_classes: Vec<NameClassKey>,
}

/// The result of applying a generation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    pub generation: u64,
    pub parity: u32,
    /// Cgroup paths the policy names that do not exist (yet); they govern nothing until the
    /// next apply finds them.
    pub missing_cgroups: Vec<String>,
    pub entries: usize,
}

pub struct GenerationWriter {
    config: Array<MapData, RuntimeConfig>,
    cgroups: HashMap<MapData, CgroupKey, u32>,
    scopes: HashMap<MapData, ScopeKey, ScopeValue>,
    addr4: LpmTrie<MapData, Addr4Data, u32>,
    addr6: LpmTrie<MapData, Addr6Data, u32>,
    port_tables: HashMap<MapData, PortTableKey, PortTable>,
    ports: LpmTrie<MapData, PortData, Decision>,
    hostnames: LpmTrie<MapData, HostKeyData, NameSetId>,
    name_classes: HashMap<MapData, NameClassKey, u32>,
    active: RuntimeConfig,
    written: Written,
    /// Per parity (index `parity >> 31`): entries may exist that `written` does not list,
    /// because an earlier agent wrote them (pinned maps), or a write or removal failed. Such
    /// a parity is swept whole before it is written (or after it is retired): ids repeat
    /// from one generation of a parity to the next, so a leftover entry would otherwise be
    /// judged as part of the new generation.
    unknown: [bool; 2],
}

fn slot(parity: u32) -> usize {
    usize::from(parity != 0)
}

impl GenerationWriter {
    pub(super) fn new(ebpf: &mut aya::Ebpf) -> Result<Self, DatapathError> {
        let config: Array<MapData, RuntimeConfig> = take(ebpf, maps::CONFIG)?;
        let active = config.get(&0, 0).map_err(|source| DatapathError::Map {
            name: maps::CONFIG,
            source,
        })?;
        Ok(Self {
            config,
            cgroups: take(ebpf, maps::CGROUP_CLASSES)?,
            scopes: take(ebpf, maps::SCOPES)?,
            addr4: take(ebpf, maps::ADDR4)?,
            addr6: take(ebpf, maps::ADDR6)?,
            port_tables: take(ebpf, maps::PORT_TABLES)?,
            ports: take(ebpf, maps::PORTS)?,
            hostnames: take(ebpf, maps::HOSTNAMES)?,
            name_classes: take(ebpf, maps::NAME_CLASSES)?,
            // Pinned maps may hold anything an earlier agent left, in either parity.
            unknown: [true, true],
            active,
            written: Written::default(),
        })
    }

    /// The active generation (0 before the first apply).
    pub fn active(&self) -> RuntimeConfig {
        self.active
    }

    /// The parity the next generation must be compiled with.
    pub fn next_parity(&self) -> u32 {
        if self.active.generation == 0 {
            0
        } else {
            self.active.parity ^ PARITY_BIT
        }
    }

    /// Writes `compiled` (compiled with [`Self::next_parity`]) and switches to it.
    pub fn apply(
        &mut self,
        compiled: &Compiled,
        hierarchy: &Hierarchy,
    ) -> Result<Applied, WriteError> {
        let generation = self.active.generation + 1;
        let parity = self.next_parity();
        if self.unknown[slot(parity)] {
            let failures = self.sweep(parity);
            if failures > 0 {
                // Writing on top of entries we could not remove would mix generations.
                return Err(WriteError::Leftovers {
                    failures,
                    generation,
                });
            }
            self.unknown[slot(parity)] = false;
        }
        let mut written = Written::default();
        let mut missing_cgroups = Vec::new();
        if let Err(err) = self.write_all(
            compiled,
            hierarchy,
            generation,
            parity,
            &mut written,
            &mut missing_cgroups,
        ) {
            self.unknown[slot(parity)] = self.remove(&written) > 0;
            return Err(err);
        }
        let next = RuntimeConfig {
            generation,
            parity,
            flags: compiled.flags,
        };
        if let Err(source) = self.config.set(0, next, 0) {
            self.unknown[slot(parity)] = self.remove(&written) > 0;
            return Err(WriteError::Map {
                what: "the config switch",
                generation,
                source,
            });
        }
        self.active = next;
        let retired = std::mem::replace(&mut self.written, written);
        let retired_parity = parity ^ PARITY_BIT;
        thread::sleep(RETIRE_GRACE);
        let failures = if self.unknown[slot(retired_parity)] {
            self.sweep(retired_parity)
        } else {
            self.remove(&retired)
        };
        self.unknown[slot(retired_parity)] = failures > 0;
        Ok(Applied {
            generation,
            parity,
            missing_cgroups,
            entries: self.written.len(),
        })
    }

    fn write_all(
        &mut self,
        compiled: &Compiled,
        hierarchy: &Hierarchy,
        generation: u64,
        parity: u32,
        written: &mut Written,
        missing_cgroups: &mut Vec<String>,
    ) -> Result<(), WriteError> {
        let fail = |what| {
            move |source| WriteError::Map {
                what,
                generation,
                source,
            }
        };
        for (path, class) in &compiled.cgroups {
            let Ok(cgroup_id) = hierarchy.id_of(path) else {
                missing_cgroups.push(path.clone());
                continue;
            };
            let key = CgroupKey {
                cgroup_id,
                parity,
                _pad: 0,
            };
            self.cgroups
                .insert(key, class, 0)
                .map_err(fail("a cgroup class"))?;
            written.cgroups.push(key);
        }
        for (key, value) in &compiled.scopes {
            self.scopes.insert(key, value, 0).map_err(fail("a scope"))?;
            written.scopes.push(*key);
        }
        for (prefix_len, data, class) in &compiled.addr4 {
            let key = Key::new(*prefix_len, *data);
            self.addr4
                .insert(&key, class, 0)
                .map_err(fail("an IPv4 prefix"))?;
            written.addr4.push(key);
        }
        for (prefix_len, data, class) in &compiled.addr6 {
            let key = Key::new(*prefix_len, *data);
            self.addr6
                .insert(&key, class, 0)
                .map_err(fail("an IPv6 prefix"))?;
            written.addr6.push(key);
        }
        for (key, table) in &compiled.ports.tables {
            self.port_tables
                .insert(key, table, 0)
                .map_err(fail("a port table"))?;
            written.port_tables.push(*key);
        }
        for (prefix_len, data, decision) in &compiled.ports.trie {
            let key = Key::new(*prefix_len, *data);
            self.ports
                .insert(&key, decision, 0)
                .map_err(fail("a port entry"))?;
            written.ports.push(key);
        }
        // Names before the classes they lead to, like addresses before ports; nothing of the
        // new parity is reachable before the switch anyway.
        for (prefix_len, data, set) in &compiled.hostnames {
            let key = Key::new(*prefix_len, *data);
            self.hostnames
                .insert(&key, set, 0)
                .map_err(fail("a host name"))?;
            written.hostnames.push(key);
        }
        for (key, class) in &compiled.name_classes {
            self.name_classes
                .insert(key, class, 0)
                .map_err(fail("a name class"))?;
            written.name_classes.push(*key);
        }
        Ok(())
    }

    /// Removes entries no program can reach any more; returns how many removals failed. The
    /// caller marks the parity unknown then, so it is swept before it is written again.
    fn remove(&mut self, written: &Written) -> usize {
        let Written {
            cgroups,
            scopes,
            addr4,
            addr6,
            port_tables,
            ports,
            hostnames,
            name_classes,
        } = written;
        let failures = failed(cgroups, |k| self.cgroups.remove(k))
            + failed(scopes, |k| self.scopes.remove(k))
            + failed(addr4, |k| self.addr4.remove(k))
            + failed(addr6, |k| self.addr6.remove(k))
            + failed(port_tables, |k| self.port_tables.remove(k))
            + failed(ports, |k| self.ports.remove(k))
            + failed(hostnames, |k| self.hostnames.remove(k))
            + failed(name_classes, |k| self.name_classes.remove(k));
        if failures > 0 {
            tracing::warn!(
                failures,
                "some map entries could not be removed; their parity will be swept"
            );
        }
        failures
    }
}

impl GenerationWriter {
    /// Removes every entry whose parity is `retired`, whoever wrote it; returns how many
    /// removals failed.
    fn sweep(&mut self, retired: u32) -> usize {
        let stale = Written {
            cgroups: stale(self.cgroups.keys(), |key| key.parity == retired),
            scopes: stale(self.scopes.keys(), |key| {
                key.cgroup_class & PARITY_BIT == retired
            }),
            addr4: stale(self.addr4.keys(), |key| {
                leading_parity(&key.data()) == retired
            }),
            addr6: stale(self.addr6.keys(), |key| {
                leading_parity(&key.data()) == retired
            }),
            port_tables: stale(self.port_tables.keys(), |key| {
                key.class & PARITY_BIT == retired
            }),
            ports: stale(self.ports.keys(), |key| {
                leading_parity(&key.data()) == retired
            }),
            // The parity byte of a host name key is 0 or 1, not a top bit.
            hostnames: stale(self.hostnames.keys(), |key| {
                (u32::from(key.data()[0]) << 31) == retired
            }),
            name_classes: stale(self.name_classes.keys(), |key| {
                key.scope & PARITY_BIT == retired
            }),
        };
        if stale.len() > 0 {
            tracing::info!(
                entries = stale.len(),
                "removing entries left by an earlier agent or a failed write"
            );
        }
        self.remove(&stale)
    }
}

/// The keys `retired` accepts; keys the map failed to hand out are skipped (a sweep is
/// best effort: what it misses stays and is swept next time).
fn stale<K>(
    keys: impl Iterator<Item = Result<K, MapError>>,
    retired: impl Fn(&K) -> bool,
) -> Vec<K> {
    keys.flatten().filter(|key| retired(key)).collect()
}

/// How many of `keys` `remove` fails on.
fn failed<K>(keys: &[K], mut remove: impl FnMut(&K) -> Result<(), MapError>) -> usize {
    keys.iter().filter(|key| remove(key).is_err()).count()
}

/// The parity bit of an LPM key whose data starts with a big-endian id.
fn leading_parity(data: &[u8]) -> u32 {
    if data.first().is_some_and(|byte| byte & 0x80 != 0) {
        PARITY_BIT
    } else {
        0
    }
}

impl Written {
    fn len(&self) -> usize {
        let Self {
            cgroups,
            scopes,
            addr4,
            addr6,
            port_tables,
            ports,
            hostnames,
            name_classes,
        } = self;
        cgroups.len()
            + scopes.len()
            + addr4.len()
            + addr6.len()
            + port_tables.len()
            + ports.len()
            + hostnames.len()
            + name_classes.len()
    }
}
