//! Request bodies and the HTTP-level response.

use serde::{Deserialize, Serialize};

/// `PUT /api/v1/vm.resize`: Cloud Hypervisor's `VmResize` plus lithe's `wait_ms`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResizeRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_vcpus: Option<u32>,
    /// lithe: a targeted resize, naming the vCPUs the guest should run
    /// (vCPU 0 among them); the others present are removed. With
    /// `desired_vcpus` too, the two must agree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_vcpu_ids: Option<Vec<u32>>,
    /// Memory hotplug: lithe has none, so only null is accepted (by the VMM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_ram: Option<u64>,
    /// Balloon: lithe has none, so only null is accepted (by the VMM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_balloon: Option<u64>,
    /// lithe: wait up to this long for the guest to complete the change, and
    /// answer 200 with a per-vCPU report instead of 204.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<u64>,
}

impl ResizeRequest {
    /// `desired_vcpu_ids`, sorted, each id once (a set: duplicates count once).
    pub fn distinct_vcpu_ids(&self) -> Option<Vec<u32>> {
        self.desired_vcpu_ids.as_ref().map(|ids| {
            let mut ids = ids.clone();
            ids.sort_unstable();
            ids.dedup();
            ids
        })
    }

    /// How many vCPUs the request asks for: `desired_vcpus`, else the number of distinct ids.
    pub fn desired_count(&self) -> Option<u32> {
        self.desired_vcpus.or_else(|| self.distinct_vcpu_ids().map(|ids| ids.len() as u32))
    }
}

/// Longest wait a resize may ask for.
pub const MAX_RESIZE_WAIT_MS: u64 = 10 * 60 * 1000;
/// The wait `?wait=true` means.
pub const DEFAULT_RESIZE_WAIT_MS: u64 = 120 * 1000;

/// What the server writes: a status and an optional JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiResponse {
    pub status: u16,
    pub body: Option<serde_json::Value>,
}

impl ApiResponse {
    pub fn ok(body: impl Serialize) -> Self {
        ApiResponse { status: 200, body: Some(serde_json::to_value(body).unwrap_or(serde_json::Value::Null)) }
    }

    pub fn no_content() -> Self {
        ApiResponse { status: 204, body: None }
    }

    /// An error in Cloud Hypervisor's shape: a JSON array of messages, the
    /// outermost first.
    pub fn error<S: Into<String>>(status: u16, chain: impl IntoIterator<Item = S>) -> Self {
        let messages: Vec<String> = chain.into_iter().map(Into::into).collect();
        ApiResponse { status, body: Some(serde_json::Value::from(messages)) }
    }

    /// The messages of an error reply, joined (for logs and CLIs).
    pub fn error_text(body: &serde_json::Value) -> String {
        match body {
            serde_json::Value::Array(a) => a.iter().filter_map(|m| m.as_str()).collect::<Vec<_>>().join(": "),
            other => other.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vcpu_ids_are_a_set_and_count_as_one() {
        let r = ResizeRequest { desired_vcpu_ids: Some(vec![3, 0, 3, 1]), ..Default::default() };
        assert_eq!(r.distinct_vcpu_ids(), Some(vec![0, 1, 3]));
        assert_eq!(r.desired_count(), Some(3));
        assert_eq!(ResizeRequest { desired_vcpus: Some(2), ..r }.desired_count(), Some(2));
        assert_eq!(ResizeRequest::default().desired_count(), None);
    }
}
