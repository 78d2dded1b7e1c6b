//! How devices raise interrupts: an `EventFd` registered with KVM as an irqfd.

use std::io;
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

/// Something that injects one edge of a device interrupt into the guest.
pub trait InterruptTrigger: Send + Sync {
    fn trigger(&self) -> io::Result<()>;
    /// The irqfd behind it, if it is one: a vhost-user backend can then
    /// raise the interrupt itself.
    fn irqfd(&self) -> Option<&EventFd> {
        None
    }
}

/// An irqfd: writing the eventfd makes KVM raise the GSI it was registered for.
#[derive(Clone)]
pub struct EventFdTrigger(Arc<EventFd>);

impl EventFdTrigger {
    pub fn new(fd: EventFd) -> Self {
        EventFdTrigger(Arc::new(fd))
    }

    pub fn event_fd(&self) -> &EventFd {
        &self.0
    }
}

impl InterruptTrigger for EventFdTrigger {
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }

    fn irqfd(&self) -> Option<&EventFd> {
        Some(&self.0)
    }
}

impl vm_superio::Trigger for EventFdTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}
