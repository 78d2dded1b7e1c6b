//! One vCPU's thread: runs `KVM_RUN` and dispatches exits to the buses.
//!
//! Stopping and pausing work by flag plus kick: the controller sets a flag
//! and sends [`kick_signal`] to the thread, which makes `KVM_RUN` return
//! `EINTR`; the thread sees the flag. A kick that lands just before `KVM_RUN`
//! is lost, so the controller repeats it until the thread acknowledges.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_ioctls::{VcpuExit, VcpuFd};
use log::{debug, error, info, warn};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use devices::Bus;

use crate::exit::{ExitNotifier, VmExit};
use crate::seccomp::{Filter, SeccompError};

/// The real-time signal that kicks a vCPU thread out of `KVM_RUN`.
pub fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

extern "C" fn handle_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the (empty) kick handler once per process.
pub fn install_kick_handler() -> Result<(), vmm_sys_util::errno::Error> {
    static ONCE: std::sync::OnceLock<Result<(), vmm_sys_util::errno::Error>> = std::sync::OnceLock::new();
    *ONCE.get_or_init(|| register_signal_handler(kick_signal(), handle_kick))
}

/// What a vCPU thread needs besides its fd.
#[derive(Clone)]
pub struct VcpuContext {
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub exit: Arc<ExitNotifier>,
    /// Installed by the thread before it first runs the guest.
    pub seccomp: Option<Arc<Filter>>,
    /// Told once when a hot-added vCPU leaves wait-for-SIPI.
    pub on_started: Option<Arc<dyn Fn(u32) + Send + Sync>>,
    /// lithe's IOAPIC, for the EOIs of level-triggered interrupts KVM exits on.
    pub ioapic: Option<Arc<devices::ioapic::Ioapic>>,
}

/// Flags and counters shared between a vCPU thread and everyone else.
#[derive(Default)]
pub struct VcpuControl {
    stop: AtomicBool,
    pause: AtomicBool,
    paused: AtomicBool,
    /// Exits to userspace (stats, `vm.info`).
    pub exits: AtomicU64,
    /// The guest has started running on this vCPU.
    pub started: AtomicBool,
    /// Asked to record where the guest is ([`VcpuHandle::whereabouts`]).
    probe: AtomicBool,
    /// The answer. A mutex: asked for rarely (a guest that stopped answering),
    /// never on the exit path.
    probed: Mutex<Option<Whereabouts>>,
}

/// Where a vCPU's guest code was when the VMM looked: for the logs when a
/// guest stops answering (an eject that never comes), so they say whether
/// that CPU sat halted or ran, and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Whereabouts {
    pub rip: u64,
    /// KVM's MP state (`KVM_MP_STATE_*`): 0 runnable, 3 halted, 1 waiting for INIT/SIPI.
    pub mp_state: u32,
    /// RFLAGS.IF: a CPU halted with interrupts off stays halted.
    pub interrupts_on: bool,
}

impl std::fmt::Display for Whereabouts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.mp_state {
            kvm_bindings::KVM_MP_STATE_RUNNABLE => "runnable",
            kvm_bindings::KVM_MP_STATE_HALTED => "halted",
            kvm_bindings::KVM_MP_STATE_UNINITIALIZED | kvm_bindings::KVM_MP_STATE_INIT_RECEIVED => {
                "waiting for INIT/SIPI"
            }
            _ => "in MP state",
        };
        let irqs = if self.interrupts_on { "on" } else { "off" };
        write!(f, "{state} ({}) at rip {:#x}, interrupts {irqs}", self.mp_state, self.rip)
    }
}

/// A running vCPU: what the vCPU table holds for each present id.
pub struct VcpuHandle {
    pub id: u32,
    pub control: Arc<VcpuControl>,
    thread: JoinHandle<VcpuFd>,
}

#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("spawning thread for vCPU {id}: {source}")]
    Spawn { id: u32, source: std::io::Error },
    #[error("vCPU {id} thread panicked")]
    Panicked { id: u32 },
    #[error("vCPU {id} did not stop within {waited:?}")]
    StopTimeout { id: u32, waited: Duration },
    #[error("vCPU {id}: {source}")]
    Seccomp { id: u32, source: SeccompError },
}

/// How often an unacknowledged kick is repeated.
const KICK_INTERVAL: Duration = Duration::from_micros(500);

