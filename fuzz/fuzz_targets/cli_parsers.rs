//! The CLI's `--cpus`, `--memory`, `--serial` parsers: no panics, and what
//! they accept and validation passes is consistent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmm::config::{parse_cpus, parse_memory, parse_serial, parse_size, validate_cpus};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(c) = parse_cpus(s) {
        if validate_cpus(&c, vmm::config::KvmLimits::new(1024, 4096)).is_ok() {
            assert!(c.boot_vcpus >= 1 && c.boot_vcpus <= c.max_vcpus);
            if let Some(t) = c.topology {
                let total = u64::from(t.threads_per_core)
                    * u64::from(t.cores_per_die)
                    * u64::from(t.dies_per_package)
                    * u64::from(t.packages);
                assert_eq!(total, u64::from(c.max_vcpus));
            }
        }
    }
    if let Ok(m) = parse_memory(s) {
        assert_eq!(parse_size(s.strip_prefix("size=").unwrap_or(s)), Ok(m.size));
    }
    let _ = parse_serial(s);
});
