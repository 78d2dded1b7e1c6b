//! Cloud Hypervisor's unmodified `ch-remote` (../shared/peers) against
//! lithe's API server, in process: every command it has for what lithe
//! serves exits 0 and reaches the handler as the right action, and the
//! commands for features lithe lacks fail with the reason. No guest: this
//! pins the wire; tests/tests/guest/ch_remote.rs drives a real VM with it.

use std::path::Path;
use std::process::Command as Process;
use std::sync::{Arc, Mutex};

use api::{ActionError, ApiHandler, ApiServer, VmmAction, VmmData};
use vmm::resize::{ResizeError, Want};
use vmm::rpc::{Command, Query};

mod common;

/// Records every action and answers the way lithe's VMM does.
#[derive(Default)]
struct Recorder(Mutex<Vec<VmmAction>>);

impl ApiHandler for Recorder {
    fn handle(&self, action: VmmAction) -> Result<VmmData, ActionError> {
        self.0.lock().unwrap().push(action.clone());
        match action {
            VmmAction::Query(Query::Ping) => Ok(common::pong("0.0.0", 42)),
            VmmAction::Query(Query::VmInfo) => Ok(common::info(2, 4)),
            VmmAction::Query(Query::Counters) => {
                Ok(VmmData::Counters([("cpu-hotplug".to_string(), [("scans".to_string(), 3u64)].into())].into()))
            }
            VmmAction::Command(Command::Resize(r)) if r.want == Some(Want::Count(99)) => {
                Err(ActionError::Resize(ResizeError::CountOutOfRange { desired: 99, max: 4 }))
            }
            _ => Ok(VmmData::Empty),
        }
    }
}

fn run(bin: &Path, socket: &Path, args: &[&str]) -> (i32, String) {
    let out = Process::new(bin).arg("--api-socket").arg(socket).args(args).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn ch_remote_drives_every_served_endpoint() {
    let Some(bin) = prereq::peer("ch_remote_drives_every_served_endpoint", "ch-remote") else { return };
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
        VmmAction::Command(Command::Resize(r)) => Some(r.clone()),
        _ => None,
    });
    let r = resize.expect("the resize reached the VMM");
    assert_eq!((r.want, r.wait), (Some(Want::Count(3)), None), "ch-remote's null desired_ram/balloon are accepted");
    assert!(seen.iter().any(|a| matches!(a, VmmAction::Command(Command::CreateVm(c)) if c.as_ref().as_ref().is_ok_and(|c| c.cpus.max_vcpus == 2))));
    assert_eq!(seen.len(), ok.len());

    // Errors: ch-remote fails and shows lithe's messages.
    let (code, out) = run(&bin, &socket, &["resize", "--cpus", "99"]);
    assert_ne!(code, 0);
    assert!(out.contains("desired_vcpus must be between 1 and 4, got 99"), "{out}");
    let (code, out) = run(&bin, &socket, &["add-disk", "path=/tmp/x"]);
    assert_ne!(code, 0);
    assert!(out.contains("lithe has no block devices"), "{out}");
}
