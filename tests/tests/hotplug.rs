//! Live vCPU hotplug against a real guest: every assertion on CPU sets is on
//! what the guest printed, plus lithe's own vcpu<N> threads.

use std::time::Duration;

use serde_json::json;
use tests::{Guest, Launch, BOOT_TIMEOUT, HOTPLUG_TIMEOUT};

fn states(reply: &serde_json::Value) -> Vec<(u64, String)> {
    reply["vcpus"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["id"].as_u64().unwrap(), v["state"].as_str().unwrap().to_string()))
        .collect()
}

#[test]
fn scales_1_4_2_4_1_and_reuses_parked_vcpus() {
    let mut g = Guest::launch(Launch { cpus: "boot=1,max=4", with_kernel: true, ..Launch::default() });
    g.wait_cpus("0", "0", BOOT_TIMEOUT);
    g.wait_vcpu_threads(&[0], Duration::from_secs(5));

    let r = g.resize(4);
    assert_eq!(r["added"], json!([1, 2, 3]));
    assert_eq!(r["complete"], json!(true), "{r}");
    g.wait_cpus("0-3", "0-3", HOTPLUG_TIMEOUT);
    g.wait_vcpu_threads(&[0, 1, 2, 3], Duration::from_secs(5));

    let r = g.resize(2);
    assert_eq!(r["removing"], json!([3, 2]));
    assert_eq!(states(&r), vec![(3, "parked".into()), (2, "parked".into())], "{r}");
    g.wait_cpus("0-1", "0-1", HOTPLUG_TIMEOUT);
    g.wait_vcpu_threads(&[0, 1], Duration::from_secs(5));

    // Re-adding ids 2 and 3 reuses their parked KVM vCPUs (KVM cannot destroy them).
    let r = g.resize(4);
    assert_eq!(r["added"], json!([2, 3]));
    g.wait_cpus("0-3", "0-3", HOTPLUG_TIMEOUT);
    g.wait_vcpu_threads(&[0, 1, 2, 3], Duration::from_secs(5));
    g.wait_log("vCPU 2: reusing parked KVM vCPU", Duration::from_secs(5));
    g.wait_log("vCPU 3: reusing parked KVM vCPU", Duration::from_secs(5));

    let r = g.resize(1);
    assert_eq!(r["removing"], json!([3, 2, 1]));
    g.wait_cpus("0", "0", HOTPLUG_TIMEOUT);
    g.wait_vcpu_threads(&[0], Duration::from_secs(5));

    // vm.info agrees, from the lock-free table.
    let (status, info) = g.api("GET", "vm.info", json!(null));
    assert_eq!(status, 200);
    assert_eq!(
        states(&info),
        vec![(0, "online".into()), (1, "parked".into()), (2, "parked".into()), (3, "parked".into())]
    );

    // A reset with a re-added (parked, reused) vCPU online sends it a stop
    // IPI: it must still end lithe cleanly, through the i8042 (reboot=k).
    // (On PVM this oopsed the guest until guest-images stopped using PV IPIs.)
    let r = g.resize(2);
    assert_eq!(r["added"], json!([1]));
    g.wait_cpus("0-1", "0-1", HOTPLUG_TIMEOUT);
    g.send("reboot");
    assert_eq!(g.wait_exit(Duration::from_secs(120)).code(), Some(0));
    assert!(g.log_contains("guest requested reset through the i8042"));
}

