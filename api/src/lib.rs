//! lithe's REST API: HTTP/1.1 with JSON bodies over a Unix socket, shaped
//! like Cloud Hypervisor's so its curl scripts and tooling carry over.
//!
//! This crate knows HTTP, routes and request/response types. The VMM sees
//! none of it: it implements [`server::ApiHandler`], taking a typed
//! [`VmmAction`] and returning [`VmmData`] or an [`ActionError`].

pub mod action;
pub mod client;
pub mod http;
pub mod routes;
pub mod server;
pub mod types;
pub mod vm_config;

pub use action::{ActionError, VmmAction, VmmData};
pub use server::{ApiHandler, ApiServer, ThreadInit};
pub use types::ApiResponse;
