//! The vCPU table: a fixed set of slots, one per possible vCPU id, and a
//! presence bitmap with RCU semantics on each bit.
//!
//! * Readers (API, device emulation, stats, interrupt routing) never lock and
//!   never wait: [`Reader::read`] (on a [`Reader`] registered with [`Reader::new`]) opens a read-side section; inside it they walk
//!   set bits or test one, and may use the slot of any bit they saw set until
//!   the [`ReadGuard`] drops.
//! * [`VcpuTable::publish`] fills a slot completely, then sets its bit with
//!   release ordering: a reader that sees the bit sees the initialised slot.
//! * [`VcpuTable::retire`] clears the bit, waits for a grace period — every
//!   section that began before the clear has ended — and only then hands the
//!   slot's value back, so the caller can stop and join the vCPU thread
//!   knowing nobody still looks at it.
//!
//! Besides presence every slot carries hotplug bookkeeping (its lifecycle
//! [`State`] word and the guest's last `_OST` report) in plain atomics, readable with no section
//! at all, even for vCPUs that are not present.
//!
//! Who calls what: any thread may create readers and read. `publish` and
//! `retire` are the write side; they serialise on an internal mutex that
//! readers never touch, and in lithe only the vCPU manager calls them.

use std::fmt;
use std::time::Duration;

use crate::lifecycle::{State, StateCell};
use crate::rcu::{FenceMode, Rcu, ReaderHandle, StuckReaders};
use crate::sync::{Arc, AtomicU32, AtomicU64, CachePadded, Mutex, Ordering, UnsafeCell};

const WORD_BITS: usize = 64;

/// The guest's last `_OST` report for a vCPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct OstReport {
    pub event: u32,
    pub status: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TableError {
    #[error("vCPU id {id} is out of range (table holds {capacity})")]
    OutOfRange { id: u32, capacity: u32 },
    #[error("vCPU {id} is already present")]
    AlreadyPresent { id: u32 },
    #[error("vCPU {id} is not present")]
    NotPresent { id: u32 },
    #[error("vCPU {id} is still being retired (an earlier grace period did not complete)")]
    RetirePending { id: u32 },
    #[error("grace period for vCPU {id} did not end after {waited:?}; readers still inside: {readers:?}")]
    GracePeriodTimeout { id: u32, waited: Duration, readers: Vec<String> },
}

struct Slot<T> {
    value: UnsafeCell<Option<T>>,
}

impl<T> Slot<T> {
    /// The value, for a reader that saw this slot's bit set.
    ///
    /// # Safety
    /// The caller saw the bit set (Acquire, pairing with publish's Release)
    /// inside a read-side section that outlives the borrow: the slot is
    /// initialised, and retire will not take the value before that section ends.
    #[inline(always)]
    unsafe fn seen(&self) -> Option<&T> {
        // SAFETY: per this function's contract, no writer touches the value now.
        self.value.with(|v| unsafe { (*v).as_ref() })
    }
}

/// Hotplug bookkeeping of one id, kept apart from the slots so that its
/// writes (from vCPU threads, in MMIO exits) do not touch readers' lines.
struct Meta {
    /// [`State::encode`]d lifecycle state.
    state: AtomicU32,
    /// `1 << 63 | event << 32 | status`, or 0 when no report came yet.
    ost: AtomicU64,
}

/// The lock-free vCPU table. Share it in an `Arc`.
pub struct VcpuTable<T> {
    // Read side: loaded by every section, written only by publish/retire.
    slots: Box<[Slot<T>]>,
    meta: Box<[Meta]>,
    /// Presence bitmap, in cache lines of [`LINE_WORDS`] words: as many
    /// as the capacity needs, none shared with other data.
    present: Box<[CachePadded<[AtomicU64; LINE_WORDS]>]>,
    capacity: u32,
    rcu: Rcu,
    // Write side, on a line of its own so its churn does not hit readers.
    writer: CachePadded<Writer>,
}

