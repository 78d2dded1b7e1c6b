//! A resize request, validated once: what a client may ask (a count or an
//! exact set of vCPU ids, and how long to wait) and every reason it may be
//! refused, typed, with the field it concerns.

use std::time::Duration;

/// Longest wait a resize may ask for.
pub const MAX_WAIT: Duration = Duration::from_secs(10 * 60);
/// The wait `?wait=true` means.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(120);

/// What the guest should run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Want {
    /// This many vCPUs: the lowest free ids are added, the highest removed.
    Count(u32),
    /// Exactly these vCPU ids: sorted, distinct, vCPU 0 first.
    Ids(Vec<u32>),
}

impl Want {
    pub fn count(&self) -> u32 {
        match self {
            Want::Count(n) => *n,
            Want::Ids(ids) => ids.len() as u32,
        }
    }
}

/// A resize as the VMM takes it. `want: None` asks for nothing (Cloud
/// Hypervisor answers that with success).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResizeRequest {
    pub want: Option<Want>,
    /// The guest's RAM in bytes (`desired_ram`).
    pub ram: Option<u64>,
    /// Wait up to this long for the guest to complete the change, and report.
    pub wait: Option<Duration>,
}

/// The fields of Cloud Hypervisor's `VmResize`, plus lithe's, as they came.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResizeFields {
    pub desired_vcpus: Option<u32>,
    pub desired_vcpu_ids: Option<Vec<u32>>,
    pub desired_ram: Option<u64>,
    pub desired_balloon: Option<u64>,
    pub wait_ms: Option<u64>,
}

/// Why a resize was refused. `status` classes: [`ResizeError::is_state`] is
/// a wrong VM state (HTTP 405), [`ResizeError::is_vmm`] a failure of the
/// VMM's own (500); everything else is a bad request (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResizeError {
    #[error("lithe does not support {field} ({why})")]
    Unsupported { field: &'static str, why: &'static str },
    #[error("desired_vcpus is {count} but desired_vcpu_ids names {ids} vCPUs")]
    CountMismatch { count: u32, ids: usize },
    #[error("desired_vcpu_ids: must include vCPU 0, which is never removed")]
    NoBootVcpu,
    #[error("desired_vcpu_ids: vCPU {id} is beyond max_vcpus ({max})")]
    IdBeyondMax { id: u32, max: u32 },
    #[error("desired_vcpus must be between 1 and {max}, got {desired}")]
    CountOutOfRange { desired: u32, max: u32 },
    #[error("wait_ms may be at most {}", MAX_WAIT.as_millis())]
    WaitTooLong,
    #[error("desired_vcpu_ids needs a running VM; before boot, set desired_vcpus")]
    IdsBeforeBoot,
    #[error("the VM is paused; resume it before resizing")]
    Paused,
    /// Creating or starting a vCPU failed part-way; the target now counts
    /// only what exists.
    #[error("vCPU {vcpu}: {error}; the target is now {target}")]
    VcpuFailed { vcpu: u32, error: String, target: u32 },
    #[error("{0}")]
    Memory(crate::memory_hotplug::MemoryResizeError),
}

impl ResizeError {
    /// Refused for the VM's state, not for the request.
    pub fn is_state(&self) -> bool {
        matches!(self, ResizeError::Paused)
    }

    /// The VMM failed, not the request.
    pub fn is_vmm(&self) -> bool {
        match self {
            ResizeError::VcpuFailed { .. } => true,
            ResizeError::Memory(e) => e.is_vmm(),
            _ => false,
        }
    }
}

impl ResizeRequest {
    /// A count, no wait (tests, the bed).
    pub fn count(n: u32) -> ResizeRequest {
        ResizeRequest { want: Some(Want::Count(n)), ram: None, wait: None }
    }

    /// Exactly `ids`, no wait; `ids` in any order, duplicates counting once.
    pub fn ids(ids: &[u32]) -> Result<ResizeRequest, ResizeError> {
        ResizeRequest::new(ResizeFields { desired_vcpu_ids: Some(ids.to_vec()), ..Default::default() })
    }

