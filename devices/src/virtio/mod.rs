//! Virtio devices over MMIO, as a minimal VMM has them: the transport
//! ([`mmio`], virtio-mmio version 2), the queues from rust-vmm's
//! `virtio-queue`, the interrupt ([`VirtioInterrupt`]), the worker thread
//! each active device runs on ([`worker`]), and one folder or file per
//! device.
//!
//! A device is plain data plus a [`VirtioDevice`] impl: the transport owns
//! the register protocol and hands the device its queues on `DRIVER_OK`;
//! the device serves them on a thread of its own, never on a vCPU thread.

pub mod block;
pub mod fs;
pub mod interrupt;
pub mod mmio;
pub mod net;
pub mod rng;
pub mod vsock;
pub mod worker;

use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap, GuestRegionMmap};
use vmm_sys_util::eventfd::EventFd;

pub use interrupt::VirtioInterrupt;

/// Guest memory as devices see it: a snapshot they load per request, so a
/// later memory map can be published without pulling it from under them.
pub type GuestMemoryHandle = GuestMemoryAtomic<GuestMemoryMmap>;

/// Device type ids (virtio 1.2, 5).
pub const TYPE_BLOCK: u32 = 2;
pub const TYPE_RNG: u32 = 4;

/// Feature bits every modern device offers.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Runs once on a device's worker thread before it serves: lithe installs
/// the thread's seccomp filter here. Devices take it when they are made.
pub type ThreadInit = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// What a device gets when the guest has set it up (status `DRIVER_OK`).
pub struct Activation {
    pub mem: GuestMemoryHandle,
    /// The queues the guest made ready, in order, each with the eventfd its
    /// notifications arrive on (KVM's ioeventfd on `QueueNotify`).
    pub queues: Vec<(Queue, Arc<EventFd>)>,
    pub interrupt: Arc<VirtioInterrupt>,
    /// The features the driver accepted.
    pub features: u64,
}

impl Activation {
    /// The device needs exactly `n` queues ready.
    pub fn expect_queues(&self, n: usize) -> Result<(), ActivateError> {
        match self.queues.len() {
            got if got == n => Ok(()),
            got => Err(ActivateError::Queues { expected: n, got }),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("expected {expected} queues, the guest made {got} ready")]
    Queues { expected: usize, got: usize },
    #[error("handing the queues to the worker thread: {0}")]
    Worker(std::io::Error),
    #[error("{0}")]
    Device(String),
}

/// One virtio device, behind the MMIO transport.
pub trait VirtioDevice: Send {
    /// The virtio device type ([`TYPE_BLOCK`], …).
    fn device_type(&self) -> u32;
    /// A short name for logs and threads (`virtio-blk0`).
    fn name(&self) -> &str;
    /// Largest size of each queue.
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits offered, [`VIRTIO_F_VERSION_1`] included.
    fn features(&self) -> u64;
    /// Reads the device-specific configuration space.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Guest writes to the configuration space: ignored unless a device
    /// has writable fields.
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Starts serving the queues.
    fn activate(&mut self, a: Activation) -> Result<(), ActivateError>;
    /// Stops serving and forgets the queues; the device may be activated again.
    fn reset(&mut self);
    /// Name and value of each counter, for `vm.counters`.
    fn counters(&self) -> Vec<(&'static str, u64)>;
    /// Guest memory gained `region` (memory hotplug). Devices that read it
    /// through the memory map need nothing; one whose backend maps guest
    /// memory itself (vhost-user) tells it, bounded, before the guest is told.
    fn memory_added(&mut self, _region: &Arc<GuestRegionMmap>) -> Result<(), String> {
        Ok(())
    }
    /// The guest gave `region` back and no vCPU can reach it any more.
    fn memory_removed(&mut self, _region: &Arc<GuestRegionMmap>) -> Result<(), String> {
        Ok(())
    }
}

/// Copies `value`'s bytes at `offset` into `data` (a config space read);
/// out of range reads as zeros.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else { return };
    if let Some(src) = config.get(start..) {
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }
}