struct Writer {
    lock: Mutex<()>,
    count: AtomicU32,
}

/// Capacity limit: 4096 vCPUs, as many as lithe's CPU hotplug controller
/// has bits for (lithe checks the two agree when it compiles). Tables are
/// sized by their own capacity, so this costs small VMs nothing.
pub const MAX_CAPACITY: u32 = 4096;
/// Bitmap words per cache line (512 vCPUs).
const LINE_WORDS: usize = 8;

// SAFETY: values are written only by the (mutex-serialised) write side while
// their bit is clear and no reader can reach them (publish before setting the
// bit; retire after a grace period), and are only shared as `&T` with readers
// on any thread — hence `T: Sync` for sharing, `T: Send` for moving values in
// and out across threads.
unsafe impl<T: Send + Sync> Sync for VcpuTable<T> {}
// SAFETY: as above; the table owns its values.
unsafe impl<T: Send> Send for VcpuTable<T> {}

impl<T> fmt::Debug for VcpuTable<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VcpuTable").field("capacity", &self.capacity()).field("present", &self.count()).finish()
    }
}

fn split(id: u32) -> (usize, u64) {
    (id as usize / WORD_BITS, 1u64 << (id as usize % WORD_BITS))
}

impl<T> VcpuTable<T> {
    /// A table for vCPU ids `0..capacity`, using the cheapest read-side fence available.
    pub fn new(capacity: u32) -> Self {
        Self::with_fence_mode(capacity, FenceMode::best_available())
    }

