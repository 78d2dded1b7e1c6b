//! lithe's own share of a resize and of a start, counted inside lithe, for
//! `vm.counters`. Under a slow (emulated) KVM the guest's part dwarfs
//! these; on hardware KVM they are what a user waits for.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use devices::cpu_hotplug::CpuHotplugController;
use devices::ged::Ged;
use devices::serial::SerialDevice;
use devices::EventFdTrigger;

/// `vm.counters`: counter name to value, per device (Cloud Hypervisor's shape).
pub type VmCounters = std::collections::BTreeMap<String, std::collections::BTreeMap<String, u64>>;

static PROCESS_START: OnceLock<Instant> = OnceLock::new();
/// Nanoseconds from process start to the first `KVM_RUN`; 0 until then.
static START_TO_FIRST_RUN_NS: AtomicU64 = AtomicU64::new(0);

/// Marks the start of the process; called first thing in `main`.
pub fn mark_process_start() {
    PROCESS_START.get_or_init(Instant::now);
}

/// Called by a vCPU thread just before its first `KVM_RUN`; only the first
/// call in the process counts.
pub fn note_first_run() {
    if START_TO_FIRST_RUN_NS.load(Ordering::Relaxed) != 0 {
        return;
    }
    if let Some(start) = PROCESS_START.get() {
        let ns = nanos(start.elapsed()).max(1);
        let _ = START_TO_FIRST_RUN_NS.compare_exchange(0, ns, Ordering::Relaxed, Ordering::Relaxed);
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The VMM-side latencies of the last hot-add and hot-remove.
#[derive(Debug, Default)]
pub struct Latencies {
    /// API request received → GED interrupt raised, for the last resize that added.
    add_api_to_ged_ns: AtomicU64,
    /// The same for the last resize that asked for an eject.
    remove_api_to_ged_ns: AtomicU64,
    /// Guest `_EJ0` → vCPU thread joined (grace period included), for the last retire.
    eject_to_joined_ns: AtomicU64,
    adds: AtomicU64,
    removes: AtomicU64,
    retires: AtomicU64,
    /// Memory: request → GED for the last grow, and for the last shrink.
    mem_add_api_to_ged_ns: AtomicU64,
    mem_remove_api_to_ged_ns: AtomicU64,
    /// Guest `_EJ0` → slot out of KVM and the memory map, for the last one.
    mem_eject_to_unplugged_ns: AtomicU64,
    /// KVM's part of those: the last KVM_SET_USER_MEMORY_REGION that added
    /// a slot, and the last that deleted one (each waits for KVM's own SRCU
    /// grace period).
    mem_kvm_add_ns: AtomicU64,
    mem_kvm_delete_ns: AtomicU64,
    mem_adds: AtomicU64,
    mem_removes: AtomicU64,
    mem_unplugs: AtomicU64,
}

impl Latencies {
    /// A resize raised the GED interrupt `took` after its request arrived.
    pub fn resize_notified(&self, took: Duration, added: usize, removed: usize) {
        let ns = nanos(took);
        if added > 0 {
            self.add_api_to_ged_ns.store(ns, Ordering::Relaxed);
            self.adds.fetch_add(added as u64, Ordering::Relaxed);
        }
        if removed > 0 {
            self.remove_api_to_ged_ns.store(ns, Ordering::Relaxed);
            self.removes.fetch_add(removed as u64, Ordering::Relaxed);
        }
    }

    /// A memory resize raised the GED interrupt `took` after its request arrived.
    pub fn memory_notified(&self, took: Duration, added: usize, removed: usize) {
        let ns = nanos(took);
        if added > 0 {
            self.mem_add_api_to_ged_ns.store(ns, Ordering::Relaxed);
            self.mem_adds.fetch_add(added as u64, Ordering::Relaxed);
        }
        if removed > 0 {
            self.mem_remove_api_to_ged_ns.store(ns, Ordering::Relaxed);
            self.mem_removes.fetch_add(removed as u64, Ordering::Relaxed);
        }
    }

    /// KVM took `took` to add (or delete) a memory slot.
    pub fn kvm_slot_changed(&self, took: Duration, added: bool) {
        let c = if added { &self.mem_kvm_add_ns } else { &self.mem_kvm_delete_ns };
        c.store(nanos(took), Ordering::Relaxed);
    }

    /// A memory slot the guest ejected `since` ago is unplugged.
    pub fn memory_unplugged(&self, since: Option<Duration>) {
        self.mem_unplugs.fetch_add(1, Ordering::Relaxed);
        if let Some(d) = since {
            self.mem_eject_to_unplugged_ns.store(nanos(d), Ordering::Relaxed);
        }
    }

    /// A vCPU the guest ejected `since` ago is retired.
    pub fn retired(&self, since: Option<Duration>) {
        self.retires.fetch_add(1, Ordering::Relaxed);
        if let Some(d) = since {
            self.eject_to_joined_ns.store(nanos(d), Ordering::Relaxed);
        }
    }

    fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("last_add_api_to_ged_ns", r(&self.add_api_to_ged_ns)),
            ("last_remove_api_to_ged_ns", r(&self.remove_api_to_ged_ns)),
            ("last_eject_to_joined_ns", r(&self.eject_to_joined_ns)),
            ("vcpus_added", r(&self.adds)),
            ("vcpus_removed", r(&self.removes)),
            ("vcpus_retired", r(&self.retires)),
            ("start_to_first_kvm_run_ns", START_TO_FIRST_RUN_NS.load(Ordering::Relaxed)),
        ]
    }

    /// lithe's share of memory resizes, for the `mem-hotplug` group.
    pub fn memory_snapshot(&self) -> Vec<(&'static str, u64)> {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("last_add_api_to_ged_ns", r(&self.mem_add_api_to_ged_ns)),
            ("last_remove_api_to_ged_ns", r(&self.mem_remove_api_to_ged_ns)),
            ("last_eject_to_unplugged_ns", r(&self.mem_eject_to_unplugged_ns)),
            ("last_kvm_slot_add_ns", r(&self.mem_kvm_add_ns)),
            ("last_kvm_slot_delete_ns", r(&self.mem_kvm_delete_ns)),
            ("slots_added", r(&self.mem_adds)),
            ("slots_removed", r(&self.mem_removes)),
            ("slots_unplugged", r(&self.mem_unplugs)),
        ]
    }
}

