//! DNS answers the kernel read (`egress_dns_skb`): which names each cgroup was told each
//! address for, so that audit records name the services a workload contacted (`dst_host`,
//! `dst_names`). Enforcement does not depend on this table: the kernel learned the addresses
//! before the workload could read the answer. This only names them in the log.

use std::{
    collections::{BTreeSet, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use egress_common::dns::{DnsConfig, DnsEventHeader};
use simple_dns::{CLASS, Packet, rdata::RData};

use crate::policy::canonical_name;

/// Settings of hostname rules.
#[derive(Debug, clap::Args)]
pub struct DnsArgs {
    /// Seconds a learned address outlives its DNS record's TTL: connections made just after
    /// the record expired (a slow client, a cached answer) are still judged by name.
    #[arg(long, default_value_t = 5)]
    pub dns_grace_seconds: u64,
    /// Longest time an address counts as learned, whatever TTL its record had.
    #[arg(long, default_value_t = 86_400)]
    pub dns_max_ttl_seconds: u64,
}

impl DnsArgs {
    /// The kernel's view of these settings.
    pub fn kernel_config(&self) -> DnsConfig {
        let Self {
            dns_grace_seconds,
            dns_max_ttl_seconds,
        } = self;
        DnsConfig {
            grace_ns: dns_grace_seconds.saturating_mul(1_000_000_000),
            max_ttl_ns: dns_max_ttl_seconds.saturating_mul(1_000_000_000),
        }
    }
}

/// Addresses the names table holds at most; beyond, the entries closest to expiry go first.
const CAPACITY: usize = 65_536;

/// The names a cgroup learned an address for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    /// The name the workload asked for most recently.
    pub host: String,
    /// Every name the address was learned for while the entry lived (question names and
    /// CNAME targets), sorted.
    pub all: BTreeSet<String>,
    expires: Instant,
}

/// (cgroup id, address) → names, as the kernel's learned map keys them.
#[derive(Debug)]
pub struct LearnedNames {
    entries: HashMap<(u64, IpAddr), Names>,
    grace: Duration,
    max_ttl: Duration,
}

impl LearnedNames {
    pub fn new(args: &DnsArgs) -> Self {
        Self {
            entries: HashMap::new(),
            grace: Duration::from_secs(args.dns_grace_seconds),
            max_ttl: Duration::from_secs(args.dns_max_ttl_seconds),
        }
    }

    /// Records the answer in one ring buffer item; `false` if the item is not a DNS event the
    /// agent can read (logged by the caller).
    pub fn record_event(&mut self, item: &[u8], now: Instant) -> bool {
        let Some((header, message)) = decode(item) else {
            return false;
        };
        self.record(header.cgroup_id, message, now);
        true
    }

    /// Records the addresses `message` (a DNS response delivered to `cgroup_id`) gave for
    /// its names. Unreadable messages are skipped: they only cost names in the log.
    pub fn record(&mut self, cgroup_id: u64, message: &[u8], now: Instant) {
        let Ok(packet) = Packet::parse(message) else {
            return;
        };
        let Some(question) = packet.questions.first() else {
            return;
        };
        let Some(host) = canonical_name(&question.qname.to_string()) else {
            return;
        };
        let mut names = BTreeSet::from([host.clone()]);
        let mut chain_ttl = u32::MAX;
        let mut addresses = Vec::new();
        for record in packet.answers.iter().filter(|r| r.class == CLASS::IN) {
            match &record.rdata {
                RData::CNAME(target) => {
                    if let Some(name) = canonical_name(&target.0.to_string()) {
                        names.insert(name);
                    }
                    chain_ttl = chain_ttl.min(record.ttl);
                }
                RData::A(a) => addresses.push((IpAddr::V4(Ipv4Addr::from(a.address)), record.ttl)),
                RData::AAAA(aaaa) => {
                    addresses.push((IpAddr::V6(Ipv6Addr::from(aaaa.address)), record.ttl));
                }
                _ => {}
            }
        }
        for (address, ttl) in addresses {
            let ttl = Duration::from_secs(u64::from(ttl.min(chain_ttl))).min(self.max_ttl);
            let expires = now + ttl + self.grace;
            let entry = self
                .entries
                .entry((cgroup_id, address))
                .or_insert_with(|| Names {
                    host: host.clone(),
                    all: BTreeSet::new(),
                    expires,
                });
            if entry.expires <= now {
                entry.all.clear(); // as in the kernel: expired names no longer count
            }
            entry.host.clone_from(&host);
            entry.all.extend(names.iter().cloned());
            entry.expires = entry.expires.max(expires);
        }
        if self.entries.len() > CAPACITY {
            self.evict(now);
        }
    }

    /// The names `cgroup_id` learned `address` for, if the entry has not expired.
    pub fn lookup(&self, cgroup_id: u64, address: IpAddr, now: Instant) -> Option<&Names> {
        self.entries
            .get(&(cgroup_id, address))
            .filter(|names| names.expires > now)
    }

    /// Drops expired entries, then, if still over capacity, those closest to expiry.
    fn evict(&mut self, now: Instant) {
        self.entries.retain(|_, names| names.expires > now);
        if self.entries.len() > CAPACITY {
            let mut expiries: Vec<Instant> = self.entries.values().map(|n| n.expires).collect();
            expiries.sort_unstable();
            let cutoff = expiries[self.entries.len() - CAPACITY * 3 / 4];
            self.entries.retain(|_, names| names.expires > cutoff);
        }
    }

    /// Reads every DNS event waiting in `ring`; returns how many could not be decoded.
    pub fn drain(&mut self, ring: &mut RingBuf<MapData>) -> usize {
        let now = Instant::now();
        let mut undecoded = 0;
        while let Some(item) = ring.next() {
            if !self.record_event(&item, now) {
                undecoded += 1;
            }
        }
        undecoded
    }
}

/// Splits a DNS ring buffer item into its header and message.
fn decode(item: &[u8]) -> Option<(DnsEventHeader, &[u8])> {
    let header_len = size_of::<DnsEventHeader>();
    let header = item.get(..header_len)?;
    // SAFETY: DnsEventHeader is repr(C) plain data, every bit pattern valid, and `header` has
    // exactly its size; read_unaligned makes no alignment assumption.
    let header: DnsEventHeader = unsafe { std::ptr::read_unaligned(header.as_ptr().cast()) };
    let len = usize::try_from(header.len).ok()?;
    let message = item.get(header_len..header_len.checked_add(len)?)?;
    Some((header, message))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A response for `www.Example.TEST.` → CNAME `edge.cdn.test` → A 203.0.113.7, TTL 30.
    fn response() -> Vec<u8> {
        let mut m = vec![0x12, 0x34, 0x81, 0x80, 0, 1, 0, 2, 0, 0, 0, 0];
        m.extend(b"\x03www\x07Example\x04TEST\x00\x00\x01\x00\x01");
        // CNAME, owner = pointer to the question name at offset 12.
        m.extend([0xc0, 12, 0, 5, 0, 1, 0, 0, 0, 60, 0, 15]);
        m.extend(b"\x04edge\x03cdn\x04test\x00");
        // A, owner = pointer to the CNAME target at offset 46.
        m.extend([0xc0, 46, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4, 203, 0, 113, 7]);
        m
    }

    fn names() -> LearnedNames {
        LearnedNames::new(&DnsArgs {
            dns_grace_seconds: 5,
            dns_max_ttl_seconds: 86_400,
        })
    }

    #[test]
    fn addresses_are_named_by_question_and_cname_chain() {
        let mut table = names();
        let now = Instant::now();
        table.record(7, &response(), now);
        let addr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7));
        let found = table.lookup(7, addr, now).expect("learned");
        assert_eq!(found.host, "www.example.test");
        assert_eq!(
            found.all.iter().map(String::as_str).collect::<Vec<_>>(),
            ["edge.cdn.test", "www.example.test"]
        );
        assert!(
            table.lookup(8, addr, now).is_none(),
            "another cgroup did not ask"
        );
        // TTL 30 + grace 5: named at 34 s, not at 36 s.
        assert!(
            table
                .lookup(7, addr, now + Duration::from_secs(34))
                .is_some()
        );
        assert!(
            table
                .lookup(7, addr, now + Duration::from_secs(36))
                .is_none()
        );
    }

    #[test]
    fn events_decode_and_garbage_is_refused() {
        let message = response();
        let header = DnsEventHeader {
            boot_ns: 1,
            cgroup_id: 9,
            len: u32::try_from(message.len()).expect("small"),
            learned: 1,
            _pad: [0; 3],
        };
        // SAFETY: plain data viewed as bytes.
        let bytes: [u8; size_of::<DnsEventHeader>()] = unsafe { std::mem::transmute(header) };
        let mut item = bytes.to_vec();
        item.extend(&message);
        let mut table = names();
        assert!(table.record_event(&item, Instant::now()));
        assert!(
            table
                .lookup(9, IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)), Instant::now())
                .is_some()
        );
        assert!(!table.record_event(&item[..10], Instant::now()));
        item.truncate(item.len() - 1); // shorter than its header says
        assert!(!table.record_event(&item, Instant::now()));
    }
}
