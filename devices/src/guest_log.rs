//! Logging what a guest does wrong, without letting a guest flood the log.
//!
//! Every guest write to a device register can be bad input, and each one is
//! logged and ignored. A hostile guest makes millions of them a second; one
//! line each would fill the host's disk. [`guest_warn!`] logs the first
//! [`BURST`] lines of each call site per [`WINDOW`], then counts the rest and
//! says how many it dropped when the next window opens.
//!
//! Hand-written (two atomics per call site): the rate-limiting crates we
//! weighed (governor, ratelimit) bring clocks and token buckets shared across
//! threads, more than a lock-free per-site counter on a vCPU's exit path needs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// Lines per call site per window.
pub const BURST: u64 = 10;
/// The window, in seconds.
pub const WINDOW: u64 = 10;

/// One call site's budget: the window it is in and the lines it logged or
/// dropped in that window.
pub struct Limiter {
    /// Window number (seconds since the first guest log / WINDOW) in the
    /// high 32 bits, lines in this window in the low 32.
    state: AtomicU64,
}

impl Limiter {
    pub const fn new() -> Limiter {
        Limiter { state: AtomicU64::new(0) }
    }

    /// Whether to log this line, and how many lines of this site the last
    /// window dropped (to say so once).
    pub fn admit(&self) -> (bool, u64) {
        static EPOCH: OnceLock<Instant> = OnceLock::new();
        let window = EPOCH.get_or_init(Instant::now).elapsed().as_secs() / WINDOW;
        self.admit_at(window)
    }

    fn admit_at(&self, window: u64) -> (bool, u64) {
        let window = window & 0xffff_ffff;
        let mut cur = self.state.load(Ordering::Relaxed);
        loop {
            let (w, n) = (cur >> 32, cur & 0xffff_ffff);
            let (next, dropped) = if w == window {
                (cur + u64::from(n < 0xffff_ffff), 0)
            } else {
                (window << 32 | 1, n.saturating_sub(BURST))
            };
            match self.state.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return (next & 0xffff_ffff <= BURST, dropped),
                Err(actual) => cur = actual,
            }
        }
    }
}

impl Default for Limiter {
    fn default() -> Self {
        Limiter::new()
    }
}

/// `log::warn!` for what a guest did, rate-limited per call site.
#[macro_export]
macro_rules! guest_warn {
    ($($arg:tt)+) => {{
        static LIMITER: $crate::guest_log::Limiter = $crate::guest_log::Limiter::new();
        let (admit, dropped) = LIMITER.admit();
        if dropped > 0 {
            ::log::warn!("({dropped} more like the next line were not logged)");
        }
        if admit {
            ::log::warn!($($arg)+);
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_per_window_then_silence_then_a_count_of_what_was_dropped() {
        let l = Limiter::new();
        let first: Vec<(bool, u64)> = (0..BURST + 5).map(|_| l.admit_at(7)).collect();
        assert!(first[..BURST as usize].iter().all(|&(a, d)| a && d == 0));
        assert!(first[BURST as usize..].iter().all(|&(a, d)| !a && d == 0));
        assert_eq!(l.admit_at(8), (true, 5), "the next window logs again and says 5 were dropped");
        assert_eq!(l.admit_at(9), (true, 0), "nothing dropped in window 8");
    }
}
