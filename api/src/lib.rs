//! lithe's REST API: HTTP/1.1 with JSON bodies over a Unix socket, shaped
//! like Cloud Hypervisor's so its curl scripts and tooling carry over.
//!
//! This crate sits on top of the VMM: it knows HTTP, routes, the wire
//! schema (Cloud Hypervisor's `VmConfig`, [`config_wire`]) and the response
//! shapes, and turns requests into the VMM's own [`vmm::rpc::VmmAction`].
//! The VMM knows none of it.

pub mod client;
pub mod config_wire;
pub mod config_wire_devices;
pub mod http;
pub mod responses;
pub mod routes;
pub mod server;
pub mod types;
pub mod vm_config;

pub use server::{ApiHandler, ApiServer, ThreadInit};
pub use types::ApiResponse;
pub use vmm::rpc::{ActionError, VmmAction, VmmData};
