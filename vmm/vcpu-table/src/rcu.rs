//! A small epoch-based RCU domain with synchronous grace periods.
//!
//! Why our own and not a crate: crossbeam-epoch and seize defer reclamation to
//! a later collection, with no bounded, synchronous "wait until every reader
//! that could have seen this is gone" — which is what retiring a vCPU needs
//! (the thread must be joined *now*, and a stuck reader must be reported).
//! liburcu's memb flavour has exactly the shape we want, and it is small.
//!
//! Each registered reader owns a cache-line-sized slot holding 0 when it is
//! outside a read-side section, or the global epoch it saw when it entered.
//! `synchronize()` bumps the epoch and waits until each slot is 0 or holds the
//! new epoch (that reader entered after the bump and cannot have seen the
//! unpublished state).
//!
//! The read side pays one store and one fence. The fence pairs with the
//! writer's fence in a store-buffering pattern: either the writer sees the
//! reader's epoch store and waits for it, or the reader sees the writer's
//! unpublishing store. With the membarrier modes the reader's fence is a
//! compiler barrier only and the writer has the kernel force a full barrier on
//! every thread of the process, as userspace RCU does: with IPIs
//! (`MEMBARRIER_CMD_PRIVATE_EXPEDITED`), or by waiting for the kernel's own
//! RCU grace period (`MEMBARRIER_CMD_GLOBAL`, liburcu's original choice).
//! [`FenceMode`] says which; `docs/vcpu-table.md` measures all three.

use std::time::{Duration, Instant};

use crate::sync::{fence, yield_now, Arc, AtomicU64, CachePadded, Mutex, Ordering};

/// How read-side sections are ordered against grace periods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FenceMode {
    /// A `SeqCst` fence on both sides. Readers pay the fence; no syscalls.
    SeqCst,
    /// Compiler barrier on the read side; the writer calls
    /// `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`, which IPIs every CPU
    /// running a thread of this process (vCPU threads in `KVM_RUN` included):
    /// grace periods of microseconds, paid for by interrupting readers.
    MembarrierExpedited,
    /// Compiler barrier on the read side; the writer calls
    /// `membarrier(MEMBARRIER_CMD_GLOBAL)`, which waits for a kernel RCU grace
    /// period: no IPIs, no thread disturbed, but milliseconds per grace period.
    MembarrierGlobal,
}

impl FenceMode {
    /// The mode lithe uses: the global membarrier where the kernel offers it
    /// (it does not with `nohz_full`), else the expedited one, else fences.
    /// Retiring a vCPU follows a guest eject that takes about a second, so a
    /// few milliseconds of grace period cost nothing, while readers — and
    /// running vCPUs — are never interrupted; numbers in docs/vcpu-table.md.
    pub fn best_available() -> FenceMode {
        [FenceMode::MembarrierGlobal, FenceMode::MembarrierExpedited]
            .into_iter()
            .find(|m| m.is_available())
            .unwrap_or(FenceMode::SeqCst)
    }

    /// Whether this process can use the mode (registering for it if needed).
    pub fn is_available(self) -> bool {
        match self {
            FenceMode::SeqCst => true,
            FenceMode::MembarrierExpedited => membarrier::register_expedited(),
            FenceMode::MembarrierGlobal => membarrier::global_supported(),
        }
    }

    /// Whether the read side needs a real fence (else a compiler barrier does).
    fn reader_fences(self) -> bool {
        self == FenceMode::SeqCst
    }
}

/// A reader that did not leave its read-side section within the bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StuckReaders {
    pub waited: Duration,
    pub readers: Vec<String>,
}

#[repr(align(64))]
struct ReaderSlot {
    /// 0: quiescent; otherwise the epoch observed when the section began.
    epoch: AtomicU64,
    name: String,
}

pub(crate) struct Rcu {
    /// What every read-side entry loads, on its own line: the registry mutex
    /// below is written on every grace period and must not share it.
    hot: CachePadded<Hot>,
    readers: CachePadded<Mutex<Vec<Arc<ReaderSlot>>>>,
}

struct Hot {
    epoch: AtomicU64,
    mode: FenceMode,
}

impl Rcu {
    pub(crate) fn new(mode: FenceMode) -> Self {
        // Loom and Miri do not model membarrier(): they always use fences.
        let mode = if cfg!(any(loom, miri)) { FenceMode::SeqCst } else { mode };
        assert!(mode.is_available(), "{mode:?} is unavailable on this kernel; use FenceMode::best_available()");
        Rcu { hot: CachePadded(Hot { epoch: AtomicU64::new(1), mode }), readers: CachePadded(Mutex::new(Vec::new())) }
    }

    pub(crate) fn mode(&self) -> FenceMode {
        self.hot.mode
    }

    pub(crate) fn register(&self, name: &str) -> ReaderHandle {
        let slot = Arc::new(ReaderSlot { epoch: AtomicU64::new(0), name: name.to_string() });
        self.readers.lock().unwrap().push(slot.clone());
        ReaderHandle { slot }
    }

    pub(crate) fn unregister(&self, handle: &ReaderHandle) {
        let mut readers = self.readers.lock().unwrap();
        readers.retain(|s| !Arc::ptr_eq(s, &handle.slot));
    }

