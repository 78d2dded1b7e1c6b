//! Seccomp filters for the threads that handle untrusted input.
//!
//! * vCPU threads run guest exits: every MMIO/PIO access of the guest is
//!   emulated there. After start-up they need `KVM_RUN`, eventfd and console
//!   writes, futexes and memory management, nothing else. Opening a file
//!   fails with `EACCES` on them and on API threads ([`no_files`]).
//! * API threads parse requests from the socket: they accept, read, write
//!   and hand requests to the main thread.
//!
//! * The main thread creates and boots VMs (at start, over the API, and
//!   again on every reboot), so its filter, installed once the API server
//!   runs and before the main loop, allows what building a VM takes: opening
//!   and reading files, KVM ioctls (and no other ioctl), guest memory,
//!   vCPU threads. It cannot start a process (`execve`, `fork`), open a
//!   socket other than a Unix one, or signal another process. `clone3` fails
//!   with `ENOSYS` (its flags sit in memory a filter cannot read), so thread
//!   creation falls back to `clone`, whose flags must say `CLONE_THREAD`.
//!
//! A filter is installed by the thread itself and inherited by threads it
//! spawns (the API's workers; vCPU threads, which add their own on top). A blocked syscall raises SIGSYS;
//! [`install_sigsys_handler`] reports the syscall and thread, then ends lithe
//! with [`BLOCKED_SYSCALL_EXIT`]. `--seccomp off` disables the filters.

use std::collections::BTreeMap;
use std::sync::Arc;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule, TargetArch,
};

