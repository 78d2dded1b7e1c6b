//! Per-vCPU CPUID: KVM's supported set with this vCPU's APIC id and the VM's
//! topology (arch/topology.rs) filled in, in the leaves Linux reads it from:
//! 0x1 and 0x4, the extended topology leaves 0xB (and 0x1F where KVM has
//! it), and AMD's 0x8000_0008, 0x8000_001D and 0x8000_001E.
//!
//! KVM's own table describes none of it: on this machine's AMD host its 0xB
//! has one all-zero subleaf and its 0x8000_001E is zero, so Linux put every
//! vCPU in a package of its own ("Max logical packages: 4" at max=4, and
//! each hot-added CPU "Converting physical 0 to logical die N").

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

use super::topology::Topology;

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const LEAF_V2_EXT_TOPOLOGY: u32 = 0x1f;
const LEAF_AMD_SIZES: u32 = 0x8000_0008;
const LEAF_AMD_CACHE: u32 = 0x8000_001d;
const LEAF_AMD_TOPOLOGY: u32 = 0x8000_001e;

const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;

/// Topology level types in leaf 0xB/0x1F ECX[15:8].
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;
const LEVEL_DIE: u32 = 5;

/// Cache type and level of a leaf 0x4 / 0x8000_001D entry (0 type: no cache).
fn cache_type_level(eax: u32) -> (u32, u32) {
    (eax & 0x1f, (eax >> 5) & 0x7)
}

/// Sets a cache entry's "logical processors sharing this cache - 1"
/// (EAX[25:14]): a core's threads for L1 and L2, a die's for L3 (AMD), a
/// package's for L3 (Intel's leaf 4).
fn set_cache_sharing(e: &mut kvm_cpuid_entry2, topo: &Topology, l3_bits: u32) {
    let (kind, level) = cache_type_level(e.eax);
    if kind == 0 {
        return;
    }
    let bits = if level >= 3 { l3_bits } else { topo.thread_bits() };
    let sharing = ((1u32 << bits) - 1).min(0xfff);
    e.eax = (e.eax & !(0xfff << 14)) | (sharing << 14);
}

/// The subleaves of 0xB or 0x1F for `apic_id`: (level type, shift, count),
/// then the invalid level that ends the list.
fn topology_levels(leaf: u32, topo: &Topology) -> Vec<(u32, u32, u32)> {
    let (tb, cb) = (topo.thread_bits(), topo.core_bits());
    let mut levels = vec![(LEVEL_SMT, tb, topo.threads)];
    if leaf == LEAF_V2_EXT_TOPOLOGY && topo.dies > 1 {
        levels.push((LEVEL_CORE, tb + cb, topo.threads * topo.cores));
        levels.push((LEVEL_DIE, topo.package_shift(), topo.per_package()));
    } else {
        levels.push((LEVEL_CORE, topo.package_shift(), topo.per_package()));
    }
    levels
}

fn topology_entries(leaf: u32, apic_id: u32, topo: &Topology) -> Vec<kvm_cpuid_entry2> {
    let levels = topology_levels(leaf, topo);
    let entry = |index: u32, eax, ebx, ecx| kvm_cpuid_entry2 {
        function: leaf,
        index,
        flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
        eax,
        ebx,
        ecx,
        edx: apic_id,
        ..Default::default()
    };
    let mut out: Vec<kvm_cpuid_entry2> = levels
        .iter()
        .enumerate()
        .map(|(i, &(kind, shift, count))| entry(i as u32, shift, count, kind << 8 | i as u32))
        .collect();
    out.push(entry(levels.len() as u32, 0, 0, levels.len() as u32));
    out
}