impl VcpuHandle {
    /// Starts vCPU `id` on a thread named `vcpu<id>`, paused if `paused`.
    /// `started`: the guest already runs on it (boot vCPUs); otherwise the
    /// thread watches for the guest starting it (KVM MP state, checked after
    /// each exit: [`kick`](Self::kick) it to have it look).
    /// Returns at once. The thread installs its seccomp filter (if any)
    /// before it first runs the guest, so no guest code runs on an
    /// unfiltered vCPU thread; [`Ready::wait`] says whether that worked.
    /// Not waiting here keeps thread scheduling out of a hot-add's path to
    /// the guest's interrupt: KVM holds an INIT/SIPI for a vCPU until its
    /// thread first enters `KVM_RUN`.
    pub fn spawn(
        id: u32,
        fd: VcpuFd,
        ctx: VcpuContext,
        paused: bool,
        started: bool,
    ) -> Result<(VcpuHandle, Ready), VcpuError> {
        let control = Arc::new(VcpuControl::default());
        control.pause.store(paused, Ordering::Release);
        control.started.store(started, Ordering::Release);
        let c = control.clone();
        let (ready_tx, ready) = std::sync::mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || {
                let filtered = ctx.seccomp.as_ref().map_or(Ok(()), |f| f.apply());
                let ok = filtered.is_ok();
                let _ = ready_tx.send(filtered);
                if ok {
                    run(id, fd, ctx, c)
                } else {
                    fd
                }
            })
            .map_err(|source| VcpuError::Spawn { id, source })?;
        Ok((VcpuHandle { id, control, thread }, Ready { id, rx: ready }))
    }

    /// Makes `KVM_RUN` return, so the thread looks at its flags (and, until
    /// the guest started it, at its MP state).
    pub fn kick(&self) {
        if let Err(e) = self.thread.kill(kick_signal()) {
            debug!("vCPU {}: kick failed (thread exiting?): {e}", self.id);
        }
    }

    /// Asks the thread to pause and waits until it has.
    pub fn pause(&self, limit: Duration) -> Result<(), VcpuError> {
        self.control.pause.store(true, Ordering::Release);
        self.kick_until(limit, || self.control.paused.load(Ordering::Acquire) || self.thread.is_finished())
            .map_err(|waited| VcpuError::StopTimeout { id: self.id, waited })
    }

    /// Kicks the thread every [`KICK_INTERVAL`] until `done`, or gives up
    /// after `limit`, returning how long it waited.
    fn kick_until(&self, limit: Duration, done: impl Fn() -> bool) -> Result<(), Duration> {
        let start = Instant::now();
        while !done() {
            if start.elapsed() > limit {
                return Err(start.elapsed());
            }
            self.kick();
            std::thread::sleep(KICK_INTERVAL);
        }
        Ok(())
    }

    pub fn resume(&self) {
        self.control.pause.store(false, Ordering::Release);
        self.thread.thread().unpark();
    }

    /// Stops the thread, joins it and returns the KVM vCPU fd for parking.
    /// If it does not stop within `limit`, the handle comes back with the
    /// error, so the caller can keep trying: a thread is never detached.
    pub fn stop(self, limit: Duration) -> Result<VcpuFd, StopFailed> {
        self.control.stop.store(true, Ordering::Release);
        self.thread.thread().unpark();
        if let Err(waited) = self.kick_until(limit, || self.thread.is_finished()) {
            let error = VcpuError::StopTimeout { id: self.id, waited };
            return Err(StopFailed { handle: Some(self), error });
        }
        let id = self.id;
        self.thread.join().map_err(|_| StopFailed { handle: None, error: VcpuError::Panicked { id } })
    }

    pub fn is_started(&self) -> bool {
        self.control.started.load(Ordering::Acquire)
    }

    /// Asks the thread where the guest is on this vCPU, waiting up to `limit`.
    /// `None` if the thread did not answer in time (or is parked or exiting).
    pub fn whereabouts(&self, limit: Duration) -> Option<Whereabouts> {
        if let Ok(mut p) = self.control.probed.lock() {
            *p = None;
        }
        self.control.probe.store(true, Ordering::Release);
        let answer = || self.control.probed.lock().ok().and_then(|p| *p);
        let _ = self.kick_until(limit, || answer().is_some() || self.thread.is_finished());
        self.control.probe.store(false, Ordering::Release);
        answer()
    }
}

/// Reads where the guest is on this vCPU (on its own thread, between runs).
fn look(fd: &VcpuFd) -> Option<Whereabouts> {
    let regs = fd.get_regs().ok()?;
    let mp = fd.get_mp_state().ok()?;
    const IF: u64 = 1 << 9;
    Some(Whereabouts { rip: regs.rip, mp_state: mp.mp_state, interrupts_on: regs.rflags & IF != 0 })
}

/// Whether a freshly spawned vCPU thread installed its seccomp filter (and
/// so runs the guest) or gave up before running anything.
pub struct Ready {
    id: u32,
    rx: std::sync::mpsc::Receiver<Result<(), SeccompError>>,
}

impl Ready {
    pub fn wait(self) -> Result<(), VcpuError> {
        match self.rx.recv() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(VcpuError::Seccomp { id: self.id, source }),
            Err(_) => Err(VcpuError::Panicked { id: self.id }),
        }
    }
}

/// A vCPU thread that did not stop: the handle (to try again) unless it panicked.
pub struct StopFailed {
    pub handle: Option<VcpuHandle>,
    pub error: VcpuError,
}