/// lithe's exit status after a blocked syscall (128 + SIGSYS).
pub const BLOCKED_SYSCALL_EXIT: i32 = 128 + libc::SIGSYS;

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("building the {which} seccomp filter: {source}")]
    Build { which: &'static str, source: seccompiler::BackendError },
    #[error("installing the {which} seccomp filter: {source}")]
    Apply { which: &'static str, source: seccompiler::Error },
    #[error("installing the SIGSYS handler: {0}")]
    Handler(vmm_sys_util::errno::Error),
}

/// Compiled filters, shared by every thread of a kind.
#[derive(Clone)]
pub struct Filters {
    /// The main thread: [`MainFilter::apply`] once, before the main loop.
    pub main: Arc<MainFilter>,
    pub vcpu: Arc<Filter>,
    pub api: Arc<Filter>,
    /// The event monitor's writer: it only writes what it is sent.
    pub monitor: Arc<Filter>,
    /// A virtio device's worker: waits on its queues' eventfds, reads and
    /// writes guest memory and its backing file (already open), flushes it.
    pub device: Arc<Filter>,
    /// The vsock worker: a device's, plus its Unix sockets (accept on its
    /// listener, connect to `<socket>_<port>`, non-blocking, shut down).
    pub vsock: Arc<Filter>,
    /// A virtio-net worker: a device's, plus setting its TAP's offloads to
    /// what the guest accepted.
    pub net: Arc<Filter>,
    /// A virtio-fs worker: a device's, plus its vhost-user session (connect
    /// to the backend's Unix socket, messages with fds both ways, reply
    /// timeouts).
    pub fs: Arc<Filter>,
}

/// One compiled filter and the thread kind it is for.
pub struct Filter {
    which: &'static str,
    program: BpfProgram,
    /// Installed first: `open`/`openat` fail with `EACCES` ([`no_files`]).
    no_files: Option<BpfProgram>,
}

impl Filter {
    /// A filter from a compiled program, for a thread kind named `which`
    /// (lithe's own come from [`Filters::new`]).
    pub fn from_program(which: &'static str, program: BpfProgram) -> Filter {
        Filter { which, program, no_files: None }
    }

    /// Installs the filter on the calling thread (and threads it spawns later).
    pub fn apply(&self) -> Result<(), SeccompError> {
        let apply = |p: &BpfProgram| {
            seccompiler::apply_filter(p).map_err(|source| SeccompError::Apply { which: self.which, source })
        };
        if let Some(p) = &self.no_files {
            apply(p)?;
        }
        apply(&self.program)?;
        THREAD_FILTER.with(|f| f.set(self.which));
        Ok(())
    }
}

/// For threads that open no files: `open` and `openat` fail with `EACCES`
/// instead of ending lithe. glibc's malloc opens
/// `/proc/sys/vm/overcommit_memory` by itself, once per process, the first
/// time a thread's own arena shrinks (`check_may_shrink_heap`), and takes a
/// failed open as "do not shrink". An API worker that had built a large
/// `vm.info` (288 vCPUs) and freed it was killed for that open. The thread
/// still cannot open anything; stacked with the thread's own filter (where
/// `openat` is allowed), the kernel applies the stricter answer, the error.
fn no_files() -> Result<BpfProgram, SeccompError> {
    let rules = allow_all(&[&[libc::SYS_open, libc::SYS_openat]]);
    let which = "no files";
    let filter =
        SeccompFilter::new(rules, SeccompAction::Allow, SeccompAction::Errno(libc::EACCES as u32), TargetArch::x86_64)
            .map_err(|source| SeccompError::Build { which, source })?;
    BpfProgram::try_from(filter).map_err(|source| SeccompError::Build { which, source })
}

thread_local! {
    /// The last filter this thread installed, for the SIGSYS report. A
    /// const-initialised `Cell`: reading it in the handler neither allocates
    /// nor locks.
    static THREAD_FILTER: std::cell::Cell<&'static str> = const { std::cell::Cell::new("none") };
}

/// The main thread's two filters: one turns `clone3` into `ENOSYS`, the
/// other allows what the main loop does.
pub struct MainFilter {
    no_clone3: Filter,
    allowed: Filter,
}

impl MainFilter {
    /// Installs both on the calling thread (the main thread).
    pub fn apply(&self) -> Result<(), SeccompError> {
        self.no_clone3.apply()?;
        self.allowed.apply()
    }
}

impl Filters {
    /// Compiles the filters and installs the SIGSYS reporter: a syscall
    /// outside the lists ends lithe, naming it.
    pub fn new() -> Result<Filters, SeccompError> {
        install_sigsys_handler()?;
        Self::build(SeccompAction::Trap)
    }

    /// Filters that only log what they would block (the kernel's audit log;
    /// `--seccomp log`, as Cloud Hypervisor has it): for finding what a
    /// filter misses without stopping the VM.
    pub fn logging() -> Result<Filters, SeccompError> {
        Self::build(SeccompAction::Log)
    }

    fn build(on_mismatch: SeccompAction) -> Result<Filters, SeccompError> {
        // SAFETY: getpid takes no arguments and cannot fail.
        let pid = unsafe { libc::getpid() };
        let main = MainFilter {
            no_clone3: compile_with(
                "main (clone3)",
                allow_all(&[&[libc::SYS_clone3]]),
                SeccompAction::Allow,
                SeccompAction::Errno(libc::ENOSYS as u32),
            )?,
            allowed: compile("main", main_rules(pid), on_mismatch.clone())?,
        };
        Ok(Filters {
            main: Arc::new(main),
            vcpu: Arc::new(without_files("vCPU", vcpu_rules(), on_mismatch.clone())?),
            api: Arc::new(without_files("API", api_rules(), on_mismatch.clone())?),
            monitor: Arc::new(without_files("event monitor", allow_all(&[RUNTIME]), on_mismatch.clone())?),
            device: Arc::new(without_files("device", allow_all(&[RUNTIME, DEVICE_IO]), on_mismatch.clone())?),
            vsock: Arc::new(without_files("vsock", vsock_rules(), on_mismatch.clone())?),
            net: Arc::new(without_files("net", net_rules(), on_mismatch.clone())?),
            fs: Arc::new(without_files("fs", fs_rules(), on_mismatch)?),
        })
    }
}

/// A filter for a thread that opens no files: its own rules let `open` and
/// `openat` through, and [`no_files`], stacked under them, makes both fail.
/// (The kernel applies the strictest answer of all filters: an error beats
/// "allow", but a trap would beat the error.)
fn without_files(
    which: &'static str,
    mut rules: BTreeMap<i64, Vec<SeccompRule>>,
    on_mismatch: SeccompAction,
) -> Result<Filter, SeccompError> {
    rules.insert(libc::SYS_open, Vec::new());
    rules.insert(libc::SYS_openat, Vec::new());
    let mut f = compile(which, rules, on_mismatch)?;
    f.no_files = Some(no_files()?);
    Ok(f)
}

fn compile(
    which: &'static str,
    mut rules: BTreeMap<i64, Vec<SeccompRule>>,
    on_mismatch: SeccompAction,
) -> Result<Filter, SeccompError> {
    // Rust's std, built with debug assertions, asks whether a descriptor is
    // open (`fcntl(fd, F_GETFD)`) before it closes it: any thread that drops
    // an fd (a device worker its eventfds at exit) does that in a debug build.
    rules.entry(libc::SYS_fcntl).or_insert_with(|| vec![arg_rule(1, SeccompCmpOp::Eq, libc::F_GETFD as u64)]);
    compile_with(which, rules, on_mismatch, SeccompAction::Allow)
}

fn compile_with(
    which: &'static str,
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    on_mismatch: SeccompAction,
    on_match: SeccompAction,
) -> Result<Filter, SeccompError> {
    let arch = TargetArch::x86_64;
    let filter = SeccompFilter::new(rules, on_mismatch, on_match, arch)
        .map_err(|source| SeccompError::Build { which, source })?;
    let program = BpfProgram::try_from(filter).map_err(|source| SeccompError::Build { which, source })?;
    Ok(Filter { which, program, no_files: None })
}

/// What any Rust thread of lithe needs once running: memory, futexes,
/// signals (vCPU kicks, the SIGSYS report itself), time and sleeping,
/// logging to stderr, panicking, and exiting.
const RUNTIME: &[libc::c_long] = &[
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_getrandom,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_tgkill,
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// Thread creation (the API's accept thread starts its workers after its
/// filter is in place).
const SPAWN: &[libc::c_long] =
    &[libc::SYS_clone, libc::SYS_clone3, libc::SYS_set_robust_list, libc::SYS_rseq, libc::SYS_prctl];

/// Socket I/O of the API: accept, read with a timeout, write, shut down.
const API_IO: &[libc::c_long] = &[
    libc::SYS_accept4,
    libc::SYS_read,
    // Reads that may carry fds (`vm.add-net`'s TAPs).
    libc::SYS_recvmsg,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_setsockopt,
    libc::SYS_getsockopt,
    libc::SYS_shutdown,
    libc::SYS_fcntl,
    libc::SYS_poll,
];

/// A device worker's I/O: its event loop (made after the filter is in
/// place, with the eventfd event-manager keeps), eventfds, and positional
/// reads, writes and flushes of its file.
const DEVICE_IO: &[libc::c_long] = &[
    libc::SYS_epoll_create1,
    libc::SYS_eventfd2,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_read,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
];

/// What the main loop does besides [`RUNTIME`]: wait for events, build and
/// tear down VMs (files, `/dev/kvm`, guest memory, event fds, vCPU threads),
/// retire vCPUs (`membarrier` ends an RCU grace period), and at exit wake
/// the API server and remove its socket.
const MAIN_LOOP: &[libc::c_long] = &[
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_create1,
    libc::SYS_read,
    libc::SYS_pread64,
    libc::SYS_lseek,
    libc::SYS_openat,
    libc::SYS_statx,
    libc::SYS_newfstatat,
    libc::SYS_fstat,
    libc::SYS_fcntl,
    libc::SYS_eventfd2,
    libc::SYS_timerfd_create,
    libc::SYS_timerfd_settime,
    libc::SYS_membarrier,
    libc::SYS_rt_sigaction,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_prctl,
    libc::SYS_seccomp,
    libc::SYS_clone3,
    libc::SYS_connect,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    // Shared guest memory (`memory.shared`): one memfd, sized.
    libc::SYS_memfd_create,
    libc::SYS_ftruncate,
];

/// One rule: argument `arg` (32 bits wide) compared with `op` to `value`.
fn arg_rule(arg: u8, op: SeccompCmpOp, value: u64) -> SeccompRule {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value)
        .and_then(|c| SeccompRule::new(vec![c]))
        .expect("a valid one-condition rule")
}

fn main_rules(pid: libc::pid_t) -> BTreeMap<i64, Vec<SeccompRule>> {
    let mut rules = allow_all(&[RUNTIME, MAIN_LOOP]);
    let kvmio = u64::from(kvm_bindings::KVMIO) << 8;
    // Any KVM ioctl (the type byte of the request is KVMIO), and the four a
    // virtio-net device's TAP takes when the VM is built: TUNSETIFF,
    // TUNGETIFF, TUNSETVNETHDRSZ, TUNSETOFFLOAD.
    let mut ioctls = vec![arg_rule(1, SeccompCmpOp::MaskedEq(0xff00), kvmio)];
    for tun in [0x4004_54ca_u64, 0x8004_54d2, 0x4004_54d8, 0x4004_54d0] {
        ioctls.push(arg_rule(1, SeccompCmpOp::Eq, tun));
    }
    rules.insert(libc::SYS_ioctl, ioctls);
    // Threads only (clone3 is ENOSYS, see the module doc).
    let thread = libc::CLONE_THREAD as u64;
    rules.insert(libc::SYS_clone, vec![arg_rule(0, SeccompCmpOp::MaskedEq(thread), thread)]);
    // Unix sockets only (waking the API server's accept at exit).
    rules.insert(libc::SYS_socket, vec![arg_rule(0, SeccompCmpOp::Eq, libc::AF_UNIX as u64)]);
    // Signals to this process's own threads (vCPU kicks) only.
    rules.insert(libc::SYS_tgkill, vec![arg_rule(0, SeccompCmpOp::Eq, pid as u64)]);
    rules
}

fn allow_all(syscalls: &[&[libc::c_long]]) -> BTreeMap<i64, Vec<SeccompRule>> {
    syscalls.iter().flat_map(|s| s.iter()).map(|&nr| (nr, Vec::new())).collect()
}

fn vcpu_rules() -> BTreeMap<i64, Vec<SeccompRule>> {
    let mut rules = allow_all(&[RUNTIME, &[libc::SYS_read]]);
    // ioctl: KVM_RUN, KVM_GET_MP_STATE (to see the guest start a hot-added
    // vCPU), KVM_GET_REGS (where a guest that stopped answering is), and KVM_SET_GSI_ROUTING on the VM fd (lithe's IOAPIC publishes
    // its routes in the MMIO exit of the guest's write, so an interrupt right
    // after an unmask is not lost).
    let ioctl = |request: u64| {
        SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, request)
            .and_then(|c| SeccompRule::new(vec![c]))
            .expect("a valid one-condition rule")
    };
    let kvmio = u64::from(kvm_bindings::KVMIO) << 8;
    let kvm_run = ioctl(kvmio | 0x80); // _IO(KVMIO, 0x80)
    let get_mp_state = ioctl(2 << 30 | 4 << 16 | kvmio | 0x98); // _IOR(KVMIO, 0x98, struct kvm_mp_state)
    let set_gsi_routing = ioctl(1 << 30 | 8 << 16 | kvmio | 0x6a); // _IOW(KVMIO, 0x6a, struct kvm_irq_routing)
    let get_regs = ioctl(2 << 30 | 144 << 16 | kvmio | 0x81); // _IOR(KVMIO, 0x81, struct kvm_regs)
    rules.insert(libc::SYS_ioctl, vec![kvm_run, get_mp_state, set_gsi_routing, get_regs]);
    rules
}