    /// Enters a read-side section for `handle`. Sections do not nest.
    #[inline]
    pub(crate) fn read_lock(&self, handle: &ReaderHandle) {
        let e = self.hot.epoch.load(Ordering::Acquire);
        // Release: a writer that sees this (new) epoch skips the wait, so this
        // store must also publish the end of this reader's previous section.
        handle.slot.epoch.store(e, Ordering::Release);
        if self.hot.mode.reader_fences() {
            fence(Ordering::SeqCst);
        } else {
            std::sync::atomic::compiler_fence(Ordering::SeqCst);
        }
    }

    #[inline]
    pub(crate) fn read_unlock(&self, handle: &ReaderHandle) {
        handle.slot.epoch.store(0, Ordering::Release);
    }

    /// Waits until every read-side section that began before this call has
    /// ended. The caller's unpublishing store must come before the call.
    /// `limit` bounds the wait (ignored under loom, which has no clock).
    pub(crate) fn synchronize(&self, limit: Duration) -> Result<(), StuckReaders> {
        let target = self.hot.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        self.heavy_fence();
        let readers: Vec<Arc<ReaderSlot>> = self.readers.lock().unwrap().clone();
        let start = Instant::now();
        let mut spins = 0u32;
        for reader in &readers {
            loop {
                let e = reader.epoch.load(Ordering::Acquire);
                if e == 0 || e >= target {
                    break;
                }
                if !cfg!(loom) && start.elapsed() > limit {
                    let stuck = readers
                        .iter()
                        .filter(|r| {
                            let e = r.epoch.load(Ordering::Acquire);
                            e != 0 && e < target
                        })
                        .map(|r| r.name.clone())
                        .collect();
                    return Err(StuckReaders { waited: start.elapsed(), readers: stuck });
                }
                backoff(&mut spins);
            }
        }
        Ok(())
    }

    /// The writer's half of the store-buffering pattern: after it, every
    /// reader's entry store made before it is visible, or that reader sees
    /// the writer's unpublishing store.
    fn heavy_fence(&self) {
        let ok = match self.hot.mode {
            FenceMode::SeqCst => {
                fence(Ordering::SeqCst);
                true
            }
            FenceMode::MembarrierExpedited => membarrier::expedited(),
            FenceMode::MembarrierGlobal => membarrier::global(),
        };
        // Both commands were checked available when the domain was built; the
        // kernel does not withdraw them. If it ever did, readers' compiler
        // barriers would no longer be enough: stop rather than free too early.
        assert!(ok, "membarrier() failed in {:?} mode after it was found available", self.hot.mode);
    }
}

/// Waiting for a reader: a few quick re-checks, then sleep. Polling a
/// reader's slot steals its cache line on every poll and slows the very
/// section we wait for; grace-period latency does not matter (a vCPU retire
/// then joins a thread), reader speed does.
fn backoff(spins: &mut u32) {
    *spins += 1;
    if cfg!(loom) || *spins < 4 {
        yield_now();
    } else {
        std::thread::sleep(Duration::from_micros(20));
    }
}

/// A registered reader's slot.
pub(crate) struct ReaderHandle {
    slot: Arc<ReaderSlot>,
}

#[cfg(not(any(loom, miri)))]
mod membarrier {
    use std::sync::OnceLock;

    const MEMBARRIER_CMD_QUERY: libc::c_long = 0;
    const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1 << 0;
    const MEMBARRIER_CMD_PRIVATE_EXPEDITED: libc::c_long = 1 << 3;
    const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_long = 1 << 4;

    fn call(cmd: libc::c_long) -> libc::c_long {
        // SAFETY: membarrier takes integer arguments and touches no memory of ours.
        unsafe { libc::syscall(libc::SYS_membarrier, cmd, 0 as libc::c_long, 0 as libc::c_long) }
    }

    /// The commands the kernel supports (0 if it has no membarrier at all).
    fn supported() -> libc::c_long {
        static SUPPORTED: OnceLock<libc::c_long> = OnceLock::new();
        *SUPPORTED.get_or_init(|| call(MEMBARRIER_CMD_QUERY).max(0))
    }

    /// The kernel leaves GLOBAL out of the query's answer under `nohz_full`.
    pub(super) fn global_supported() -> bool {
        supported() & MEMBARRIER_CMD_GLOBAL != 0
    }

    /// Registers the process for private expedited barriers, once.
    pub(super) fn register_expedited() -> bool {
        static REGISTERED: OnceLock<bool> = OnceLock::new();
        *REGISTERED.get_or_init(|| {
            supported() & MEMBARRIER_CMD_PRIVATE_EXPEDITED != 0 && call(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED) == 0
        })
    }

    pub(super) fn expedited() -> bool {
        call(MEMBARRIER_CMD_PRIVATE_EXPEDITED) == 0
    }

    pub(super) fn global() -> bool {
        call(MEMBARRIER_CMD_GLOBAL) == 0
    }
}

#[cfg(any(loom, miri))]
mod membarrier {
    pub(super) fn global_supported() -> bool {
        false
    }
    pub(super) fn register_expedited() -> bool {
        false
    }
    pub(super) fn expedited() -> bool {
        false
    }
    pub(super) fn global() -> bool {
        false
    }
}