    /// Panics if `capacity` exceeds [`MAX_CAPACITY`].
    pub fn with_fence_mode(capacity: u32, mode: FenceMode) -> Self {
        assert!(capacity <= MAX_CAPACITY, "vCPU table capacity {capacity} exceeds {MAX_CAPACITY}");
        let slots = (0..capacity).map(|_| Slot { value: UnsafeCell::new(None) }).collect();
        let meta = (0..capacity).map(|_| Meta { state: AtomicU32::new(0), ost: AtomicU64::new(0) }).collect();
        VcpuTable {
            slots,
            meta,
            present: (0..(capacity as usize).div_ceil(WORD_BITS * LINE_WORDS).max(1))
                .map(|_| CachePadded(std::array::from_fn(|_| AtomicU64::new(0))))
                .collect(),
            capacity,
            rcu: Rcu::new(mode),
            writer: CachePadded(Writer { lock: Mutex::new(()), count: AtomicU32::new(0) }),
        }
    }

    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// The bitmap words that can hold a bit: a walk of a small table loads one word, not eight.
    #[inline]
    fn words(&self) -> Words<'_> {
        Words { lines: &self.present, len: (self.capacity as usize).div_ceil(WORD_BITS) }
    }

    #[inline]
    fn word(&self, w: usize) -> &AtomicU64 {
        &self.present[w / LINE_WORDS].0[w % LINE_WORDS]
    }

    pub fn fence_mode(&self) -> FenceMode {
        self.rcu.mode()
    }

    /// How many vCPUs are present (a snapshot).
    pub fn count(&self) -> u32 {
        self.writer.count.load(Ordering::Acquire)
    }

    fn meta(&self, id: u32) -> Result<&Meta, TableError> {
        self.meta.get(id as usize).ok_or(TableError::OutOfRange { id, capacity: self.capacity() })
    }

    fn slot(&self, id: u32) -> Result<&Slot<T>, TableError> {
        self.slots.get(id as usize).ok_or(TableError::OutOfRange { id, capacity: self.capacity() })
    }

    /// Lifecycle state of `id` (absent for ids out of range). Lock-free.
    pub fn state(&self, id: u32) -> State {
        self.meta.get(id as usize).map_or(State::ABSENT, |m| State::decode(m.state.load(Ordering::Acquire)))
    }

    /// Every id's lifecycle state, in id order (a snapshot, one load each).
    pub fn states(&self) -> Vec<State> {
        (0..self.capacity).map(|id| self.state(id)).collect()
    }

    /// Sets the lifecycle state of `id` outright (boot vCPUs; tests). Every
    /// other change goes through [`lifecycle::apply`](crate::lifecycle::apply).
    pub fn set_state(&self, id: u32, state: State) -> Result<(), TableError> {
        self.meta(id)?.state.store(state.encode(), Ordering::Release);
        Ok(())
    }

    /// The guest's last `_OST` report for `id`.
    pub fn ost(&self, id: u32) -> Option<OstReport> {
        let v = self.meta.get(id as usize)?.ost.load(Ordering::Acquire);
        (v >> 63 == 1).then_some(OstReport { event: ((v >> 32) & 0x7fff_ffff) as u32, status: v as u32 })
    }

    pub fn set_ost(&self, id: u32, report: OstReport) -> Result<(), TableError> {
        let v = 1u64 << 63 | u64::from(report.event & 0x7fff_ffff) << 32 | u64::from(report.status);
        self.meta(id)?.ost.store(v, Ordering::Release);
        Ok(())
    }

    /// Publishes `value` as vCPU `id`: the slot is filled first, then the bit set.
    pub fn publish(&self, id: u32, value: T) -> Result<(), TableError> {
        let slot = self.slot(id)?;
        let _w = self.writer.lock.lock().unwrap();
        let (word, bit) = split(id);
        if self.word(word).load(Ordering::Relaxed) & bit != 0 {
            return Err(TableError::AlreadyPresent { id });
        }
        // SAFETY: the bit is clear and the writer lock is held. A value can only
        // be left here by a retire whose grace period timed out (readers may
        // still hold it): we refuse rather than overwrite it.
        let occupied = slot.value.with(|v| unsafe { (*v).is_some() });
        if occupied {
            return Err(TableError::RetirePending { id });
        }
        // SAFETY: no reader can reach the slot: its bit is clear, and any reader
        // that saw it set before the last retire left before that retire
        // returned the old value (grace period).
        slot.value.with_mut(|v| unsafe { *v = Some(value) });
        self.writer.count.fetch_add(1, Ordering::AcqRel);
        // Release: the slot's contents happen-before any Acquire load seeing the bit.
        self.word(word).fetch_or(bit, Ordering::Release);
        Ok(())
    }

    /// Unpublishes vCPU `id`, waits for a grace period of at most `limit`, and
    /// returns the slot's value. On timeout the bit stays clear, the value
    /// stays in the slot, and a later `retire(id)` finishes the job.
    pub fn retire(&self, id: u32, limit: Duration) -> Result<T, TableError> {
        let slot = self.slot(id)?;
        let _w = self.writer.lock.lock().unwrap();
        let (word, bit) = split(id);
        // SAFETY: the writer lock is held; we only test for presence of a value.
        let occupied = slot.value.with(|v| unsafe { (*v).is_some() });
        if !occupied {
            return Err(TableError::NotPresent { id });
        }
        if self.word(word).load(Ordering::Relaxed) & bit != 0 {
            // SeqCst: this store must be ordered before synchronize()'s epoch
            // bump and fence, which readers' fences pair with.
            self.word(word).fetch_and(!bit, Ordering::SeqCst);
            self.writer.count.fetch_sub(1, Ordering::AcqRel);
        }
        self.rcu.synchronize(limit).map_err(|StuckReaders { waited, readers }| TableError::GracePeriodTimeout {
            id,
            waited,
            readers,
        })?;
        // SAFETY: the bit is clear and every reader that could have seen it set
        // has left its section: nobody else refers to the value now.
        let value = slot.value.with_mut(|v| unsafe { (*v).take() });
        Ok(value.expect("slot checked occupied under the writer lock"))
    }
}

impl<T> StateCell for VcpuTable<T> {
    fn load(&self, id: u32) -> Option<u32> {
        self.meta.get(id as usize).map(|m| m.state.load(Ordering::Acquire))
    }