fn vsock_rules() -> BTreeMap<i64, Vec<SeccompRule>> {
    // Stream I/O on a Unix socket is recvfrom/sendto as well as read/write.
    let sockets = &[
        libc::SYS_accept4,
        libc::SYS_connect,
        libc::SYS_shutdown,
        libc::SYS_fcntl,
        libc::SYS_recvfrom,
        libc::SYS_sendto,
    ];
    let mut rules = allow_all(&[RUNTIME, DEVICE_IO, sockets]);
    rules.insert(libc::SYS_socket, vec![arg_rule(0, SeccompCmpOp::Eq, libc::AF_UNIX as u64)]);
    // std sets a socket non-blocking with FIONBIO.
    rules.insert(libc::SYS_ioctl, vec![arg_rule(1, SeccompCmpOp::Eq, libc::FIONBIO)]);
    rules
}

fn net_rules() -> BTreeMap<i64, Vec<SeccompRule>> {
    let mut rules = allow_all(&[RUNTIME, DEVICE_IO]);
    // TUNSETOFFLOAD, _IOW('T', 208, unsigned int), only.
    rules.insert(libc::SYS_ioctl, vec![arg_rule(1, SeccompCmpOp::Eq, 0x4004_54d0)]);
    rules
}

fn fs_rules() -> BTreeMap<i64, Vec<SeccompRule>> {
    let session = &[
        libc::SYS_connect,
        libc::SYS_sendmsg,
        libc::SYS_recvmsg,
        // The peek that tells a closed session from a spurious wake-up.
        libc::SYS_recvfrom,
        libc::SYS_setsockopt,
        // The watchdog ends an exchange the backend does not answer.
        libc::SYS_shutdown,
    ];
    let mut rules = allow_all(&[RUNTIME, DEVICE_IO, session]);
    rules.insert(libc::SYS_socket, vec![arg_rule(0, SeccompCmpOp::Eq, libc::AF_UNIX as u64)]);
    rules
}

