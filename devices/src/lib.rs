//! Emulated devices of lithe.
//!
//! Every device is reached through a [`bus::Bus`] that is built once before the
//! first vCPU runs and then shared read-only by all vCPU threads, so dispatching
//! an exit never takes a lock; each device guards its own state.

pub mod bus;
pub mod cpu_hotplug;
pub mod ged;
pub mod guest_log;
pub mod interrupt;
pub mod ioapic;
pub mod mem_hotplug;
pub mod power;
pub mod serial;
pub mod virtio;

pub use bus::{Bus, BusDevice, BusError};
pub use interrupt::{EventFdTrigger, InterruptTrigger};