#[test]
fn refused_eject_rolls_back_and_the_next_resize_works() {
    let mut g = Guest::launch(Launch { cpus: "boot=2,max=3", with_kernel: true, ..Launch::default() });
    g.wait_cpus("0-1", "0-1", BOOT_TIMEOUT);
    // The guest disables ACPI processor hot-removal: Linux answers the eject
    // request with a failure _OST.
    g.send("refuse-eject");
    g.wait_console("LITHE-GUEST refuse-eject=on", HOTPLUG_TIMEOUT);
    let r = g.resize(1);
    assert_eq!(r["complete"], json!(true), "{r}");
    assert_eq!(r["vcpus"][0]["id"], json!(1));
    assert_eq!(r["vcpus"][0]["state"], json!("online"), "{r}");
    assert_eq!(r["vcpus"][0]["rollback"], json!("guest_refused"), "{r}");
    assert!(g.last_report().unwrap().online == "0-1", "the guest kept CPU 1");
    g.wait_vcpu_threads(&[0, 1], Duration::from_secs(5));

    // Not wedged: the next resize up works, and so does removal once allowed.
    let r = g.resize(3);
    assert_eq!(r["added"], json!([2]));
    g.wait_cpus("0-2", "0-2", HOTPLUG_TIMEOUT);
    g.send("allow-eject");
    g.wait_console("LITHE-GUEST refuse-eject=off", HOTPLUG_TIMEOUT);
    let r = g.resize(1);
    assert_eq!(r["removing"], json!([2, 1]));
    g.wait_cpus("0", "0", HOTPLUG_TIMEOUT);
    g.wait_vcpu_threads(&[0], Duration::from_secs(5));
}

#[test]
fn resize_while_a_removal_is_pending() {
    let g = Guest::launch(Launch { cpus: "boot=3,max=3", with_kernel: true, ..Launch::default() });
    g.wait_cpus("0-2", "0-2", BOOT_TIMEOUT);
    // Start a removal without waiting...
    let (status, r) = g.api("PUT", "vm.resize", json!({ "desired_vcpus": 2 }));
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["removing"], json!([2]));
    // ...then ask for 3 again without waiting: id 2 is still being removed and
    // is the only free id, so lithe refuses rather than fight the eject.
    let (status, r) = g.api("PUT", "vm.resize", json!({ "desired_vcpus": 3 }));
    assert_eq!(status, 409, "{r}");
    assert!(r["error"].as_str().unwrap().contains("still being removed"), "{r}");
    // A resize that waits is queued behind the removal instead: it re-adds id 2
    // once the guest has ejected it, reusing the parked vCPU.
    let r = g.resize(3);
    assert_eq!(r["added"], json!([2]), "{r}");
    assert_eq!(r["complete"], json!(true), "{r}");
    g.wait_log("vCPU 2: retired", Duration::from_secs(5));
    g.wait_log("vCPU 2: reusing parked KVM vCPU", Duration::from_secs(5));
    g.wait_cpus("0-2", "0-2", HOTPLUG_TIMEOUT);
    g.wait_vcpu_threads(&[0, 1, 2], Duration::from_secs(5));
}

#[test]
fn an_ignored_eject_times_out_rolls_back_and_the_next_resize_works() {
    let mut g =
        Guest::launch(Launch { cpus: "boot=2,max=2,eject_timeout_ms=5000", with_kernel: true, ..Launch::default() });
    g.wait_cpus("0-1", "0-1", BOOT_TIMEOUT);
    // The guest stops handling GED interrupts: the eject request goes unanswered.
    g.send("ignore-hotplug");
    g.wait_console("LITHE-GUEST hotplug=ignored", HOTPLUG_TIMEOUT);
    let r = g.resize(1);
    assert_eq!(r["complete"], json!(true), "{r}");
    assert_eq!(r["vcpus"][0]["state"], json!("online"), "{r}");
    assert_eq!(r["vcpus"][0]["rollback"], json!("timeout"), "{r}");
    g.wait_log("vCPU 1: guest did not eject it", Duration::from_secs(5));
    assert_eq!(g.last_report().unwrap().online, "0-1", "the guest still has CPU 1");
    g.wait_vcpu_threads(&[0, 1], Duration::from_secs(5));
    // vm.info reports the rollback too.
    let (_, info) = g.api("GET", "vm.info", json!(null));
    assert_eq!(info["vcpus"][1]["rollback"], json!("timeout"), "{info}");

    // Once the guest handles hotplug again, the next resize goes through.
    g.send("allow-hotplug");
    g.wait_console("LITHE-GUEST hotplug=handled", HOTPLUG_TIMEOUT);
    let r = g.resize(1);
    assert_eq!(states(&r), vec![(1, "parked".into())], "{r}");
    g.wait_cpus("0", "0", HOTPLUG_TIMEOUT);
    g.wait_vcpu_threads(&[0], Duration::from_secs(5));
}
