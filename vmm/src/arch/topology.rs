//! Where each vCPU sits: package, die, core and thread, and the APIC id that
//! encodes it.
//!
//! vCPU ids (lithe's, the ACPI `_UID`s, the hotplug controller's bits) count
//! 0..max densely. An APIC id packs the vCPU's place into bit fields, each as
//! wide as its level needs (thread, then core, then die, then package), the
//! widths CPUID leaves 0xB/0x1F and AMD's 0x8000_0008/0x8000_001E declare.
//! With power-of-two counts the two numberings coincide; otherwise APIC ids
//! have gaps (three cores per package use two bits: ids 0, 1, 2, then 4).
//! KVM takes the APIC id as the vCPU's KVM id.

/// Cloud Hypervisor's `cpus.topology`: threads per core, cores per die,
/// dies per package, packages (its field names, so the wire schema uses it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuTopology {
    pub threads_per_core: u16,
    pub cores_per_die: u16,
    pub dies_per_package: u16,
    pub packages: u16,
}

/// Threads per core, cores per die, dies per package, packages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Topology {
    pub threads: u32,
    pub cores: u32,
    pub dies: u32,
    pub packages: u32,
}

/// A vCPU's place in the topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    pub package: u32,
    pub die: u32,
    pub core: u32,
    pub thread: u32,
}

/// Bits needed to number `n` things.
pub fn bits_for(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

impl Topology {
    /// Without a topology: one package of `max` single-thread cores (what
    /// lithe always described).
    pub fn flat(max_vcpus: u32) -> Topology {
        Topology { threads: 1, cores: max_vcpus.max(1), dies: 1, packages: 1 }
    }

    /// `spec`, or without one [`Topology::flat`].
    pub fn of(spec: Option<CpuTopology>, max_vcpus: u32) -> Topology {
        match spec {
            Some(CpuTopology { threads_per_core, cores_per_die, dies_per_package, packages }) => Topology {
                threads: u32::from(threads_per_core),
                cores: u32::from(cores_per_die),
                dies: u32::from(dies_per_package),
                packages: u32::from(packages),
            },
            None => Topology::flat(max_vcpus),
        }
    }

    pub fn thread_bits(&self) -> u32 {
        bits_for(self.threads)
    }

    pub fn core_bits(&self) -> u32 {
        bits_for(self.cores)
    }

    pub fn die_bits(&self) -> u32 {
        bits_for(self.dies)
    }

    /// Shift of the package field: the APIC id bits within one package.
    pub fn package_shift(&self) -> u32 {
        self.thread_bits() + self.core_bits() + self.die_bits()
    }

    /// Logical processors in one package.
    pub fn per_package(&self) -> u32 {
        self.threads * self.cores * self.dies
    }

    /// Every possible vCPU: the product of the four counts (`max_vcpus`).
    pub fn vcpus(&self) -> u32 {
        self.per_package() * self.packages
    }

    /// vCPU `id`'s place: threads of a core first, then cores of a die, and so on.
    pub fn place(&self, id: u32) -> Place {
        Place {
            thread: id % self.threads,
            core: id / self.threads % self.cores,
            die: id / (self.threads * self.cores) % self.dies,
            package: id / self.per_package(),
        }
    }

    /// The APIC id of vCPU `id`.
    pub fn apic_id(&self, id: u32) -> u32 {
        let p = self.place(id);
        let (tb, cb, db) = (self.thread_bits(), self.core_bits(), self.die_bits());
        p.thread | p.core << tb | p.die << (tb + cb) | p.package << (tb + cb + db)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(threads: u32, cores: u32, dies: u32, packages: u32) -> Topology {
        Topology { threads, cores, dies, packages }
    }

    #[test]
    fn flat_and_power_of_two_topologies_keep_apic_ids_equal_to_vcpu_ids() {
        for topo in [Topology::flat(7), t(2, 2, 1, 2), t(2, 4, 2, 2), t(1, 1, 1, 8)] {
            let max = topo.vcpus();
            for id in 0..max {
                assert_eq!(topo.apic_id(id), id, "{topo:?} vCPU {id}");
            }
        }
    }

    #[test]
    fn odd_counts_leave_gaps_in_the_apic_ids() {
        // 3 cores: 2 bits; 2 threads: 1 bit. Package 1 starts at 1 << 3.
        let topo = t(2, 3, 1, 2);
        let ids: Vec<u32> = (0..12).map(|i| topo.apic_id(i)).collect();
        assert_eq!(ids, [0, 1, 2, 3, 4, 5, 8, 9, 10, 11, 12, 13]);
        assert_eq!(topo.place(7), Place { package: 1, die: 0, core: 0, thread: 1 });
        assert_eq!(topo.package_shift(), 3);
        // 3 dies of 3 cores: dies at bits 2.., packages at bits 4..
        let topo = t(1, 3, 3, 2);
        assert_eq!(topo.apic_id(4), 1 << 2 | 1);
        assert_eq!(topo.apic_id(9), 1 << 4);
        assert_eq!(topo.place(17), Place { package: 1, die: 2, core: 2, thread: 0 });
    }

    #[test]
    fn bits_cover_every_count() {
        assert_eq!([1, 2, 3, 4, 5, 8, 9, 254, 256].map(bits_for), [0, 1, 2, 2, 3, 3, 4, 8, 8]);
    }
}
