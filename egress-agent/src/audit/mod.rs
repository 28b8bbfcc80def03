//! The audit log: connection decisions from the kernel and policy changes from the agent,
//! written as JSON Lines with a contiguous `seq` that continues across restarts.

pub(crate) mod clock;
mod connection;
pub mod record;
mod sink;

pub use clock::BootClock;
pub use connection::{RuleNames, decode_event, enrich};
pub use sink::{AuditError, AuditLog};
