//! Why the VM stops, reported from any thread to the main event loop.

use std::sync::Mutex;

use vmm_sys_util::eventfd::EventFd;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// The guest powered off.
    Shutdown,
    /// The guest asked for a reset; lithe ends the VM like a shutdown.
    Reboot,
    /// A vCPU failed; the VMM exits non-zero.
    VcpuError { id: u32, reason: String },
}

/// The first reported exit wins; the event fd wakes the main loop.
pub struct ExitNotifier {
    evt: EventFd,
    reason: Mutex<Option<VmExit>>,
}

impl ExitNotifier {
    pub fn new() -> std::io::Result<Self> {
        Ok(ExitNotifier { evt: EventFd::new(libc::EFD_NONBLOCK)?, reason: Mutex::new(None) })
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

    pub fn event_fd(&self) -> &EventFd {
        &self.evt
    }

    /// Takes the reported exit, clearing the wake-up.
    pub fn take(&self) -> Option<VmExit> {
        let _ = self.evt.read();
        self.reason.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}
