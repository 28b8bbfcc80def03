//! The audit log: connection decisions from the kernel and policy changes from the agent,
//! written as JSON Lines with a contiguous `seq` that continues across restarts and
//! rotations (format and guarantees: docs/audit.md).

pub(crate) mod clock;
mod connection;
pub mod files;
pub mod record;
mod sink;
mod state;

pub use clock::KernelClock;
pub use connection::{RuleNames, decode_event, enrich};
pub use files::LogFiles;
pub use sink::{AuditError, AuditLog, Rotation};
