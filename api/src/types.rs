//! Request bodies and the HTTP-level response.

use serde::{Deserialize, Serialize};

/// `PUT /api/v1/vm.resize`'s body: Cloud Hypervisor's `VmResize` plus
/// lithe's `desired_vcpu_ids` and `wait_ms`. Only decoded here; the resize
/// module validates it ([`vmm::resize::ResizeRequest::new`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResizeBody {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_vcpus: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_vcpu_ids: Option<Vec<u32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_ram: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_balloon: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<u64>,
}

impl From<ResizeBody> for vmm::resize::ResizeFields {
    fn from(b: ResizeBody) -> Self {
        vmm::resize::ResizeFields {
            desired_vcpus: b.desired_vcpus,
            desired_vcpu_ids: b.desired_vcpu_ids,
            desired_ram: b.desired_ram,
            desired_balloon: b.desired_balloon,
            wait_ms: b.wait_ms,
        }
    }
}

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