fn api_rules() -> BTreeMap<i64, Vec<SeccompRule>> {
    allow_all(&[RUNTIME, SPAWN, API_IO])
}

/// Reports a blocked syscall and ends the process. Only async-signal-safe
/// calls: `write` of a stack buffer and `_exit`.
extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t for a SA_SIGINFO handler;
    // for SIGSYS, `si_syscall` sits after si_signo/si_errno/si_code (+4
    // bytes of padding) and `si_call_addr` on x86_64: at byte offset 24.
    let nr = unsafe { info.cast::<u8>().add(24).cast::<libc::c_int>().read() };
    // SAFETY: gettid takes no arguments and touches no memory.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) };
    let filter = THREAD_FILTER.try_with(|f| f.get()).unwrap_or("unknown").as_bytes();
    let mut buf = [0u8; 160];
    let mut len = 0;
    let parts: [&[u8]; 7] = [
        b"lithe: seccomp blocked syscall ",
        &decimal(i64::from(nr)),
        b" on thread ",
        &decimal(tid),
        b" (filter: ",
        filter,
        b")\n",
    ];
    for part in parts {
        for &b in part.iter().take_while(|&&b| b != 0) {
            if len < buf.len() {
                buf[len] = b;
                len += 1;
            }
        }
    }
    // SAFETY: writes `len` initialised bytes of `buf` to stderr, then exits
    // without running destructors; both are async-signal-safe.
    unsafe {
        libc::write(2, buf.as_ptr().cast(), len);
        libc::_exit(BLOCKED_SYSCALL_EXIT);
    }
}