    fn compare_exchange(&self, id: u32, old: u32, new: u32) -> Result<(), u32> {
        let m = self.meta.get(id as usize).ok_or(old)?;
        m.state.compare_exchange(old, new, Ordering::AcqRel, Ordering::Acquire).map(|_| ())
    }
}

/// A registered reader, owned by one thread at a time.
pub struct Reader<T> {
    handle: ReaderHandle,
    table: Arc<VcpuTable<T>>,
}

impl<T> Reader<T> {
    /// Registers a reader of `table`. `name` shows up in grace-period timeout errors.
    pub fn new(table: &Arc<VcpuTable<T>>, name: &str) -> Self {
        Reader { handle: table.rcu.register(name), table: table.clone() }
    }

    /// Opens a read-side section. Borrowing `self` mutably makes sections of
    /// one reader impossible to nest.
    #[inline]
    pub fn read(&mut self) -> ReadGuard<'_, T> {
        self.table.rcu.read_lock(&self.handle);
        ReadGuard { reader: self }
    }

    pub fn table(&self) -> &Arc<VcpuTable<T>> {
        &self.table
    }
}

impl<T> Drop for Reader<T> {
    fn drop(&mut self) {
        self.table.rcu.unregister(&self.handle);
    }
}

/// A read-side section. Values it hands out live as long as it does.
pub struct ReadGuard<'r, T> {
    reader: &'r mut Reader<T>,
}

impl<'r, T> ReadGuard<'r, T> {
    fn table(&self) -> &VcpuTable<T> {
        &self.reader.table
    }

    /// The slot of `id` if its bit is set (Acquire, pairing with publish's Release).
    #[inline]
    fn visible(&self, id: u32) -> Option<&Slot<T>> {
        let table = self.table();
        let slot = table.slots.get(id as usize)?;
        let (word, bit) = split(id);
        (table.word(word).load(Ordering::Acquire) & bit != 0).then_some(slot)
    }

    /// The value of vCPU `id` if its bit is set.
    #[inline]
    pub fn get(&self, id: u32) -> Option<&T> {
        let slot = self.visible(id)?;
        // SAFETY: we saw the bit set inside the section this guard holds open.
        unsafe { slot.seen() }
    }

    /// Runs `f` on the value of vCPU `id` if its bit is set. Same as `get`, but
    /// the access is scoped, which lets loom track it for the whole call.
    #[inline]
    pub fn with_value<R>(&self, id: u32, f: impl FnOnce(&T) -> R) -> Option<R> {
        // SAFETY: as in `get`.
        self.visible(id)?.value.with(|v| unsafe { (*v).as_ref().map(f) })
    }

    /// Whether vCPU `id` is present.
    #[inline]
    pub fn contains(&self, id: u32) -> bool {
        self.visible(id).is_some()
    }

    /// Present vCPUs in id order. Each bitmap word is loaded once.
    #[inline]
    pub fn iter(&self) -> Iter<'_, T> {
        let table = self.table();
        Iter { slots: &table.slots, words: table.words(), next_word: 0, base: 0, bits: 0 }
    }
}

impl<T> Drop for ReadGuard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        self.reader.table.rcu.read_unlock(&self.reader.handle);
    }
}

/// The presence bitmap's words in use, across its cache lines.
#[derive(Clone, Copy)]
struct Words<'g> {
    lines: &'g [CachePadded<[AtomicU64; LINE_WORDS]>],
    len: usize,
}

impl<'g> Words<'g> {
    #[inline]
    fn get(&self, w: usize) -> Option<&'g AtomicU64> {
        if w < self.len {
            Some(&self.lines[w / LINE_WORDS].0[w % LINE_WORDS])
        } else {
            None
        }
    }
}

/// Iterator over `(id, &value)` of present vCPUs.
pub struct Iter<'g, T> {
    // The slices themselves, not the table: their pointers and lengths then
    // live in registers instead of being re-loaded for every element.
    slots: &'g [Slot<T>],
    words: Words<'g>,
    /// Index of the next bitmap word to load.
    next_word: usize,
    /// First id of the word `bits` came from.
    base: usize,
    /// Bits of the current word not yet visited.
    bits: u64,
}

