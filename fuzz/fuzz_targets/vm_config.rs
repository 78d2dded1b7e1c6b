//! `vm.create` bodies: Cloud Hypervisor's schema, lithe's refusals, and the
//! round trip `vm.info` relies on (what it reports decodes to the same config).
#![no_main]

use libfuzzer_sys::fuzz_target;
use api::config_wire::{from_wire, to_wire, WireError};

fuzz_target!(|data: &[u8]| {
    let Ok(wire) = serde_json::from_slice::<api::vm_config::VmConfig>(data) else { return };
    match from_wire(&wire) {
        Ok(config) => {
            let reported = to_wire(&config);
            let text = serde_json::to_vec(&reported).unwrap();
            let again: api::vm_config::VmConfig = serde_json::from_slice(&text).unwrap();
            assert_eq!(from_wire(&again), Ok(config));
            let _ = config_validate(&again);
        }
        Err(WireError::Unsupported(fields)) => assert!(!fields.is_empty()),
        Err(WireError::Invalid(m)) => assert!(!m.is_empty()),
    }
});

fn config_validate(w: &api::vm_config::VmConfig) -> bool {
    from_wire(w).map(|c| c.validate(vmm::config::KvmLimits::new(1024, 4096)).is_ok()).unwrap_or(false)
}
