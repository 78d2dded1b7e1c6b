//! Cloud Hypervisor's unmodified `ch-remote` (../shared/peers) against
//! lithe's API server, in process: every command it has for what lithe
//! serves exits 0 and reaches the handler as the right action, and the
//! commands for features lithe lacks fail with the reason. No guest: this
//! pins the wire; tests/tests/guest/ch_remote.rs drives a real VM with it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use api::action::{VmInfoResponse, VmState, VmmPingResponse};
use api::vm_config::{CpusConfig, MemoryConfig, PayloadConfig, VmConfig};
use api::{ActionError, ApiHandler, ApiServer, VmmAction, VmmData};

/// Records every action and answers the way lithe's VMM does.
#[derive(Default)]
struct Recorder(Mutex<Vec<VmmAction>>);

impl ApiHandler for Recorder {
    fn handle(&self, action: VmmAction) -> Result<VmmData, ActionError> {
        self.0.lock().unwrap().push(action.clone());
        match action {
            VmmAction::Ping => Ok(VmmData::Pong(VmmPingResponse {
                build_version: "v".into(),
                version: "0.0.0".into(),
                pid: 42,
                features: vec!["kvm".into()],
            })),
            VmmAction::VmInfo => Ok(VmmData::VmInfo(Box::new(VmInfoResponse {
                config: VmConfig {
                    cpus: Some(CpusConfig {
                        boot_vcpus: 2,
                        max_vcpus: 4,
                        topology: None,
                        kvm_hyperv: Some(false),
                        max_phys_bits: None,
                        nested: Some(true),
                        affinity: None,
                        features: None,
                        core_scheduling: None,
                        eject_timeout_ms: None,
                    }),
                    memory: Some(MemoryConfig {
                        size: 1 << 28,
                        hotplug_size: None,
                        hotplugged_size: None,
                        mergeable: None,
                        hotplug_method: None,
                        shared: None,
                        hugepages: None,
                        hugepage_size: None,
                        prefault: None,
                        reserve: None,
                        thp: None,
                        zones: None,
                    }),
                    payload: PayloadConfig { kernel: Some("/k".into()), ..Default::default() },
                    ..Default::default()
                },
                state: VmState::Running,
                memory_actual_size: 1 << 28,
                lithe: Default::default(),
            }))),
            VmmAction::Counters => {
                Ok(VmmData::Counters([("cpu-hotplug".to_string(), [("scans".to_string(), 3u64)].into())].into()))
            }
            VmmAction::Resize(r) if r.desired_vcpus == Some(99) => Err(ActionError::Invalid("too many".into())),
            _ => Ok(VmmData::Empty),
        }
    }
}

fn ch_remote() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/peers/ch-remote");
    if p.exists() {
        Some(p)
    } else {
        eprintln!("!!! SKIPPED: {} is missing; the ch-remote conformance test did not run !!!", p.display());
        None
    }
}

fn run(bin: &Path, socket: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(bin).arg("--api-socket").arg(socket).args(args).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn ch_remote_drives_every_served_endpoint() {
    let Some(bin) = ch_remote() else { return };
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    let rec = Arc::new(Recorder::default());
    let _server = ApiServer::start(&socket, rec.clone()).unwrap();
    let config = dir.path().join("vm.json");
    std::fs::write(&config, r#"{"payload":{"kernel":"/k"},"cpus":{"boot_vcpus":1,"max_vcpus":2}}"#).unwrap();

    let ok: &[(&[&str], &str)] = &[
        (&["ping"], "\"pid\":42"),
        (&["info"], "\"boot_vcpus\": 2"),
        (&["counters"], "\"scans\": 3"),
        (&["create", config.to_str().unwrap()], ""),
        (&["boot"], ""),
        (&["resize", "--cpus", "3"], ""),
        (&["pause"], ""),
        (&["resume"], ""),
        (&["reboot"], ""),
        (&["power-button"], ""),
        (&["shutdown"], ""),
        (&["delete"], ""),
        (&["shutdown-vmm"], ""),
    ];
    for (args, want) in ok {
        let (code, out) = run(&bin, &socket, args);
        assert_eq!(code, 0, "ch-remote {args:?}: {out}");
        assert!(out.replace(": ", ":").contains(&want.replace(": ", ":")), "ch-remote {args:?} printed {out:?}");
    }
    let seen = rec.0.lock().unwrap().clone();
    let resize = seen.iter().find_map(|a| match a {
        VmmAction::Resize(r) => Some(r.clone()),
        _ => None,
    });
    let r = resize.expect("the resize reached the VMM");
    assert_eq!((r.desired_vcpus, r.desired_ram, r.desired_balloon, r.wait_ms), (Some(3), None, None, None));
    assert!(seen.iter().any(|a| matches!(a, VmmAction::CreateVm(c) if c.cpus.as_ref().unwrap().max_vcpus == 2)));
    assert_eq!(seen.len(), ok.len());

    // Errors: ch-remote fails and shows lithe's messages.
    let (code, out) = run(&bin, &socket, &["resize", "--cpus", "99"]);
    assert_ne!(code, 0);
    assert!(out.contains("too many"), "{out}");
    let (code, out) = run(&bin, &socket, &["add-disk", "path=/tmp/x"]);
    assert_ne!(code, 0);
    assert!(out.contains("lithe has no block devices"), "{out}");
}
