//! Per-vCPU CPUID: KVM's supported set with this vCPU's APIC id and a flat
//! topology (one thread per core, `max` cores in one package) filled in.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const LEAF_V2_EXT_TOPOLOGY: u32 = 0x1f;

const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;

/// Topology level types in leaf 0xB/0x1F ECX[15:8].
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

/// Bits needed for an APIC id below `n`.
fn id_bits(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

/// Rewrites `entries` (a copy of KVM's supported CPUID) for vCPU `apic_id` of `max_vcpus`.
pub fn fixup_entries(entries: &mut [kvm_cpuid_entry2], apic_id: u32, max_vcpus: u32) {
    for e in entries.iter_mut() {
        match e.function {
            LEAF_FEATURES => {
                // EBX: [31:24] initial APIC id, [23:16] logical processors per package, [15:8] CLFLUSH size.
                e.ebx = (apic_id << 24) | (max_vcpus.min(255) << 16) | (8 << 8) | (e.ebx & 0xff);
                e.ecx |= ECX_HYPERVISOR;
                if max_vcpus > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            LEAF_CACHE_PARAMS => {
                // EAX[31:26]: cores per package - 1; EAX[25:14]: threads sharing the cache - 1.
                let cores = max_vcpus.clamp(1, 64) - 1;
                e.eax = (e.eax & 0x3fff) | (cores << 26);
            }
            LEAF_EXT_TOPOLOGY | LEAF_V2_EXT_TOPOLOGY => {
                e.edx = apic_id;
                match e.index {
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = (LEVEL_SMT << 8) | e.index;
                    }
                    1 => {
                        e.eax = id_bits(max_vcpus);
                        e.ebx = max_vcpus;
                        e.ecx = (LEVEL_CORE << 8) | e.index;
                    }
                    _ => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = e.index;
                    }
                }
            }
            _ => {}
        }
    }
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

/// The CPUID for one vCPU, from KVM's supported set.
pub fn vcpu_cpuid(supported: &CpuId, apic_id: u32, max_vcpus: u32) -> CpuId {
    let mut cpuid = supported.clone();
    fixup_entries(cpuid.as_mut_slice(), apic_id, max_vcpus);
    cpuid
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::KVM_CPUID_FLAG_SIGNIFCANT_INDEX;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ebx: 0xffff_ffff,
            edx: 0,
            flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
            ..Default::default()
        }
    }

    #[test]
    fn apic_id_and_topology_per_vcpu() {
        let mut e = vec![entry(1, 0), entry(0xb, 0), entry(0xb, 1), entry(0xb, 2), entry(4, 0)];
        fixup_entries(&mut e, 5, 6);
        assert_eq!(e[0].ebx >> 24, 5);
        assert_eq!((e[0].ebx >> 16) & 0xff, 6);
        assert_eq!((e[0].ebx >> 8) & 0xff, 8);
        assert_ne!(e[0].ecx & ECX_HYPERVISOR, 0);
        assert_ne!(e[0].edx & EDX_HTT, 0);
        assert_eq!((e[1].eax, e[1].ebx, e[1].ecx, e[1].edx), (0, 1, 0x100, 5));
        assert_eq!((e[2].eax, e[2].ebx, e[2].ecx, e[2].edx), (3, 6, 0x201, 5));
        assert_eq!((e[3].eax, e[3].ebx, e[3].ecx), (0, 0, 2));
        assert_eq!(e[4].eax >> 26, 5);
    }

    #[test]
    fn nested_off_hides_vmx_and_svm_only() {
        let mut e = vec![entry(1, 0), entry(0x8000_0001, 0)];
        e[0].ecx = ECX_VMX | 1;
        e[1].ecx = ECX_SVM | 1;
        hide_virtualization(&mut e);
        assert_eq!((e[0].ecx, e[1].ecx), (1, 1));
    }

    #[test]
    fn single_vcpu_has_no_htt() {
        let mut e = vec![entry(1, 0)];
        e[0].edx = EDX_HTT;
        fixup_entries(&mut e, 0, 1);
        assert_eq!(e[0].edx & EDX_HTT, 0);
    }

    #[test]
    fn id_bits_cover_all_ids() {
        assert_eq!(id_bits(1), 0);
        assert_eq!(id_bits(2), 1);
        assert_eq!(id_bits(4), 2);
        assert_eq!(id_bits(5), 3);
        assert_eq!(id_bits(254), 8);
    }
}
