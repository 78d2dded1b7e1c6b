//! vCPUs: the lock-free table that says which exist and the lifecycle each
//! one goes through (both in the `vcpu-table` crate, re-exported here), and
//! (in `manager`) the code that creates, runs, hot-adds and retires them.
//!
//! The resize path, top to bottom: `reconciler` (how many, which ids) →
//! `manager` (carries it out) → `lifecycle` (the one table of transitions,
//! applied through [`apply`]) → the CPU hotplug controller and GED
//! (`devices`) → the guest, whose answers come back through `hotplug_host`.

pub mod clock;
pub mod hotplug_host;
pub mod manager;
pub mod reconciler;
pub mod vcpu;

pub use vcpu_table::{lifecycle, rcu, table};
pub use vcpu_table::{FenceMode, OstReport, Phase, ReadGuard, Reader, Reason, State, TableError, VcpuTable};

use lifecycle::{Event, StateCell, Transition};

// Every id the CPU hotplug controller can report must have a table slot.
const _: () = assert!(devices::cpu_hotplug::MAX_CPUS <= vcpu_table::table::MAX_CAPACITY);

/// Applies `event` to vCPU `id` ([`lifecycle::apply`]) and reports the
/// transition to the event monitor. The manager and the MMIO host move
/// vCPUs only through here, so every transition is reported once.
pub fn apply(cell: &impl StateCell, id: u32, event: Event) -> Option<Transition> {
    let t = lifecycle::apply(cell, id, event)?;
    crate::events::vcpu_transition(id, t.from, t.to);
    Some(t)
}
