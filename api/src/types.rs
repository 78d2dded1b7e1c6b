//! Request and response bodies.

use serde::{Deserialize, Serialize};

/// `PUT /api/v1/vm.resize`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResizeRequest {
    pub desired_vcpus: u32,
    /// Wait up to this long for the guest to complete the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<u64>,
}

/// Longest wait a resize may ask for.
pub const MAX_RESIZE_WAIT_MS: u64 = 10 * 60 * 1000;
/// The wait `?wait=true` means.
pub const DEFAULT_RESIZE_WAIT_MS: u64 = 120 * 1000;

/// Every error reply: `{"error": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// What a handler answers: a status and an optional JSON body.
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

    pub fn error(status: u16, message: impl Into<String>) -> Self {
        let body = ErrorBody { error: message.into() };
        ApiResponse { status, body: Some(serde_json::to_value(body).unwrap_or(serde_json::Value::Null)) }
    }
}
