//! Why the VM stops, reported from any thread to the main event loop.

use std::sync::Mutex;

use vmm_sys_util::eventfd::EventFd;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// The guest powered off.
    Shutdown,
    /// The guest asked for a reset; lithe boots the VM again.
    Reboot,
    /// A vCPU failed; the VMM exits non-zero.
    VcpuError { id: u32, reason: String },
}

/// One per VM generation: the first reported exit wins, and the event fd
/// (shared by all generations) wakes the main loop. A vCPU of a torn-down
/// generation that reports late reaches its own notifier, which nobody reads
/// any more, so it can never stop the VM that replaced it.
pub struct ExitNotifier {
    evt: EventFd,
    reason: Mutex<Option<VmExit>>,
}

impl ExitNotifier {
    /// `evt`: the main loop's wake-up (a clone of it).
    pub fn new(evt: EventFd) -> Self {
        ExitNotifier { evt, reason: Mutex::new(None) }
    }

    pub fn notify(&self, exit: VmExit) {
        let mut r = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if r.is_none() {
            *r = Some(exit);
        }
        drop(r);
        if let Err(e) = self.evt.write(1) {
            log::error!("cannot wake the main loop for a VM exit: {e}");
        }
    }

    /// Takes the reported exit (the main loop drains the wake-up).
    pub fn take(&self) -> Option<VmExit> {
        self.reason.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}