impl<'g, T> Iter<'g, T> {
    /// The value behind a bit seen set.
    #[inline]
    fn value(&self, id: usize) -> Option<&'g T> {
        let slot = self.slots.get(id)?;
        // SAFETY: the bit was seen set inside the section this iterator borrows.
        unsafe { slot.seen() }
    }
}

impl<'g, T> Iterator for Iter<'g, T> {
    type Item = (u32, &'g T);

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            while self.bits != 0 {
                let id = self.base + self.bits.trailing_zeros() as usize;
                self.bits &= self.bits - 1;
                if let Some(v) = self.value(id) {
                    return Some((id as u32, v));
                }
            }
            self.bits = self.words.get(self.next_word)?.load(Ordering::Acquire);
            self.base = self.next_word * WORD_BITS;
            self.next_word += 1;
        }
    }

    /// Internal iteration (`sum`, `for_each`, `count`, ... use it): each run
    /// of consecutive set bits is walked as a dense run of slots, which the
    /// compiler unrolls like a plain slice scan, instead of bit by bit.
    /// Present ids are mostly one run (`0..n`), so a full walk costs about
    /// what a `Vec` scan does.
    #[inline]
    fn fold<B, F>(mut self, init: B, mut f: F) -> B
    where
        F: FnMut(B, Self::Item) -> B,
    {
        let mut acc = init;
        loop {
            if self.bits == u64::MAX {
                // The common case for big tables gets a constant-length loop.
                if let Some(run) = self.slots.get(self.base..self.base + WORD_BITS) {
                    acc = fold_run(run, self.base, acc, &mut f);
                    self.bits = 0;
                }
            }
            while self.bits != 0 {
                let start = self.bits.trailing_zeros() as usize;
                if self.bits & (2 << start) == 0 {
                    // A lone bit: no run to set up.
                    self.bits &= self.bits - 1;
                    if let Some(v) = self.value(self.base + start) {
                        acc = f(acc, ((self.base + start) as u32, v));
                    }
                    continue;
                }
                let len = (self.bits >> start).trailing_ones() as usize;
                self.bits &= !(u64::MAX >> (WORD_BITS - len) << start);
                let first = self.base + start;
                // Bits past the last slot are never set; `get` keeps that a check, not a promise.
                acc = fold_run(self.slots.get(first..first + len).unwrap_or_default(), first, acc, &mut f);
            }
            let Some(word) = self.words.get(self.next_word) else { return acc };
            self.bits = word.load(Ordering::Acquire);
            self.base = self.next_word * WORD_BITS;
            self.next_word += 1;
        }
    }
}

