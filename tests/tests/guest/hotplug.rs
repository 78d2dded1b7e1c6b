//! Live vCPU hotplug against a real guest. Every assertion on CPU sets is on
//! what the guest printed (by APIC id, which is lithe's vCPU id), plus
//! lithe's own vcpu<N> threads; the protocol's corner cases are pinned down
//! in process by vmm/tests/hotplug_bed.rs, these prove them on Linux.

use std::time::Duration;

use serde_json::{json, Value};
use tests::{Guest, Launch, BOOT_TIMEOUT, HOTPLUG_TIMEOUT};

fn states(reply: &Value) -> Vec<(u64, String)> {
    reply["vcpus"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["id"].as_u64().unwrap(), v["state"].as_str().unwrap().to_string()))
        .collect()
}

fn info(g: &Guest) -> Value {
    let (status, info) = g.api("GET", "vm.info", json!(null));
    assert_eq!(status, 200, "{info}");
    info
}

/// `vm.info` once `ok` holds for it, or the last answer when `timeout` passes.
fn wait_info(g: &Guest, timeout: Duration, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let i = info(g);
        if ok(&i) || std::time::Instant::now() >= deadline {
            return i;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// 1→4→2→4 (parked vCPUs reused)→1, then 1→3 and a guest reset: the VM
/// comes back with the three vCPUs it had, and `boot_vcpus` says so.
#[test]
fn scales_reuses_parked_vcpus_and_a_guest_reset_keeps_the_count() {
    let mut g = Guest::launch(Launch { cpus: "boot=1,max=4", with_kernel: true, ..Launch::default() });
    g.wait_cpus("0", "0", BOOT_TIMEOUT);
    g.wait_vcpu_threads(&[0], Duration::from_secs(5));

    let r = g.resize(4);
    assert_eq!(r["added"], json!([1, 2, 3]));
    assert_eq!(r["complete"], json!(true), "{r}");
    assert_eq!(states(&r), vec![(1, "running".into()), (2, "running".into()), (3, "running".into())], "{r}");
    g.wait_apic(&[0, 1, 2, 3], HOTPLUG_TIMEOUT);
    g.wait_vcpu_threads(&[0, 1, 2, 3], Duration::from_secs(5));
    // Without a topology, one package: hot-added CPUs join it, as CPUID says.
    assert_eq!(g.kmsg_count("Linux version"), 1, "kmsg-count reads the kernel's log");
    assert_eq!(g.kmsg_count("Converting physical"), 0, "a hot-added CPU left package 0");

    let r = g.resize(2);
    assert_eq!(r["removing"], json!([3, 2]));
    assert_eq!(states(&r), vec![(2, "parked".into()), (3, "parked".into())], "{r}");
    g.wait_apic(&[0, 1], HOTPLUG_TIMEOUT);
    g.wait_vcpu_threads(&[0, 1], Duration::from_secs(5));

    // Re-adding ids 2 and 3 reuses their parked KVM vCPUs (KVM cannot destroy
    // them), right after they were retired: "complete" means running.
    let r = g.resize(4);
    assert_eq!(r["added"], json!([2, 3]));
    assert_eq!(r["complete"], json!(true), "{r}");
    g.wait_apic(&[0, 1, 2, 3], HOTPLUG_TIMEOUT);
    g.wait_vcpu_threads(&[0, 1, 2, 3], Duration::from_secs(5));
    assert!(g.log_contains("vCPU 2: reusing parked KVM vCPU"));
    assert!(g.log_contains("vCPU 2: the guest started it"));

    let r = g.resize(1);
    assert_eq!(r["removing"], json!([3, 2, 1]));
    g.wait_apic(&[0], HOTPLUG_TIMEOUT);
    g.wait_vcpu_threads(&[0], Duration::from_secs(5));
    let i = info(&g);
    assert_eq!(
        states(&i),
        vec![(0, "running".into()), (1, "parked".into()), (2, "parked".into()), (3, "parked".into())]
    );
    assert_eq!(i["config"]["cpus"]["boot_vcpus"], json!(1), "boot_vcpus follows resize");

    // A reset through the i8042 (reboot=k) with re-added vCPUs online: the VM
    // boots again with the count it had. (On PVM this once oopsed the guest
    // until guest-images stopped using PV IPIs.)
    let r = g.resize(3);
    assert_eq!(r["complete"], json!(true), "{r}");
    g.wait_apic(&[0, 1, 2], HOTPLUG_TIMEOUT);
    assert_eq!(info(&g)["config"]["cpus"]["boot_vcpus"], json!(3));
    let mark = g.console_lines();
    g.send("reboot");
    g.wait_log("guest requested reset through the i8042", Duration::from_secs(120));
    g.wait_console_after(mark, "LITHE-GUEST ready", BOOT_TIMEOUT);
    g.wait_cpus("0-2", "0-2", BOOT_TIMEOUT);
    g.wait_apic(&[0, 1, 2], Duration::from_secs(5));
    g.wait_vcpu_threads(&[0, 1, 2], Duration::from_secs(5));
    let i = info(&g);
    assert_eq!(i["config"]["cpus"]["boot_vcpus"], json!(3), "{i}");
    assert_eq!(states(&i)[..3], [(0, "running".into()), (1, "running".into()), (2, "running".into())]);
    g.send("poweroff");
    assert_eq!(g.wait_exit(Duration::from_secs(120)).code(), Some(0));
}

/// A refused eject rolls back to running; the target follows the guest and
/// the reply says why. Then the next resizes work.
#[test]
fn refused_eject_rolls_back_and_the_next_resize_works() {
    let mut g = Guest::launch(Launch { cpus: "boot=2,max=3", with_kernel: true, ..Launch::default() });
    g.wait_cpus("0-1", "0-1", BOOT_TIMEOUT);
    // The guest disables ACPI processor hot-removal: Linux answers the eject
    // request with a failure _OST.
    g.send("refuse-eject");
    g.wait_console("LITHE-GUEST refuse-eject=on", HOTPLUG_TIMEOUT);
    let r = g.resize(1);
    assert_eq!(r["complete"], json!(false), "{r}");
    assert!(r["ended"].as_str().unwrap().contains("refused"), "{r}");
    assert_eq!(r["vcpus"][0]["id"], json!(1));
    assert_eq!(r["vcpus"][0]["state"], json!("running"), "{r}");
    assert_eq!(r["vcpus"][0]["reason"], json!("eject_refused"), "{r}");
    assert_eq!(r["target"]["desired"], json!(2), "{r}");
    assert_eq!(g.last_report().unwrap().apic, "0,1", "the guest kept CPU 1");
    assert_eq!(info(&g)["config"]["cpus"]["boot_vcpus"], json!(2));
    g.wait_vcpu_threads(&[0, 1], Duration::from_secs(5));

    // Not wedged: the next resize up works, and so does removal once allowed.
    let r = g.resize(3);
    assert_eq!(r["added"], json!([2]));
    g.wait_apic(&[0, 1, 2], HOTPLUG_TIMEOUT);
    g.send("allow-eject");
    g.wait_console("LITHE-GUEST refuse-eject=off", HOTPLUG_TIMEOUT);
    let r = g.resize(1);
    assert_eq!(r["removing"], json!([2, 1]));
    assert_eq!(r["complete"], json!(true), "{r}");
    g.wait_apic(&[0], HOTPLUG_TIMEOUT);
    g.wait_vcpu_threads(&[0], Duration::from_secs(5));
}

/// 4→1 without waiting, then 3 before the ejects finish: accepted (no 409),
/// and lithe converges on three vCPUs the guest runs. The same resize sent
/// twice at once is one change, and both callers hear it completed.
#[test]
fn retarget_while_removals_are_pending_and_the_same_resize_twice() {
    let g = Guest::launch(Launch { cpus: "boot=1,max=4", with_kernel: true, ..Launch::default() });
    g.wait_cpus("0", "0", BOOT_TIMEOUT);
    let r = g.resize(4);
    assert_eq!(r["complete"], json!(true), "{r}");
    g.wait_apic(&[0, 1, 2, 3], HOTPLUG_TIMEOUT);

    let (status, r) = g.api("PUT", "vm.resize", json!({ "desired_vcpus": 1, "wait_ms": 0 }));
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["removing"], json!([3, 2, 1]));
    let r = g.resize(3);
    assert_eq!(r["complete"], json!(true), "{r}");
    assert_eq!(r["target"]["desired"], json!(3), "{r}");
    let i = info(&g);
    let running: Vec<u64> = states(&i).into_iter().filter(|(_, s)| s == "running").map(|(id, _)| id).collect();
    assert_eq!(running.len(), 3, "{i}");
    let ids: Vec<u32> = running.iter().map(|&id| id as u32).collect();
    g.wait_apic(&ids, HOTPLUG_TIMEOUT);
    g.wait_vcpu_threads(&ids, Duration::from_secs(5));

    let replies: Vec<Value> = std::thread::scope(|s| {
        let a = s.spawn(|| g.resize(2));
        let b = s.spawn(|| g.resize(2));
        vec![a.join().unwrap(), b.join().unwrap()]
    });
    for r in &replies {
        assert_eq!(r["complete"], json!(true), "{r}");
        assert_eq!(r["target"]["desired"], json!(2), "{r}");
    }
    assert_eq!(replies[0]["target"]["seq"], replies[1]["target"]["seq"], "one change, not two");
    let i = info(&g);
    let ids: Vec<u32> = states(&i).into_iter().filter(|(_, s)| s == "running").map(|(id, _)| id as u32).collect();
    assert_eq!(ids.len(), 2, "{i}");
    g.wait_apic(&ids, HOTPLUG_TIMEOUT);
    g.wait_vcpu_threads(&ids, Duration::from_secs(5));
}

/// An add taken back before the guest saw it is never reported; an ignored
/// eject times out and rolls back, also across a pause (deadlines stop while
/// paused); the next resize works.
#[test]
fn ignored_hotplug_times_out_and_rolls_back_to_what_the_guest_has() {
    let mut g =
        Guest::launch(Launch { cpus: "boot=2,max=3,eject_timeout_ms=5000", with_kernel: true, ..Launch::default() });
    g.wait_cpus("0-1", "0-1", BOOT_TIMEOUT);
    // The guest stops handling GED interrupts: hotplug requests go unanswered.
    g.send("ignore-hotplug");
    g.wait_console("LITHE-GUEST hotplug=ignored", HOTPLUG_TIMEOUT);

    // Add, then remove before the guest scanned: taken back, never "online".
    let (status, r) = g.api("PUT", "vm.resize", json!({ "desired_vcpus": 3, "wait_ms": 0 }));
    assert_eq!((status, &r["added"]), (200, &json!([2])), "{r}");
    // Cloud Hypervisor's answer without a wait: 204, under way.
    let (status, r) = g.api("PUT", "vm.resize", json!({ "desired_vcpus": 2 }));
    assert_eq!(status, 204, "{r}");
    let i = info(&g);
    assert_eq!(i["vcpus"][2]["state"], json!("parked"), "{i}");
    assert_eq!(i["vcpus"][2]["reason"], json!("add_cancelled"), "{i}");
    g.wait_vcpu_threads(&[0, 1], Duration::from_secs(5));

    // An ignored eject, with a pause in the middle that does not count.
    let (status, r) = g.api("PUT", "vm.resize", json!({ "desired_vcpus": 1, "wait_ms": 0 }));
    assert_eq!((status, &r["removing"]), (200, &json!([1])), "{r}");
    assert_eq!(g.api("PUT", "vm.pause", json!(null)).0, 204);
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(info(&g)["vcpus"][1]["state"], json!("removing"), "the deadline stood still while paused");
    assert_eq!(g.api("PUT", "vm.resume", json!(null)).0, 204);
    g.wait_log("vCPU 1: guest did not eject it", Duration::from_secs(30));
    // The vCPU's state is rolled back first, then the target follows it (a
    // step of its own, which a busy host can put a moment after the log line).
    let i = wait_info(&g, Duration::from_secs(30), |i| i["target"]["desired"] == json!(2));
    assert_eq!(i["vcpus"][1]["state"], json!("running"), "{i}");
    assert_eq!(i["vcpus"][1]["reason"], json!("eject_timeout"), "{i}");
    assert_eq!(i["target"]["desired"], json!(2), "{i}");
    assert_eq!(g.last_report().unwrap().apic, "0,1", "the guest still has CPU 1");
    g.wait_vcpu_threads(&[0, 1], Duration::from_secs(5));

    // Once the guest handles hotplug again, the next resize goes through.
    g.send("allow-hotplug");
    g.wait_console("LITHE-GUEST hotplug=handled", HOTPLUG_TIMEOUT);
    let r = g.resize(1);
    assert_eq!(r["complete"], json!(true), "{r}");
    assert_eq!(states(&r), vec![(1, "parked".into())], "{r}");
    g.wait_apic(&[0], HOTPLUG_TIMEOUT);
    g.wait_vcpu_threads(&[0], Duration::from_secs(5));
}

/// The guest ejects a CPU on its own: lithe retires it and the count follows.
/// Then a waiting resize the guest cannot complete spans a `vm.reboot`: it
/// ends at once, saying so, and the VM comes back with the target count.
#[test]
fn guest_initiated_eject_and_a_wait_across_vm_reboot() {
    let mut g = Guest::launch(Launch { cpus: "boot=3,max=3", with_kernel: true, ..Launch::default() });
    g.wait_cpus("0-2", "0-2", BOOT_TIMEOUT);
    g.send("eject-cpu 2");
    g.wait_console("LITHE-GUEST eject-cpu=2", HOTPLUG_TIMEOUT);
    g.wait_apic(&[0, 1], HOTPLUG_TIMEOUT);
    g.wait_vcpu_threads(&[0, 1], Duration::from_secs(10));
    let i = info(&g);
    assert_eq!(i["vcpus"][2]["state"], json!("parked"), "{i}");
    assert_eq!(i["vcpus"][2]["reason"], json!("ejected_by_guest"), "{i}");
    assert_eq!(i["config"]["cpus"]["boot_vcpus"], json!(2), "{i}");

    g.send("ignore-hotplug");
    g.wait_console("LITHE-GUEST hotplug=ignored", HOTPLUG_TIMEOUT);
    let reply = std::thread::scope(|s| {
        let waiting = s.spawn(|| g.resize(3));
        g.wait_log("reconcile towards 3", Duration::from_secs(30));
        let (status, r) = g.api("PUT", "vm.reboot", json!(null));
        assert_eq!(status, 204, "{r}");
        waiting.join().unwrap()
    });
    assert_eq!(reply["complete"], json!(false), "{reply}");
    assert!(reply["ended"].as_str().unwrap().contains("rebooted"), "{reply}");
    // The reboot boots the target (3): the guest comes back with all three.
    g.wait_cpus("0-2", "0-2", BOOT_TIMEOUT);
    g.wait_apic(&[0, 1, 2], Duration::from_secs(5));
    g.wait_vcpu_threads(&[0, 1, 2], Duration::from_secs(5));
    g.send("poweroff");
    assert_eq!(g.wait_exit(Duration::from_secs(120)).code(), Some(0));
}
