//! The resize, in one place: the request validated once into a typed
//! [`ResizeRequest`] ([`request`]), the [`Target`] it sets ([`target`]),
//! the one entry point that applies it to a VM ([`start`]) or to a VM not
//! booted yet ([`before_boot`]), and the wait for the guest, woken by
//! progress rather than polled, with its typed [`ResizeReport`] ([`report`]).
//!
//! A request reads top to bottom: the API decodes the wire body into
//! [`ResizeFields`] → [`ResizeRequest::new`] validates it → the main loop
//! calls [`start`] → the manager carries the plan out on KVM vCPUs → the
//! guest answers → [`report::wait`] answers a client that asked to wait.

pub mod report;
pub mod request;
pub mod target;

use std::time::Instant;

use log::info;

pub use report::{ResizeReport, VcpuInfo};
pub use request::{ResizeError, ResizeFields, ResizeRequest, Want, DEFAULT_WAIT, MAX_WAIT};
pub use target::{Cause, Progress, Target, TargetStatus};

use crate::config::{CpusConfig, KvmLimits};
use crate::cpu::manager::{ResizePlan, VcpuManager};

/// Applies `want` to a running VM: checks it against the VM, sets the
/// target if it changed (the same target again changes nothing), and takes
/// one step towards it. `received` is when the request arrived, for the
/// VMM-side latency (request → GED interrupt).
pub fn start(manager: &mut VcpuManager, want: &Want, received: Instant) -> Result<ResizePlan, ResizeError> {
    want.check(manager.max_vcpus())?;
    if manager.is_paused() {
        return Err(ResizeError::Paused);
    }
    let target = manager.target().clone();
    let status = target.status();
    match want {
        Want::Count(n) if status.vcpu_ids.is_some() || status.desired != *n => {
            info!("resize: target {} -> {n} vCPUs", status.desired);
            target.set(*n, Cause::Resize);
        }
        Want::Ids(ids) if status.vcpu_ids.as_ref() != Some(ids) => {
            info!("resize: target {} -> vCPUs {ids:?}", status.desired);
            target.set_ids(ids.clone(), Cause::Resize);
        }
        _ => {}
    }
    let plan = manager.reconcile_received(received);
    match &plan.error {
        Some((vcpu, error)) => {
            Err(ResizeError::VcpuFailed { vcpu: *vcpu, error: error.clone(), target: target.desired() })
        }
        None => Ok(plan),
    }
}

/// A resize before boot (as Cloud Hypervisor allows): sets `boot_vcpus`.
/// A targeted resize needs a running VM: boot vCPUs are always `0..boot`.
pub fn before_boot(cpus: &mut CpusConfig, want: &Want, kvm: KvmLimits) -> Result<(), ResizeError> {
    let Want::Count(n) = want else { return Err(ResizeError::IdsBeforeBoot) };
    want.check(cpus.max_vcpus)?;
    let mut next = *cpus;
    next.boot_vcpus = *n;
    // Within max, so only KVM's limits could object, and those held at create.
    crate::config::validate_cpus(&next, kvm)
        .map_err(|_| ResizeError::CountOutOfRange { desired: *n, max: cpus.max_vcpus })?;
    *cpus = next;
    info!("resize before boot: the VM will boot with {n} vCPUs");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn before_boot_sets_boot_vcpus_within_max_and_refuses_ids() {
        let kvm = KvmLimits { max_vcpus: 1024, max_vcpu_id: 1024 };
        let mut cpus = CpusConfig::new(1, 4);
        before_boot(&mut cpus, &Want::Count(3), kvm).unwrap();
        assert_eq!(cpus.boot_vcpus, 3);
        assert_eq!(
            before_boot(&mut cpus, &Want::Count(5), kvm),
            Err(ResizeError::CountOutOfRange { desired: 5, max: 4 })
        );
        assert_eq!(before_boot(&mut cpus, &Want::Ids(vec![0]), kvm), Err(ResizeError::IdsBeforeBoot));
        assert_eq!(cpus.boot_vcpus, 3, "a refused resize changes nothing");
    }
}
