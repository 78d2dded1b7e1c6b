//! Requests through the router and their JSON bodies: every request maps
//! to an action or to an error reply in Cloud Hypervisor's shape.
#![no_main]

use api::http::read_request;
use api::routes::{failure, respond, route};
use api::{ActionError, VmmData};
use vmm::resize::ResizeError;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(req) = read_request(&mut &data[..], &mut Vec::new(), &mut || Ok(())) else { return };
    match route(&req, Vec::new()) {
        Ok(action) => {
            // Whatever the VMM answers, the reply is well-formed.
            let failure = failure(&action);
            assert!(!failure.is_empty());
            let ok = respond(failure, Ok(VmmData::Empty));
            assert_eq!(ok.status, 204);
            let text = String::from_utf8_lossy(data).into_owned();
            let err = respond(failure, Err(ActionError::Resize(ResizeError::VcpuFailed { vcpu: 1, error: text, target: 1 })));
            assert!(err.body.is_some_and(|b| b.is_array()));
        }
        Err(reply) => {
            assert!((400..500).contains(&reply.status), "{}", reply.status);
            assert!(reply.body.as_ref().is_some_and(|b| b.as_array().is_some_and(|a| a.len() >= 2)));
        }
    }
});
