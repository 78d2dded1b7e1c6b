//! SIGINT and SIGTERM end lithe cleanly (vCPUs stopped, API socket removed)
//! instead of killing it mid-flight: the handler only writes an event fd,
//! which the main loop watches.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicI32, Ordering};

use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::register_signal_handler;

static TERM_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_term(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let fd = TERM_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        let one: u64 = 1;
        // SAFETY: write(2) is async-signal-safe; `one` outlives the call and
        // the fd belongs to an EventFd that lives as long as the process's VMM.
        unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
    }
}

/// Routes SIGINT and SIGTERM to `evt`. `evt` must stay open for the life of the process.
pub fn install(evt: &EventFd) -> Result<(), vmm_sys_util::errno::Error> {
    TERM_FD.store(evt.as_raw_fd(), Ordering::Relaxed);
    register_signal_handler(libc::SIGINT, on_term)?;
    register_signal_handler(libc::SIGTERM, on_term)
}
