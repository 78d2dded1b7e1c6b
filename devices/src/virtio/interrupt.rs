//! A virtio-mmio device's interrupt: the `InterruptStatus` bits (used
//! buffer, configuration change) and the irqfd that raises its GSI.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::interrupt::InterruptTrigger;

/// `InterruptStatus` bit: a queue's used ring has new entries.
pub const INT_VRING: u32 = 1;
/// `InterruptStatus` bit: the configuration (or `NEEDS_RESET`) changed.
pub const INT_CONFIG: u32 = 2;

pub struct VirtioInterrupt {
    status: AtomicU32,
    /// Bits `InterruptStatus` reads as set whatever was acknowledged: for
    /// a device whose backend raises the irqfd itself, so lithe never sees
    /// (and cannot set a bit for) each of its interrupts.
    sticky: AtomicU32,
    trigger: Box<dyn InterruptTrigger>,
    raised: AtomicU64,
}

impl VirtioInterrupt {
    pub fn new(trigger: Box<dyn InterruptTrigger>) -> Self {
        VirtioInterrupt { status: AtomicU32::new(0), sticky: AtomicU32::new(0), trigger, raised: AtomicU64::new(0) }
    }

    /// Sets `bits` in `InterruptStatus` and raises the interrupt.
    pub fn signal(&self, bits: u32) {
        self.status.fetch_or(bits, Ordering::AcqRel);
        self.raised.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.trigger.trigger() {
            log::error!("virtio: cannot raise the interrupt: {e}");
        }
    }

    /// The used-ring interrupt.
    pub fn signal_used(&self) {
        self.signal(INT_VRING)
    }

    pub fn status(&self) -> u32 {
        self.status.load(Ordering::Acquire) | self.sticky.load(Ordering::Acquire)
    }

    /// The irqfd the interrupt is raised through, when it is one.
    pub fn irqfd(&self) -> Option<&vmm_sys_util::eventfd::EventFd> {
        self.trigger.irqfd()
    }

    /// Makes `bits` read as set until [`VirtioInterrupt::clear`] (a reset).
    /// A spurious used-ring interrupt is harmless (drivers check the ring);
    /// a missing bit would lose the interrupt.
    pub fn set_sticky(&self, bits: u32) {
        self.sticky.fetch_or(bits, Ordering::AcqRel);
    }

    /// The guest's `InterruptACK`.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::AcqRel);
    }

    pub fn clear(&self) {
        self.status.store(0, Ordering::Release);
        self.sticky.store(0, Ordering::Release);
    }

    /// Interrupts raised so far.
    pub fn raised(&self) -> u64 {
        self.raised.load(Ordering::Relaxed)
    }
}
