//! lithe's REST API: HTTP/1.1 with JSON bodies over a Unix socket, shaped
//! like Cloud Hypervisor's so its curl scripts and tooling carry over.
//!
//! This crate knows HTTP, routes and request/response types; what a request
//! does is up to the [`server::ApiHandler`] the VMM supplies.

pub mod client;
pub mod http;
pub mod routes;
pub mod server;
pub mod types;

pub use routes::ApiRequest;
pub use server::{ApiHandler, ApiServer, ThreadInit};
pub use types::{ApiResponse, ErrorBody};
