//! Stress: reader threads walk the table while a writer publishes and retires
//! vCPUs thousands of times. Payloads carry a canary that teardown poisons; a
//! reader that ever sees a poisoned or torn payload fails the test. Every
//! payload ever created must be dropped exactly once.
#![cfg(not(loom))]

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use vcpu_table::{FenceMode, Reader, VcpuTable};

const ALIVE: u64 = 0xA11C_E0F0_A11C_E0F0;
const DEAD: u64 = 0xDEAD_DEAD_DEAD_DEAD;

struct Payload {
    id: u32,
    canary: AtomicU64,
    drops: Arc<AtomicUsize>,
}

impl Drop for Payload {
    fn drop(&mut self) {
        self.drops.fetch_add(1, Ordering::SeqCst);
    }
}

fn stress(mode: FenceMode, capacity: u32, rounds: usize, readers: usize) {
    let table = Arc::new(VcpuTable::<Box<Payload>>::with_fence_mode(capacity, mode));
    let drops = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    // Sections each reader completed that saw at least one vCPU.
    let busy: Arc<Vec<AtomicUsize>> = Arc::new((0..readers).map(|_| AtomicUsize::new(0)).collect());
    // Readers register before the writer starts, so every grace period counts
    // them. On a loaded machine they may still not be scheduled while the
    // writer runs: the writer goes on past its rounds until each reader has
    // walked the table many times (see `MIN_SECTIONS`).
    let started = Arc::new(Barrier::new(readers + 1));
    let handles: Vec<_> = (0..readers)
        .map(|i| {
            let (stop, busy, started) = (stop.clone(), busy.clone(), started.clone());
            let mut r = Reader::new(&table, &format!("stress-reader-{i}"));
            std::thread::spawn(move || {
                started.wait();
                let check = |id: u32, p: &Payload| {
                    assert_eq!(p.id, id, "slot {id} holds payload of {}", p.id);
                    assert_eq!(p.canary.load(Ordering::Relaxed), ALIVE, "reader saw a torn-down vCPU {id}");
                };
                while !stop.load(Ordering::Relaxed) {
                    let g = r.read();
                    let mut seen = 0usize;
                    // Even readers walk bit by bit (`next`), odd ones run by run (`fold`).
                    if i % 2 == 0 {
                        for (id, p) in g.iter() {
                            check(id, p);
                            seen += 1;
                        }
                    } else {
                        g.iter().for_each(|(id, p)| {
                            check(id, p);
                            seen += 1;
                        });
                    }
                    if seen > 0 {
                        busy[i].fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    started.wait();

    let mut created = 0usize;
    let mut present = vec![false; capacity as usize];
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let deadline = Instant::now() + Duration::from_secs(120);
    let readers_done = || busy.iter().all(|b| b.load(Ordering::Relaxed) >= MIN_SECTIONS);
    let mut round = 0;
    while round < rounds || !readers_done() {
        assert!(
            Instant::now() < deadline,
            "readers made too little progress while the writer ran: {:?} sections each",
            busy.iter().map(|b| b.load(Ordering::Relaxed)).collect::<Vec<_>>()
        );
        round += 1;
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let id = (rng % u64::from(capacity)) as u32;
        if present[id as usize] {
            let p = table.retire(id, Duration::from_secs(30)).expect("grace period");
            // Teardown: poison, then drop. Any reader still holding it would notice.
            p.canary.store(DEAD, Ordering::Relaxed);
            drop(p);
        } else {
            let p = Box::new(Payload { id, canary: AtomicU64::new(ALIVE), drops: drops.clone() });
            created += 1;
            table.publish(id, p).expect("publish");
        }
        present[id as usize] = !present[id as usize];
    }
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().expect("reader panicked");
    }
    let still = present.iter().filter(|p| **p).count();
    assert_eq!(table.count() as usize, still);
    assert_eq!(drops.load(Ordering::SeqCst), created - still);
    drop(table);
    assert_eq!(drops.load(Ordering::SeqCst), created, "every payload dropped exactly once");
}

/// Non-empty sections every reader must complete while the writer churns.
const MIN_SECTIONS: usize = if cfg!(miri) { 2 } else { 200 };

fn rounds() -> usize {
    if cfg!(miri) {
        40
    } else {
        5_000
    }
}

#[test]
fn stress_seqcst_fences() {
    stress(FenceMode::SeqCst, 64, rounds(), 3);
}

#[test]
#[cfg_attr(miri, ignore = "Miri has no membarrier system call")]
fn stress_expedited_membarrier() {
    if !FenceMode::MembarrierExpedited.is_available() {
        return prereq::missing("stress_expedited_membarrier", "this kernel offers no private expedited membarrier");
    }
    stress(FenceMode::MembarrierExpedited, 254, rounds(), 3);
}

/// Global membarrier grace periods take milliseconds: fewer rounds.
#[test]
#[cfg_attr(miri, ignore = "Miri has no membarrier system call")]
fn stress_global_membarrier() {
    if !FenceMode::MembarrierGlobal.is_available() {
        return prereq::missing("stress_global_membarrier", "this kernel offers no global membarrier (nohz_full?)");
    }
    stress(FenceMode::MembarrierGlobal, 254, rounds() / 10, 3);
}
