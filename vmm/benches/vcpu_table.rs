//! Read-side cost of the vCPU table against the lock-based alternatives:
//! enter a section, walk every present vCPU (or look one up), leave.
//! Uncontended, and while another thread churns (removes and re-adds) one
//! vCPU, paced or as fast as it can.
//!
//! `scripts/bench-table.sh` runs this and prints the tables in docs/vcpu-table.md.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use vmm::cpu::{FenceMode, Reader, VcpuTable};

struct Payload {
    exits: AtomicU64,
}

fn payload() -> Payload {
    Payload { exits: AtomicU64::new(1) }
}

const SIZES: [u32; 5] = [1, 8, 64, 254, 1024];

/// The structures under test, each holding `n` present vCPUs plus one spare
/// id (`n`) for the churning writer.
trait Subject: Send + Sync + 'static {
    fn name(&self) -> String;
    /// Sum over present vCPUs, inside one read-side section / lock.
    fn walk(&self, reader: &mut Option<Reader<Payload>>) -> u64;
    /// One vCPU's counter, inside one read-side section / lock: what device
    /// emulation and interrupt routing do.
    fn lookup(&self, reader: &mut Option<Reader<Payload>>, id: u32) -> u64;
    /// Remove and re-add the spare id once.
    fn churn(&self);
    fn reader(&self) -> Option<Reader<Payload>> {
        None
    }
}

struct Rcu(Arc<VcpuTable<Payload>>, FenceMode);

impl Subject for Rcu {
    fn name(&self) -> String {
        match self.1 {
            FenceMode::SeqCst => "vcpu-table-seqcst",
            FenceMode::MembarrierExpedited => "vcpu-table-membarrier-expedited",
            FenceMode::MembarrierGlobal => "vcpu-table-membarrier-global",
        }
        .into()
    }
    fn walk(&self, reader: &mut Option<Reader<Payload>>) -> u64 {
        let g = reader.as_mut().unwrap().read();
        g.iter().map(|(_, p)| p.exits.load(Ordering::Relaxed)).sum()
    }
    fn lookup(&self, reader: &mut Option<Reader<Payload>>, id: u32) -> u64 {
        let g = reader.as_mut().unwrap().read();
        g.get(id).map_or(0, |p| p.exits.load(Ordering::Relaxed))
    }
    fn churn(&self) {
        let spare = self.0.capacity() - 1;
        let p = self.0.retire(spare, Duration::from_secs(10)).unwrap();
        self.0.publish(spare, p).unwrap();
    }
    fn reader(&self) -> Option<Reader<Payload>> {
        Some(Reader::new(&self.0, "bench"))
    }
}

struct Locked(Mutex<Vec<Option<Payload>>>);

impl Subject for Locked {
    fn name(&self) -> String {
        "mutex-vec".into()
    }
    fn walk(&self, _: &mut Option<Reader<Payload>>) -> u64 {
        let v = self.0.lock().unwrap();
        v.iter().flatten().map(|p| p.exits.load(Ordering::Relaxed)).sum()
    }
    fn lookup(&self, _: &mut Option<Reader<Payload>>, id: u32) -> u64 {
        let v = self.0.lock().unwrap();
        v.get(id as usize).and_then(Option::as_ref).map_or(0, |p| p.exits.load(Ordering::Relaxed))
    }
    fn churn(&self) {
        let mut v = self.0.lock().unwrap();
        let spare = v.len() - 1;
        let p = v[spare].take();
        v[spare] = p;
    }
}

struct RwLocked(RwLock<Vec<Option<Payload>>>);

impl Subject for RwLocked {
    fn name(&self) -> String {
        "rwlock-vec".into()
    }
    fn walk(&self, _: &mut Option<Reader<Payload>>) -> u64 {
        let v = self.0.read().unwrap();
        v.iter().flatten().map(|p| p.exits.load(Ordering::Relaxed)).sum()
    }
    fn lookup(&self, _: &mut Option<Reader<Payload>>, id: u32) -> u64 {
        let v = self.0.read().unwrap();
        v.get(id as usize).and_then(Option::as_ref).map_or(0, |p| p.exits.load(Ordering::Relaxed))
    }
    fn churn(&self) {
        let mut v = self.0.write().unwrap();
        let spare = v.len() - 1;
        let p = v[spare].take();
        v[spare] = p;
    }
}

fn subjects(n: u32) -> Vec<Arc<dyn Subject>> {
    let mut out: Vec<Arc<dyn Subject>> = Vec::new();
    let modes = [FenceMode::SeqCst, FenceMode::MembarrierExpedited, FenceMode::MembarrierGlobal];
    for mode in modes.into_iter().filter(|m| m.is_available()) {
        let t = Arc::new(VcpuTable::with_fence_mode(n + 1, mode));
        for id in 0..=n {
            t.publish(id, payload()).unwrap();
        }
        out.push(Arc::new(Rcu(t, mode)));
    }
    let vec = || (0..=n).map(|_| Some(payload())).collect::<Vec<_>>();
    out.push(Arc::new(Locked(Mutex::new(vec()))));
    out.push(Arc::new(RwLocked(RwLock::new(vec()))));
    out
}

struct Churner {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<u64>>,
}

impl Churner {
    /// Removes and re-adds the spare vCPU in a loop, pausing `pace` between rounds.
    fn start(s: Arc<dyn Subject>, pace: Option<Duration>) -> Churner {
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut rounds = 0;
            while !st.load(Ordering::Relaxed) {
                s.churn();
                rounds += 1;
                if let Some(p) = pace {
                    std::thread::sleep(p);
                }
            }
            rounds
        });
        Churner { stop, thread: Some(thread) }
    }
}

impl Drop for Churner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.take().unwrap().join();
    }
}

/// How hard the writer churns: not at all, one round per 100 µs (still far
/// above any real resize rate), or flat out.
const CHURN: [(&str, Option<Option<Duration>>); 3] =
    [("uncontended", None), ("paced-churn", Some(Some(Duration::from_micros(100)))), ("tight-churn", Some(None))];

fn bench(c: &mut Criterion) {
    for (churn_name, churn) in CHURN {
        for op in ["walk", "lookup"] {
            let mut group = c.benchmark_group(format!("{op}-{churn_name}"));
            group.warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2)).sample_size(50);
            for n in SIZES {
                for s in subjects(n) {
                    let mut reader = s.reader();
                    let _churner = churn.map(|pace| Churner::start(s.clone(), pace));
                    // The looked-up vCPU is a present one in the middle of the table.
                    let id = n / 2;
                    group.bench_with_input(BenchmarkId::new(s.name(), n), &n, |b, _| match op {
                        "walk" => b.iter(|| black_box(s.walk(&mut reader))),
                        _ => b.iter(|| black_box(s.lookup(&mut reader, black_box(id)))),
                    });
                }
            }
            group.finish();
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