/// Folds over `run`, slots whose bits were all seen set, the first being id `first`.
#[inline(always)]
fn fold_run<'g, T, B>(run: &'g [Slot<T>], first: usize, mut acc: B, f: &mut impl FnMut(B, (u32, &'g T)) -> B) -> B {
    for (i, slot) in run.iter().enumerate() {
        // SAFETY: every bit of this run was seen set inside the read-side
        // section that the iterator borrows.
        if let Some(v) = unsafe { slot.seen() } {
            acc = f(acc, ((first + i) as u32, v));
        }
    }
    acc
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::lifecycle::{self, Event, Phase};
    use std::sync::atomic::AtomicBool;

    /// Every mode this kernel offers.
    pub(crate) fn modes() -> Vec<FenceMode> {
        [FenceMode::SeqCst, FenceMode::MembarrierExpedited, FenceMode::MembarrierGlobal]
            .into_iter()
            .filter(|m| m.is_available())
            .collect()
    }

    #[test]
    fn publish_then_read_then_retire() {
        for mode in modes() {
            let t = Arc::new(VcpuTable::with_fence_mode(130, mode));
            let mut r = Reader::new(&t, "test");
            t.publish(0, "zero".to_string()).unwrap();
            t.publish(64, "sixty-four".to_string()).unwrap();
            t.publish(129, "last".to_string()).unwrap();
            assert_eq!(t.count(), 3);
            {
                let g = r.read();
                let seen: Vec<_> = g.iter().map(|(id, v)| (id, v.clone())).collect();
                assert_eq!(seen, vec![(0, "zero".into()), (64, "sixty-four".into()), (129, "last".into())]);
                assert_eq!(g.get(64).map(String::as_str), Some("sixty-four"));
                assert!(g.contains(129));
                assert!(!g.contains(1));
                assert_eq!(g.get(1), None);
                assert_eq!(g.get(5000), None);
                assert_eq!(g.with_value(0, |v| v.len()), Some(4));
            }
            assert_eq!(t.retire(64, Duration::from_secs(1)).unwrap(), "sixty-four");
            assert_eq!(t.count(), 2);
            let g = r.read();
            assert_eq!(g.iter().map(|(id, _)| id).collect::<Vec<_>>(), vec![0, 129]);
        }
    }

    /// `next()` walks bit by bit, `fold()` run by run: both must yield
    /// exactly the present ids, in order, for any pattern — lone bits, runs
    /// crossing word boundaries, full words, bit 63, a last partial word —
    /// and `fold` must pick up where a partly consumed iterator stopped.
    #[test]
    fn next_and_fold_agree_on_every_pattern() {
        let capacity = if cfg!(miri) { 130 } else { MAX_CAPACITY };
        let mut patterns: Vec<Vec<u32>> = vec![
            vec![],
            (0..capacity).collect(),
            (0..64).collect(),
            (60..70).collect(),
            vec![63, 64],
            vec![0, 2, 4, 63, 127, capacity - 1],
            (1..capacity).step_by(2).collect(),
            (0..capacity).filter(|i| i % 64 != 5).collect(),
        ];
        // A fixed pseudo-random sweep (xorshift), so failures reproduce.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..if cfg!(miri) { 4 } else { 200 } {
            let density = x % 5;
            patterns.push(
                (0..capacity)
                    .filter(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x % 5 < density
                    })
                    .collect(),
            );
        }
        for ids in patterns {
            let t = Arc::new(VcpuTable::with_fence_mode(capacity, FenceMode::SeqCst));
            for &id in &ids {
                t.publish(id, id * 10).unwrap();
            }
            let mut r = Reader::new(&t, "test");
            let g = r.read();
            let expected: Vec<(u32, u32)> = ids.iter().map(|&id| (id, id * 10)).collect();
            let by_next: Vec<(u32, u32)> = g.iter().map(|(id, v)| (id, *v)).collect();
            let by_fold = g.iter().fold(Vec::new(), |mut out, (id, v)| {
                out.push((id, *v));
                out
            });
            assert_eq!(by_next, expected, "next() over {ids:?}");
            assert_eq!(by_fold, expected, "fold() over {ids:?}");
            for skip in [1, 3, 64, 70] {
                let mut it = g.iter();
                let head: Vec<(u32, u32)> = it.by_ref().take(skip).map(|(id, v)| (id, *v)).collect();
                let tail: Vec<(u32, u32)> = it.map(|(id, v)| (id, *v)).fold(Vec::new(), |mut out, e| {
                    out.push(e);
                    out
                });
                assert_eq!([head, tail].concat(), expected, "next() x{skip}, then fold() over {ids:?}");
            }
        }
    }

    #[test]
    fn errors() {
        let t = Arc::new(VcpuTable::<u32>::new(4));
        assert_eq!(t.publish(4, 1), Err(TableError::OutOfRange { id: 4, capacity: 4 }));
        assert_eq!(t.retire(9, Duration::ZERO), Err(TableError::OutOfRange { id: 9, capacity: 4 }));
        assert_eq!(t.retire(1, Duration::ZERO), Err(TableError::NotPresent { id: 1 }));
        t.publish(1, 1).unwrap();
        assert_eq!(t.publish(1, 2), Err(TableError::AlreadyPresent { id: 1 }));
        assert_eq!(t.set_state(7, State::new(Phase::Running)), Err(TableError::OutOfRange { id: 7, capacity: 4 }));
        assert!(t.set_ost(7, OstReport { event: 0, status: 0 }).is_err());
    }

    #[test]
    fn state_and_ost_are_readable_without_a_section() {
        let t = VcpuTable::<()>::new(2);
        assert_eq!(t.state(1), State::ABSENT);
        assert_eq!(t.state(99), State::ABSENT);
        t.set_state(1, State::new(Phase::Adding)).unwrap();
        assert!(lifecycle::apply(&t, 1, Event::AddAcked).is_some());
        assert!(lifecycle::apply(&t, 1, Event::AddAcked).is_none());
        assert_eq!(t.state(1), State::new(Phase::Acknowledged));
        assert_eq!(t.ost(1), None);
        t.set_ost(1, OstReport { event: 0x103, status: 0x80 }).unwrap();
        assert_eq!(t.ost(1), Some(OstReport { event: 0x103, status: 0x80 }));
        assert_eq!(t.ost(5), None);
    }

    #[test]
    fn retire_waits_for_a_reader_that_saw_the_bit() {
        let t = Arc::new(VcpuTable::new(2));
        t.publish(1, 11u32).unwrap();
        let entered = Arc::new(AtomicBool::new(false));
        let release = Arc::new(AtomicBool::new(false));
        let reader = {
            let (t, entered, release) = (t.clone(), entered.clone(), release.clone());
            std::thread::spawn(move || {
                let mut r = Reader::new(&t, "slow-reader");
                let g = r.read();
                let v = *g.get(1).unwrap();
                entered.store(true, Ordering::SeqCst);
                while !release.load(Ordering::SeqCst) {
                    std::thread::yield_now();
                }
                v
            })
        };
        while !entered.load(Ordering::SeqCst) {
            std::thread::yield_now();
        }
        // The reader is inside its section: a short bound times out and names it.
        let err = t.retire(1, Duration::from_millis(20)).unwrap_err();
        match err {
            TableError::GracePeriodTimeout { id: 1, readers, .. } => {
                assert_eq!(readers, vec!["slow-reader"])
            }
            e => panic!("unexpected {e:?}"),
        }
        // The bit is gone, the value is not; publishing the id again is refused.
        assert!(!Reader::new(&t, "probe").read().contains(1));
        assert_eq!(t.publish(1, 12), Err(TableError::RetirePending { id: 1 }));
        release.store(true, Ordering::SeqCst);
        assert_eq!(t.retire(1, Duration::from_secs(10)).unwrap(), 11);
        assert_eq!(reader.join().unwrap(), 11);
        t.publish(1, 12).unwrap();
    }

    #[test]
    fn readers_entering_after_the_clear_do_not_delay_retire() {
        let t = Arc::new(VcpuTable::new(1));
        t.publish(0, 0u8).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let churn = {
            let (t, stop) = (t.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut r = Reader::new(&t, "churn");
                while !stop.load(Ordering::Relaxed) {
                    let g = r.read();
                    std::hint::black_box(g.get(0));
                }
            })
        };
        for i in 0..200u8 {
            assert_eq!(t.retire(0, Duration::from_secs(10)).unwrap(), i);
            t.publish(0, i.wrapping_add(1)).unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        churn.join().unwrap();
    }

    #[test]
    fn dropping_a_reader_unregisters_it() {
        let t = Arc::new(VcpuTable::new(1));
        t.publish(0, ()).unwrap();
        let mut r = Reader::new(&t, "gone");
        let g = r.read();
        std::mem::forget(g); // leave the section open, then drop the reader
        drop(r);
        t.retire(0, Duration::from_millis(100)).unwrap();
    }
}