/// Whether the vCPU runs guest code: it left the wait for INIT/SIPI.
fn left_wait_for_sipi(fd: &VcpuFd) -> bool {
    fd.get_mp_state()
        .is_ok_and(|mp| matches!(mp.mp_state, kvm_bindings::KVM_MP_STATE_RUNNABLE | kvm_bindings::KVM_MP_STATE_HALTED))
}

enum Step {
    Continue,
    Exit,
}

fn run(id: u32, mut fd: VcpuFd, ctx: VcpuContext, control: Arc<VcpuControl>) -> VcpuFd {
    debug!("vCPU {id}: thread started");
    crate::counters::note_first_run();
    loop {
        if control.stop.load(Ordering::Acquire) {
            break;
        }
        if control.probe.swap(false, Ordering::AcqRel) {
            let seen = look(&fd);
            if seen.is_none() {
                debug!("vCPU {id}: could not read its registers for a probe");
            }
            if let Ok(mut p) = control.probed.lock() {
                *p = seen;
            }
        }
        if control.pause.load(Ordering::Acquire) {
            control.paused.store(true, Ordering::Release);
            while control.pause.load(Ordering::Acquire) && !control.stop.load(Ordering::Acquire) {
                std::thread::park();
            }
            control.paused.store(false, Ordering::Release);
            continue;
        }
        let step = match fd.run() {
            Ok(exit) => {
                control.exits.fetch_add(1, Ordering::Relaxed);
                handle_exit(id, exit, &ctx)
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                fd.set_kvm_immediate_exit(0);
                Step::Continue
            }
            Err(e) => {
                ctx.exit.notify(VmExit::VcpuError { id, reason: format!("KVM_RUN failed: {e}") });
                Step::Exit
            }
        };
        if !control.started.load(Ordering::Relaxed) && left_wait_for_sipi(&fd) {
            control.started.store(true, Ordering::Release);
            info!("vCPU {id}: the guest started it");
            if let Some(f) = &ctx.on_started {
                f(id);
            }
        }
        if let Step::Exit = step {
            // Wait to be stopped by the VMM, so the fd goes back to its owner.
            while !control.stop.load(Ordering::Acquire) {
                std::thread::park_timeout(Duration::from_millis(50));
            }
            break;
        }
    }
    debug!("vCPU {id}: thread exiting");
    fd
}

fn handle_exit(id: u32, exit: VcpuExit<'_>, ctx: &VcpuContext) -> Step {
    match exit {
        VcpuExit::IoIn(port, data) => {
            if !ctx.pio.read(u64::from(port), data) {
                data.fill(0xff);
            }
        }
        VcpuExit::IoOut(port, data) => {
            ctx.pio.write(u64::from(port), data);
        }
        VcpuExit::MmioRead(addr, data) => {
            if !ctx.mmio.read(addr, data) {
                debug!("vCPU {id}: unhandled MMIO read at {addr:#x}");
                data.fill(0xff);
            }
        }
        VcpuExit::MmioWrite(addr, data) => {
            if !ctx.mmio.write(addr, data) {
                debug!("vCPU {id}: unhandled MMIO write at {addr:#x}");
            }
        }
        VcpuExit::IrqWindowOpen | VcpuExit::Intr => {}
        VcpuExit::IoapicEoi(vector) => {
            if let Some(ioapic) = &ctx.ioapic {
                ioapic.end_of_interrupt(vector);
            }
        }
        VcpuExit::Hlt => {
            // With the LAPICs in KVM, KVM handles HLT; userspace sees it only if
            // the guest halted with interrupts off for good.
            info!("vCPU {id}: halted");
            return Step::Exit;
        }
        VcpuExit::Shutdown => {
            info!("vCPU {id}: triple fault or shutdown; ending the VM");
            ctx.exit.notify(VmExit::Reboot);
            return Step::Exit;
        }
        VcpuExit::SystemEvent(kind, _) => {
            let exit = match kind {
                kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => VmExit::Shutdown,
                kvm_bindings::KVM_SYSTEM_EVENT_RESET => VmExit::Reboot,
                other => VmExit::VcpuError { id, reason: format!("unexpected system event {other}") },
            };
            ctx.exit.notify(exit);
            return Step::Exit;
        }
        VcpuExit::InternalError => {
            error!("vCPU {id}: KVM internal error (emulation failure?); see dmesg for the guest rip");
            ctx.exit.notify(VmExit::VcpuError { id, reason: "KVM_EXIT_INTERNAL_ERROR".into() });
            return Step::Exit;
        }
        VcpuExit::FailEntry(reason, cpu) => {
            ctx.exit.notify(VmExit::VcpuError {
                id,
                reason: format!("KVM_EXIT_FAIL_ENTRY: hardware reason {reason:#x} on host cpu {cpu}"),
            });
            return Step::Exit;
        }
        other => {
            warn!("vCPU {id}: unexpected exit {other:?}");
            ctx.exit.notify(VmExit::VcpuError { id, reason: format!("unexpected exit {other:?}") });
            return Step::Exit;
        }
    }
    Step::Continue
}
