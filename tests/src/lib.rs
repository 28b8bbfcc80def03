//! Fixtures for egress's root-only integration tests, modelled on aya's test helpers:
//! RAII guards for cgroups, network namespaces, processes and the agent that clean up
//! on success and on panic, a two-namespace test network, clients that run inside a
//! namespace and a cgroup, and servers that count what reaches them.
//!
//! Only documentation prefixes are ever used: 192.0.2.0/24, 198.51.100.0/24,
//! 203.0.113.0/24 and 2001:db8::/32.

pub mod agent;
pub mod cgroup;
pub mod client;
pub mod counters;
pub mod dns;
pub mod error;
pub mod net;
pub mod policygen;
pub mod process;
pub mod serial;
pub mod server;
pub mod test_run;
pub mod traffic;

pub use agent::{AgentGuard, root_egress_programs};
pub use cgroup::{CgroupGuard, cgroup2_root};
pub use client::{Client, HttpOutcome};
pub use counters::PacketCounters;
pub use error::{FixtureError, Result};
pub use net::{NetNsGuard, TestNet};
pub use process::{ProcessGuard, helper_bin};
pub use serial::{SerialGuard, serial};
pub use server::{Proto, ServerEvent, Servers};