/// `n` in decimal, NUL-padded (no allocation in a signal handler).
fn decimal(n: i64) -> [u8; 21] {
    let mut out = [0u8; 21];
    let mut digits = [0u8; 20];
    let (mut v, mut i) = (n.unsigned_abs(), 0);
    loop {
        digits[i] = b'0' + (v % 10) as u8;
        i += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    let mut o = 0;
    if n < 0 {
        out[0] = b'-';
        o = 1;
    }
    for d in digits[..i].iter().rev() {
        out[o] = *d;
        o += 1;
    }
    out
}

/// Installs the SIGSYS reporter, once per process.
pub fn install_sigsys_handler() -> Result<(), SeccompError> {
    static ONCE: std::sync::OnceLock<Result<(), vmm_sys_util::errno::Error>> = std::sync::OnceLock::new();
    ONCE.get_or_init(|| vmm_sys_util::signal::register_signal_handler(libc::SIGSYS, on_sigsys))
        .map_err(SeccompError::Handler)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_formats_without_allocating() {
        let s = |n| String::from_utf8(decimal(n).iter().copied().take_while(|&b| b != 0).collect()).unwrap();
        assert_eq!(s(0), "0");
        assert_eq!(s(16), "16");
        assert_eq!(s(-38), "-38");
        assert_eq!(s(i64::MAX), i64::MAX.to_string());
        assert_eq!(s(i64::MIN), i64::MIN.to_string());
    }

    /// A vCPU thread's filter: opening a file fails with EACCES (what glibc's
    /// malloc copes with), it does not end lithe; other calls outside its
    /// list still hit the mismatch action (EPERM here, a trap in lithe).
    #[test]
    fn restricted_threads_get_eacces_for_files_not_a_trap() {
        std::thread::spawn(|| {
            without_files("vCPU", vcpu_rules(), SeccompAction::Errno(libc::EPERM as u32)).unwrap().apply().unwrap();
            let err = std::fs::File::open("/proc/sys/vm/overcommit_memory").unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::EACCES), "{err}");
            // SAFETY: winsize is four integers; all zeroes is a valid value.
            let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
            // SAFETY: TIOCGWINSZ writes a winsize into `ws`, which outlives the call.
            assert_eq!(unsafe { libc::ioctl(1, libc::TIOCGWINSZ, &mut ws) }, -1);
            assert_eq!(std::io::Error::last_os_error().raw_os_error(), Some(libc::EPERM));
            assert_eq!(THREAD_FILTER.with(|f| f.get()), "vCPU");
        })
        .join()
        .unwrap();
    }

    /// The main thread's rules, applied to a thread of this test with
    /// "fail with EPERM" instead of a trap: what it may and may not do.
    #[test]
    fn the_main_filter_builds_vms_but_starts_no_process_and_opens_no_network_socket() {
        std::thread::spawn(|| {
            let pid = std::process::id() as libc::pid_t;
            compile_with(
                "main (clone3)",
                allow_all(&[&[libc::SYS_clone3]]),
                SeccompAction::Allow,
                SeccompAction::Errno(libc::ENOSYS as u32),
            )
            .unwrap()
            .apply()
            .unwrap();
            compile("main", main_rules(pid), SeccompAction::Errno(libc::EPERM as u32)).unwrap().apply().unwrap();
            let errno = || std::io::Error::last_os_error().raw_os_error();
            // Threads still start (clone3 refused, clone with CLONE_THREAD allowed).
            assert_eq!(std::thread::spawn(|| 7).join().unwrap(), 7);
            // Files open and read; a terminal ioctl is refused (only KVM's pass).
            let f = std::fs::File::open("/proc/thread-self/status").unwrap();
            assert!(std::io::read_to_string(f).unwrap().contains("Seccomp:\t2"));
            // SAFETY: plain syscalls on fds and values owned by this test.
            unsafe {
                use std::os::fd::AsRawFd;
                let kvm = std::fs::File::open("/dev/kvm").expect("/dev/kvm (lithe's tests need KVM)");
                assert_eq!(libc::ioctl(kvm.as_raw_fd(), 0xae00, 0), 12, "KVM_GET_API_VERSION passes: {:?}", errno());
                let mut ws = std::mem::zeroed::<libc::winsize>();
                assert_eq!(libc::ioctl(1, libc::TIOCGWINSZ, &mut ws), -1);
                assert_eq!(errno(), Some(libc::EPERM));
                let unix = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                assert!(unix >= 0, "Unix sockets are allowed");
                libc::close(unix);
                assert_eq!(libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0), -1);
                assert_eq!(errno(), Some(libc::EPERM));
                assert_eq!(libc::fork(), -1, "no new processes");
                let sh = c"/bin/sh".as_ptr();
                assert_eq!(libc::execv(sh, [sh, std::ptr::null()].as_ptr()), -1);
                assert_eq!(errno(), Some(libc::EPERM));
                // Signals to this process's threads only (pid 1 is not ours).
                assert_eq!(libc::syscall(libc::SYS_tgkill, 1, 1, 0), -1);
                assert_eq!(errno(), Some(libc::EPERM));
            }
        })
        .join()
        .unwrap();
    }

    #[test]
    fn kvm_run_matches_kvm_bindings() {
        assert_eq!(u64::from(kvm_bindings::KVMIO) << 8 | 0x80, 0xae80);
    }
}
