//! The egress agent: compiles YAML policy into the kernel program's maps, enforces it, and
//! streams decisions into an audit log. The `egress` binary is a thin shell around this.

pub mod agent;
pub mod audit;
pub mod cgroup;
pub mod cli;
pub mod compile;
pub mod config;
pub mod control;
pub mod datapath;
pub mod enforcer;
pub mod eval;
pub mod kubernetes;
pub mod metrics;
pub mod policy;
pub mod source;
pub mod watch;
