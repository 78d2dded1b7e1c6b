//! The vCPU table lithe keeps its vCPUs in: a presence bitmap with RCU
//! semantics per bit ([`table`], on the small RCU domain in [`rcu`]), and the
//! lifecycle state each slot carries ([`lifecycle`], one instance of the
//! atomic state machine in [`machine`], which memory slots share).
//!
//! A crate of its own so that its concurrency checks stay cheap: the loom
//! models (`RUSTFLAGS="--cfg loom"`) and Miri build this crate and its few
//! dependencies, not the VMM. Under `--cfg loom`, [`sync`] swaps std's atomics
//! for loom's.

pub mod lifecycle;
pub mod machine;
pub mod rcu;
mod sync;
pub mod table;

pub use lifecycle::{Phase, Reason, State};
pub use rcu::FenceMode;
pub use table::{OstReport, ReadGuard, Reader, TableError, VcpuTable};