/// Rewrites `entries` (a copy of KVM's supported CPUID) for vCPU `id` of
/// `topo`; the extended topology leaves are replaced whole.
pub fn fixup_entries(entries: &[kvm_cpuid_entry2], id: u32, topo: &Topology) -> Vec<kvm_cpuid_entry2> {
    let apic_id = topo.apic_id(id);
    let place = topo.place(id);
    let per_package_ids = 1u32 << topo.package_shift();
    let mut out = Vec::with_capacity(entries.len() + 8);
    let mut has_v2 = false;
    for &e in entries {
        let mut e = e;
        match e.function {
            LEAF_FEATURES => {
                // EBX: [31:24] initial APIC id, [23:16] addressable ids per package, [15:8] CLFLUSH size.
                e.ebx = ((apic_id & 0xff) << 24) | (per_package_ids.min(255) << 16) | (8 << 8) | (e.ebx & 0xff);
                e.ecx |= ECX_HYPERVISOR;
                if topo.per_package() > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            LEAF_CACHE_PARAMS if cache_type_level(e.eax).0 != 0 => {
                // EAX[31:26]: addressable core ids per package - 1.
                let cores = ((1u32 << (topo.core_bits() + topo.die_bits())) - 1).min(63);
                e.eax = (e.eax & 0x03ff_ffff) | (cores << 26);
                set_cache_sharing(&mut e, topo, topo.package_shift());
            }
            LEAF_EXT_TOPOLOGY => continue,
            LEAF_V2_EXT_TOPOLOGY => {
                has_v2 = true;
                continue;
            }
            LEAF_AMD_SIZES => {
                // ECX: [15:12] APIC id bits for the package's cores, [7:0] logical processors - 1.
                let nc = (topo.per_package() - 1).min(255);
                e.ecx = (e.ecx & !0xf0ff) | (topo.package_shift().min(15) << 12) | nc;
            }
            LEAF_AMD_CACHE => set_cache_sharing(&mut e, topo, topo.thread_bits() + topo.core_bits()),
            LEAF_AMD_TOPOLOGY => {
                // EAX: extended APIC id; EBX: [15:8] threads per core - 1, [7:0] core id in
                // the package; ECX: [10:8] dies (nodes) per package - 1, [7:0] node id.
                e.eax = apic_id;
                let core = place.die * topo.cores + place.core;
                e.ebx = ((topo.threads - 1).min(255) << 8) | (core & 0xff);
                let node = place.package * topo.dies + place.die;
                e.ecx = ((topo.dies - 1).min(7) << 8) | (node & 0xff);
                e.edx = 0;
            }
            _ => {}
        }
        out.push(e);
    }
    out.extend(topology_entries(LEAF_EXT_TOPOLOGY, apic_id, topo));
    if has_v2 {
        out.extend(topology_entries(LEAF_V2_EXT_TOPOLOGY, apic_id, topo));
    }
    out
}

const LEAF_EXT_FEATURES: u32 = 0x8000_0001;
const ECX_VMX: u32 = 1 << 5;
const ECX_SVM: u32 = 1 << 2;

/// Hides VMX and SVM (`cpus.nested: false`): the guest sees no
/// virtualization extensions, whatever the host's KVM offers.
pub fn hide_virtualization(entries: &mut [kvm_cpuid_entry2]) {
    for e in entries.iter_mut() {
        match e.function {
            LEAF_FEATURES => e.ecx &= !ECX_VMX,
            LEAF_EXT_FEATURES => e.ecx &= !ECX_SVM,
            _ => {}
        }
    }
}

/// The CPUID for vCPU `id` of `topo`, from KVM's supported set.
pub fn vcpu_cpuid(supported: &CpuId, id: u32, topo: &Topology) -> CpuId {
    let entries = fixup_entries(supported.as_slice(), id, topo);
    CpuId::from_entries(&entries).expect("KVM's table plus a few topology subleaves fits a CpuId")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32, eax: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax,
            ebx: 0xffff_ffff,
            flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
            ..Default::default()
        }
    }

    fn find(e: &[kvm_cpuid_entry2], function: u32, index: u32) -> kvm_cpuid_entry2 {
        *e.iter()
            .find(|x| x.function == function && x.index == index)
            .unwrap_or_else(|| panic!("{function:#x}.{index}"))
    }

    fn topo(threads: u32, cores: u32, dies: u32, packages: u32) -> Topology {
        Topology { threads, cores, dies, packages }
    }

    /// KVM's table on this machine's AMD host: 0xB with one all-zero
    /// subleaf, 0x8000_001E zero, four cache subleaves in 0x8000_001D.
    fn amd_table() -> Vec<kvm_cpuid_entry2> {
        vec![
            entry(1, 0, 0x00a1_0f11),
            entry(4, 0, 0),
            kvm_cpuid_entry2 {
                function: 0xb,
                index: 0,
                edx: 1,
                flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
                ..Default::default()
            },
            kvm_cpuid_entry2 { function: LEAF_AMD_SIZES, ecx: 0x7001, ..Default::default() },
            entry(LEAF_AMD_CACHE, 0, 0x121),
            entry(LEAF_AMD_CACHE, 1, 0x122),
            entry(LEAF_AMD_CACHE, 2, 0x143),
            entry(LEAF_AMD_CACHE, 3, 0x4163),
            entry(LEAF_AMD_CACHE, 4, 0),
            kvm_cpuid_entry2 { function: LEAF_AMD_TOPOLOGY, ..Default::default() },
        ]
    }

    #[test]
    fn flat_topology_on_amd_puts_every_vcpu_in_one_package() {
        let e = fixup_entries(&amd_table(), 3, &Topology::flat(4));
        let l1 = find(&e, 1, 0);
        assert_eq!((l1.ebx >> 24, (l1.ebx >> 16) & 0xff, (l1.ebx >> 8) & 0xff), (3, 4, 8));
        assert_ne!(l1.ecx & ECX_HYPERVISOR, 0);
        assert_ne!(l1.edx & EDX_HTT, 0);
        let smt = find(&e, 0xb, 0);
        assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (0, 1, 0x100, 3));
        let core = find(&e, 0xb, 1);
        assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (2, 4, 0x201, 3));
        let end = find(&e, 0xb, 2);
        assert_eq!((end.eax, end.ebx, end.ecx & 0xff00), (0, 0, 0));
        assert_eq!(e.iter().filter(|x| x.function == 0xb).count(), 3);
        let sizes = find(&e, LEAF_AMD_SIZES, 0);
        assert_eq!((sizes.ecx >> 12 & 0xf, sizes.ecx & 0xff), (2, 3));
        let amd = find(&e, LEAF_AMD_TOPOLOGY, 0);
        assert_eq!((amd.eax, amd.ebx, amd.ecx), (3, 3, 0));
        // L1/L2 per core (1 thread), L3 shared by the 4 cores.
        let sharing = |i| find(&e, LEAF_AMD_CACHE, i).eax >> 14 & 0xfff;
        assert_eq!([0, 1, 2, 3].map(sharing), [0, 0, 0, 3]);
        assert_eq!(find(&e, LEAF_AMD_CACHE, 4).eax, 0, "no cache: untouched");
        assert_eq!(find(&e, 4, 0).eax, 0, "leaf 4 without a cache: untouched");
    }

    #[test]
    fn threads_cores_and_packages_with_gaps_in_the_apic_ids() {
        // 2 threads x 3 cores x 2 packages; vCPU 7 is package 1, core 0, thread 1: APIC id 9.
        let t = topo(2, 3, 1, 2);
        let e = fixup_entries(&amd_table(), 7, &t);
        assert_eq!(find(&e, 1, 0).ebx >> 24, 9);
        assert_eq!(find(&e, 1, 0).ebx >> 16 & 0xff, 8, "addressable ids per package");
        let smt = find(&e, 0xb, 0);
        assert_eq!((smt.eax, smt.ebx, smt.edx), (1, 2, 9));
        let core = find(&e, 0xb, 1);
        assert_eq!((core.eax, core.ebx, core.edx), (3, 6, 9));
        let sizes = find(&e, LEAF_AMD_SIZES, 0);
        assert_eq!((sizes.ecx >> 12 & 0xf, sizes.ecx & 0xff), (3, 5));
        let amd = find(&e, LEAF_AMD_TOPOLOGY, 0);
        assert_eq!((amd.eax, amd.ebx >> 8 & 0xff, amd.ebx & 0xff, amd.ecx & 0xff), (9, 1, 0, 1));
        let sharing = |i| find(&e, LEAF_AMD_CACHE, i).eax >> 14 & 0xfff;
        assert_eq!([0, 1, 2, 3].map(sharing), [1, 1, 1, 7]);
    }

    #[test]
    fn intel_leaf_0x1f_gets_a_die_level_and_leaf_4_the_core_count() {
        let table = vec![
            entry(1, 0, 0),
            entry(4, 0, 0x121),
            entry(4, 3, 0x163),
            entry(0xb, 0, 0),
            entry(0xb, 1, 0),
            entry(0x1f, 0, 0),
            entry(0x1f, 1, 0),
        ];
        // 1 thread x 3 cores x 2 dies x 1 package: vCPU 4 is die 1, core 1: APIC id 0b101.
        let e = fixup_entries(&table, 4, &topo(1, 3, 2, 1));
        let v2: Vec<(u32, u32, u32, u32)> =
            e.iter().filter(|x| x.function == 0x1f).map(|x| (x.eax, x.ebx, x.ecx, x.edx)).collect();
        assert_eq!(v2, [(0, 1, 0x100, 5), (2, 3, 0x201, 5), (3, 6, 0x502, 5), (0, 0, 3, 5)]);
        let b: Vec<(u32, u32, u32)> = e.iter().filter(|x| x.function == 0xb).map(|x| (x.eax, x.ebx, x.ecx)).collect();
        assert_eq!(b, [(0, 1, 0x100), (3, 6, 0x201), (0, 0, 2)], "0xB has no die level");
        assert_eq!(find(&e, 4, 0).eax >> 26, 7, "addressable core ids - 1: 2 core bits + 1 die bit");
        assert_eq!(find(&e, 4, 3).eax >> 14 & 0xfff, 7, "L3 shared across the package");
    }

    #[test]
    fn nested_off_hides_vmx_and_svm_only() {
        let mut e = vec![entry(1, 0, 0), entry(0x8000_0001, 0, 0)];
        e[0].ecx = ECX_VMX | 1;
        e[1].ecx = ECX_SVM | 1;
        hide_virtualization(&mut e);
        assert_eq!((e[0].ecx, e[1].ecx), (1, 1));
    }

    #[test]
    fn single_vcpu_has_no_htt() {
        let mut t = vec![entry(1, 0, 0)];
        t[0].edx = EDX_HTT;
        let e = fixup_entries(&t, 0, &Topology::flat(1));
        assert_eq!(e[0].edx & EDX_HTT, 0);
    }
}