/// The devices and latencies `vm.counters` reports on, for one VM.
pub struct CounterSources {
    pub controller: Arc<CpuHotplugController>,
    pub ged: Arc<Ged<EventFdTrigger>>,
    pub serial: Arc<SerialDevice>,
    pub latencies: Arc<Latencies>,
    pub devices: Arc<crate::device_manager::DeviceManager>,
    /// The memory hotplug controller and its slots, when the VM has room to grow.
    pub memory: Option<(Arc<devices::mem_hotplug::MemHotplugController>, Arc<crate::memory_hotplug::slots::Slots>)>,
}

impl CounterSources {
    /// Cloud Hypervisor's `VmCounters` shape: device → counter → value.
    pub fn collect(&self) -> VmCounters {
        let mut out = VmCounters::new();
        let to_map = |v: Vec<(&'static str, u64)>| v.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        let mut hotplug: std::collections::BTreeMap<String, u64> = to_map(self.controller.counters.snapshot());
        let (accesses, scans) = (hotplug["reads"] + hotplug["writes"], hotplug["scans"]);
        // Every register access is one MMIO exit; _STA and _OST calls
        // between scans count towards the scan they belong to.
        hotplug.insert("mmio_exits_per_scan".into(), accesses.checked_div(scans).unwrap_or(0));
        out.insert("cpu-hotplug".into(), hotplug);
        out.insert("ged".into(), to_map(self.ged.counters()));
        out.insert("serial".into(), to_map(self.serial.counters()));
        out.insert("vmm".into(), to_map(self.latencies.snapshot()));
        if let Some((controller, slots)) = &self.memory {
            let mut m = to_map(controller.counter_values());
            m.insert("plugged_bytes".into(), slots.plugged_bytes());
            m.extend(to_map(self.latencies.memory_snapshot()));
            out.insert("mem-hotplug".into(), m);
        }
        out.extend(self.devices.counters());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_record_the_last_change_and_count_them() {
        let l = Latencies::default();
        l.resize_notified(Duration::from_millis(3), 2, 0);
        let s: std::collections::BTreeMap<_, _> = l.snapshot().into_iter().collect();
        assert!(s["last_add_api_to_ged_ns"] >= 3_000_000);
        assert_eq!((s["vcpus_added"], s["last_remove_api_to_ged_ns"]), (2, 0));
        l.retired(Some(Duration::from_micros(250)));
        l.retired(None);
        let s: std::collections::BTreeMap<_, _> = l.snapshot().into_iter().collect();
        assert_eq!((s["last_eject_to_joined_ns"], s["vcpus_retired"]), (250_000, 2));
        l.memory_notified(Duration::from_micros(40), 0, 2);
        l.memory_unplugged(Some(Duration::from_micros(90)));
        let m: std::collections::BTreeMap<_, _> = l.memory_snapshot().into_iter().collect();
        assert_eq!((m["last_remove_api_to_ged_ns"], m["slots_removed"], m["last_add_api_to_ged_ns"]), (40_000, 2, 0));
        assert_eq!((m["last_eject_to_unplugged_ns"], m["slots_unplugged"]), (90_000, 1));
    }
}
