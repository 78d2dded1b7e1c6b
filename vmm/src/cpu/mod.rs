//! vCPUs: the lock-free table that says which exist, and (in `manager`) the
//! code that creates, runs, hot-adds and retires them.

#[cfg(not(loom))]
pub mod hotplug_host;
#[cfg(not(loom))]
pub mod manager;
pub mod rcu;
mod sync;
pub mod table;
#[cfg(not(loom))]
pub mod vcpu;

pub use rcu::FenceMode;
pub use table::{OstReport, ReadGuard, Reader, TableError, VcpuState, VcpuTable};