    /// Everything that can be checked without a VM: unsupported fields, a
    /// count and an id set that disagree, an id set without vCPU 0, a wait
    /// that is too long. Bounds against `max_vcpus` are checked by
    /// [`super::start`], which knows the VM.
    pub fn new(f: ResizeFields) -> Result<ResizeRequest, ResizeError> {
        if f.desired_balloon.is_some() {
            return Err(ResizeError::Unsupported { field: "desired_balloon", why: "lithe has no balloon" });
        }
        let wait = f.wait_ms.map(Duration::from_millis);
        if wait.is_some_and(|w| w > MAX_WAIT) {
            return Err(ResizeError::WaitTooLong);
        }
        let want = match (f.desired_vcpus, f.desired_vcpu_ids) {
            (None, None) => None,
            (Some(n), None) => Some(Want::Count(n)),
            (count, Some(mut ids)) => {
                ids.sort_unstable();
                ids.dedup();
                if let Some(n) = count.filter(|&n| n as usize != ids.len()) {
                    return Err(ResizeError::CountMismatch { count: n, ids: ids.len() });
                }
                if ids.first() != Some(&0) {
                    return Err(ResizeError::NoBootVcpu);
                }
                Some(Want::Ids(ids))
            }
        };
        Ok(ResizeRequest { want, ram: f.desired_ram, wait })
    }
}

impl Want {
    /// The bounds only the VM knows.
    pub fn check(&self, max_vcpus: u32) -> Result<(), ResizeError> {
        match self {
            Want::Count(n) if *n == 0 || *n > max_vcpus => {
                Err(ResizeError::CountOutOfRange { desired: *n, max: max_vcpus })
            }
            Want::Ids(ids) => match ids.iter().find(|&&id| id >= max_vcpus) {
                Some(&id) => Err(ResizeError::IdBeyondMax { id, max: max_vcpus }),
                None => Ok(()),
            },
            Want::Count(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(f: ResizeFields) -> Result<ResizeRequest, ResizeError> {
        ResizeRequest::new(f)
    }

    #[test]
    fn ids_are_a_set_that_must_hold_vcpu_0_and_agree_with_the_count() {
        let ids = |v: Vec<u32>, n: Option<u32>| {
            req(ResizeFields { desired_vcpu_ids: Some(v), desired_vcpus: n, ..Default::default() })
        };
        assert_eq!(ids(vec![3, 0, 3, 1], None).unwrap().want, Some(Want::Ids(vec![0, 1, 3])));
        assert_eq!(ids(vec![3, 0, 3, 1], Some(3)).unwrap().want.unwrap().count(), 3);
        assert_eq!(ids(vec![3, 0, 1], Some(2)), Err(ResizeError::CountMismatch { count: 2, ids: 3 }));
        assert_eq!(ids(vec![1, 2], None), Err(ResizeError::NoBootVcpu));
        assert_eq!(ids(vec![], None), Err(ResizeError::NoBootVcpu));
    }

    #[test]
    fn unsupported_fields_and_long_waits_are_refused_naming_the_field() {
        assert_eq!(req(ResizeFields { desired_ram: Some(1 << 30), ..Default::default() }).unwrap().ram, Some(1 << 30));
        let e = req(ResizeFields { desired_balloon: Some(0), ..Default::default() }).unwrap_err();
        assert!(e.to_string().contains("desired_balloon"), "{e}");
        let long = MAX_WAIT.as_millis() as u64 + 1;
        assert_eq!(req(ResizeFields { wait_ms: Some(long), ..Default::default() }), Err(ResizeError::WaitTooLong));
        assert_eq!(req(ResizeFields::default()), Ok(ResizeRequest { want: None, ram: None, wait: None }));
    }

    #[test]
    fn bounds_against_max() {
        assert!(Want::Count(0).check(4).is_err());
        assert!(Want::Count(5).check(4).is_err());
        assert!(Want::Count(4).check(4).is_ok());
        assert_eq!(Want::Ids(vec![0, 4]).check(4), Err(ResizeError::IdBeyondMax { id: 4, max: 4 }));
    }
}
