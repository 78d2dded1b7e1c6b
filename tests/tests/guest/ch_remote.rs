//! Drop-in for Cloud Hypervisor: its unmodified `ch-remote`
//! (../shared/peers/ch-remote) drives a real lithe VM, and Kata's clh
//! driver's request sequence is replayed. Every assertion that matters is on
//! what the guest printed.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use tests::netns::{put_with_fds, Netns};
use tests::{Guest, GuestImage, Launch, BOOT_TIMEOUT, HOTPLUG_TIMEOUT};

/// Cloud Hypervisor's `ch-remote`; missing, it fails `test` under CI.
fn ch_remote(test: &str) -> Option<PathBuf> {
    prereq::peer(test, "ch-remote")
}

/// Runs `ch-remote --api-socket S args…`; returns its exit code and output.
fn ch(bin: &Path, g: &Guest, args: &[&str]) -> (i32, String) {
    let out = Command::new(bin).arg("--api-socket").arg(&g.socket).args(args).output().expect("run ch-remote");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

fn ch_ok(bin: &Path, g: &Guest, args: &[&str]) -> String {
    let (code, out) = ch(bin, g, args);
    assert_eq!(code, 0, "ch-remote {args:?} failed: {out}");
    out
}

fn ch_json(bin: &Path, g: &Guest, args: &[&str]) -> Value {
    let out = ch_ok(bin, g, args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("ch-remote {args:?} printed no JSON ({e}): {out}"))
}

/// A VM launched from the command line: ping, info, resize up and down,
/// pause, resume, counters, reboot, shutdown, delete, shutdown-vmm.
#[test]
fn ch_remote_drives_a_running_vm() {
    let Some(bin) = ch_remote("guest::ch_remote::ch_remote_drives_a_running_vm") else { return };
    let events = std::env::temp_dir().join(format!("lithe-events-{}.json", std::process::id()));
    let monitor = format!("path={}", events.display());
    let mut g = Guest::launch(Launch {
        cpus: "boot=1,max=3",
        with_kernel: true,
        args: &["--event-monitor", &monitor],
        ..Launch::default()
    });
    g.wait_cpus("0", "0", BOOT_TIMEOUT);
    let modes = g.thread_seccomp_modes();
    assert!(modes.iter().any(|(n, m)| n == "event-monitor" && *m == 2), "the monitor thread is filtered: {modes:?}");

    let ping = ch_json(&bin, &g, &["ping"]);
    assert_eq!(ping["pid"], json!(g.child.id()), "{ping}");
    assert!(ping["version"].is_string() && ping["build_version"].is_string(), "{ping}");
    let info = ch_json(&bin, &g, &["info"]);
    assert_eq!((info["state"].as_str(), &info["config"]["cpus"]["boot_vcpus"]), (Some("Running"), &json!(1)));

    // Up and down: the guest onlines, then offlines and ejects.
    ch_ok(&bin, &g, &["resize", "--cpus", "3"]);
    g.wait_cpus("0-2", "0-2", HOTPLUG_TIMEOUT);
    assert_eq!(ch_json(&bin, &g, &["info"])["config"]["cpus"]["boot_vcpus"], json!(3));
    ch_ok(&bin, &g, &["resize", "--cpus", "1"]);
    g.wait_cpus("0", "0", HOTPLUG_TIMEOUT);
    g.wait_vcpu_threads(&[0], Duration::from_secs(30));
    let counters = ch_json(&bin, &g, &["counters"]);
    assert!(counters["cpu-hotplug"]["ejects"].as_u64() >= Some(2), "{counters}");
    assert!(counters["vmm"]["last_eject_to_joined_ns"].as_u64() > Some(0), "{counters}");

    // Pause: console input reaches the UART but the guest does not read it;
    // resume: it does, and answers. The event waited for is lithe handing
    // the input to the UART; at that moment the guest has read none of it.
    // (An absence has no event of its own: a broken pause would show here as
    // a read byte or a pong, at once or within the guest's reaction time.)
    ch_ok(&bin, &g, &["pause"]);
    assert_eq!(ch_json(&bin, &g, &["info"])["state"], json!("Paused"));
    let serial = |g: &Guest| ch_json(&bin, g, &["counters"])["serial"].clone();
    let before = serial(&g);
    let mark = g.console_lines();
    g.send("ping");
    let queued = before["input_queued_bytes"].as_u64().unwrap() + 5;
    let deadline = std::time::Instant::now() + HOTPLUG_TIMEOUT;
    let during = loop {
        let now = serial(&g);
        if now["input_queued_bytes"].as_u64() >= Some(queued) {
            break now;
        }
        assert!(std::time::Instant::now() < deadline, "lithe never queued the console input: {now}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(during["input_read_bytes"], before["input_read_bytes"], "a paused guest read its console");
    assert!(!g.console_since(mark).iter().any(|l| l.contains("LITHE-GUEST pong")), "a paused guest answered");
    ch_ok(&bin, &g, &["resume"]);
    g.wait_console_after(mark, "LITHE-GUEST pong", HOTPLUG_TIMEOUT);
    assert!(serial(&g)["input_read_bytes"].as_u64() >= Some(queued), "resumed, the guest read its input");

    // Reboot: the guest boots again, with the count it had.
    let mark = g.console_lines();
    ch_ok(&bin, &g, &["reboot"]);
    g.wait_console_after(mark, "LITHE-GUEST ready", BOOT_TIMEOUT);
    g.wait_apic(&[0], BOOT_TIMEOUT);

    // Shutdown: the VM stops, the VMM stays; delete; shutdown-vmm ends it.
    ch_ok(&bin, &g, &["shutdown"]);
    assert_eq!(ch_json(&bin, &g, &["info"])["state"], json!("Created"));
    g.wait_vcpu_threads(&[], Duration::from_secs(30));
    ch_ok(&bin, &g, &["delete"]);
    let (code, out) = ch(&bin, &g, &["info"]);
    assert!(code != 0 && out.contains("not created"), "{code}: {out}");
    ch_ok(&bin, &g, &["shutdown-vmm"]);
    assert_eq!(g.wait_exit(Duration::from_secs(60)).code(), Some(0));

    // The event monitor followed all of it, vCPU by vCPU.
    let text = std::fs::read_to_string(&events).unwrap();
    let _ = std::fs::remove_file(&events);
    let records: Vec<Value> = text
        .split("\n\n")
        .filter(|r| !r.trim().is_empty())
        .map(|r| serde_json::from_str(r).unwrap_or_else(|e| panic!("not a JSON record ({e}): {r}")))
        .collect();
    let seen = |source: &str, id: Option<&str>| -> Vec<String> {
        records
            .iter()
            .filter(|r| r["source"] == source && id.is_none_or(|id| r["properties"]["id"] == id))
            .map(|r| r["event"].as_str().unwrap_or("").to_string())
            .collect()
    };
    let vcpu2 = seen("vcpu", Some("2"));
    for step in ["added", "running", "eject-requested", "ejected", "parked"] {
        assert!(vcpu2.contains(&step.to_string()), "vCPU 2 never {step}: {vcpu2:?}");
    }
    let order: Vec<usize> = ["added", "running", "eject-requested", "ejected", "parked"]
        .iter()
        .map(|s| vcpu2.iter().position(|e| e == s).unwrap())
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "out of order: {vcpu2:?}");
    assert!(seen("cpu-hotplug", Some("2")).contains(&"ost".to_string()), "no _OST for vCPU 2");
    let vm = seen("vm", None);
    for e in ["booted", "paused", "resumed", "rebooted", "shutdown", "deleted"] {
        assert!(vm.contains(&e.to_string()), "no vm {e} event: {vm:?}");
    }
    assert_eq!(seen("vmm", None), ["starting", "shutdown"]);
}

/// lithe started with only `--api-socket`: ch-remote creates and boots the
/// VM, and the guest powers off on ch-remote's power button.
#[test]
fn ch_remote_creates_boots_and_presses_the_power_button() {
    let Some(bin) = ch_remote("guest::ch_remote::ch_remote_creates_boots_and_presses_the_power_button") else { return };
    let mut g = Guest::launch(Launch { cpus: "", with_kernel: false, ..Launch::default() });
    let image = GuestImage::locate();
    let config = g.socket.with_file_name("vm.json");
    let body = json!({
        "payload": { "kernel": image.kernel, "initramfs": image.initramfs, "cmdline": image.cmdline },
        "cpus": { "boot_vcpus": 2, "max_vcpus": 2 },
        "memory": { "size": 256u64 << 20 },
        "serial": { "mode": "Tty" },
        "console": { "mode": "Off" },
    });
    std::fs::write(&config, body.to_string()).unwrap();
    ch_ok(&bin, &g, &["create", config.to_str().unwrap()]);
    assert_eq!(ch_json(&bin, &g, &["info"])["state"], json!("Created"));
    ch_ok(&bin, &g, &["boot"]);
    g.wait_cpus("0-1", "0-1", BOOT_TIMEOUT);

    ch_ok(&bin, &g, &["power-button"]);
    g.wait_console("LITHE-GUEST power-button", HOTPLUG_TIMEOUT);
    assert_eq!(g.wait_exit(Duration::from_secs(60)).code(), Some(0), "the guest powered off, and lithe with it");
}

/// One request to the guest's agent, as Kata's shim makes it: a connection
/// through the hybrid-vsock socket (`CONNECT 1024`), one line each way.
fn agent(hvsock: &Path, request: &str) -> String {
    let mut s = std::os::unix::net::UnixStream::connect(hvsock).unwrap();
    s.set_read_timeout(Some(HOTPLUG_TIMEOUT)).unwrap();
    s.write_all(b"CONNECT 1024\n").unwrap();
    let mut reader = std::io::BufReader::new(s.try_clone().unwrap());
    let mut ok = String::new();
    std::io::BufRead::read_line(&mut reader, &mut ok).unwrap();
    assert!(ok.starts_with("OK "), "{ok:?}");
    s.write_all(format!("AGENT {request}\n").as_bytes()).unwrap();
    let mut answer = String::new();
    std::io::BufRead::read_line(&mut reader, &mut answer).unwrap();
    answer.trim_end().to_string()
}

/// Kata Containers' clh driver (src/runtime/virtcontainers/clh.go), the
/// whole pod sequence: its launch flags, virtiofsd started first, its
/// vm.create body with every field it sends (disk-less here: the guest
/// image is the initramfs), vm.add-net with the pod's TAP fd, its state
/// checks, boot, the agent dialled over hybrid vsock, the share mounted and
/// read through virtio-fs, traffic over the TAP, a resize computed from
/// `boot_vcpus`, vmm.shutdown. Every check is on what the guest answered.
#[test]
fn katas_clh_driver_sequence() {
    let test = "guest::ch_remote::katas_clh_driver_sequence";
    let dir = tempfile::tempdir().unwrap();
    // The pod's shared directory, served by an unmodified virtiofsd, which
    // Kata starts before it creates the VM.
    let shared = dir.path().join("shared");
    std::fs::create_dir_all(shared.join("pod")).unwrap();
    let config = br#"{"ociVersion": "1.0.2", "process": {"args": ["sh"]}}"#;
    std::fs::write(shared.join("pod/config.json"), config).unwrap();
    let Some(_virtiofsd) = tests::virtiofsd::Virtiofsd::start(test, dir.path(), &shared) else { return };
    let Some(ns) = Netns::new("kata") else { return };

    let mut g = Guest::launch(Launch {
        cpus: "",
        with_kernel: false,
        args: &["-vv", "--seccomp", "false"],
        ..Launch::default()
    });
    // waitVMM: vmm.ping until it answers.
    let (s, ping) = g.api("GET", "vmm.ping", Value::Null);
    assert_eq!((s, ping["pid"].as_u64()), (200, Some(u64::from(g.child.id()))));

    let image = GuestImage::locate();
    let mut body: Value = serde_json::from_str(api::vm_config::KATA_VM_CREATE).unwrap();
    body["payload"] = json!({ "kernel": image.kernel, "initramfs": image.initramfs, "cmdline": image.cmdline });
    body["cpus"]["max_vcpus"] = json!(2);
    body["cpus"]["topology"]["cores_per_die"] = json!(2);
    // Where this test can make them: the vsock socket and virtiofsd's.
    let hvsock = dir.path().join("kata.hvsock");
    body["vsock"]["socket"] = json!(hvsock);
    body["fs"][0]["socket"] = json!(dir.path().join("virtiofsd.sock"));
    let (s, r) = g.api("PUT", "vm.create", body);
    assert_eq!(s, 204, "Kata's whole body is taken: {r}");
    // AddNet: Kata opens the pod's TAP in its network namespace and sends
    // the fd with vm.add-net (SCM_RIGHTS), with its generated client's body.
    let tap = ns.open_tap("ktap0");
    ns.ip(&["addr", "add", "10.78.0.1/24", "dev", "ktap0"]);
    ns.ip(&["link", "set", "ktap0", "up"]);
    assert_eq!(put_with_fds(&g.socket, "vm.add-net", api::vm_config::KATA_ADD_NET, &[&tap]), 204);
    drop(tap); // lithe holds its own copy now
    let (s, info) = g.api("GET", "vm.info", Value::Null);
    assert_eq!((s, info["state"].as_str()), (200, Some("Created")), "{info}");
    assert_eq!(info["config"]["net"][0]["mac"], json!("02:42:ac:11:00:02"), "{info}");
    let (s, r) = g.api("PUT", "vm.boot", Value::Null);
    assert_eq!(s, 204, "{r}");
    let (s, info) = g.api("GET", "vm.info", Value::Null);
    assert_eq!((s, info["state"].as_str()), (200, Some("Running")), "{info}");
    assert_eq!(info["config"]["memory"]["hotplug_size"], json!(4294967296u64), "{info}");
    assert_eq!(info["config"]["memory"]["shared"], json!(true), "{info}");
    assert_eq!(info["config"]["rng"]["src"], json!("/dev/urandom"), "{info}");
    assert_eq!(info["config"]["fs"][0]["tag"], json!("kataShared"), "{info}");
    g.wait_cpus("0", "0", BOOT_TIMEOUT);
    // The agent's entropy: the guest reads Kata's virtio-rng.
    g.send("rng 32");
    g.wait_console("LITHE-GUEST rng bytes=32 ", HOTPLUG_TIMEOUT);

    // The shim dials the agent as Kata's HybridVSockDialer does: CONNECT 1024.
    assert_eq!(agent(&hvsock, "cpus"), "cpus online=0");
    // The agent mounts the pod's share (Kata's kataShared tag) and reads
    // the container's config from it, through virtiofsd.
    let mnt = "/run/kata-containers/shared/containers";
    assert_eq!(agent(&hvsock, &format!("mount kataShared {mnt}")), format!("fs-mount kataShared {mnt} ok"));
    let fnv = tests::virtiofsd::fnv1a(config);
    assert_eq!(
        agent(&hvsock, &format!("read {mnt}/pod/config.json")),
        format!(
            "fs-read {mnt}/pod/config.json bytes={} fnv={fnv} first={}",
            config.len(),
            String::from_utf8_lossy(config)
        )
    );
    // The pod's network: the guest on the TAP Kata handed over.
    g.send("net-up 10.78.0.2/24");
    g.wait_console("LITHE-GUEST net-up eth0 addr=10.78.0.2/24 mac=02:42:ac:11:00:02", HOTPLUG_TIMEOUT);
    assert_eq!(agent(&hvsock, "net"), "net eth0 mac=02:42:ac:11:00:02 operstate=up");
    let mut tcp = ns.connect("10.78.0.2:7".parse().unwrap(), HOTPLUG_TIMEOUT);
    tcp.set_read_timeout(Some(HOTPLUG_TIMEOUT)).unwrap();
    tcp.write_all(b"hello pod\n").unwrap();
    let mut back = [0u8; 10];
    std::io::Read::read_exact(&mut tcp, &mut back).unwrap();
    assert_eq!(&back, b"hello pod\n", "the guest answered over the TAP");

    // ResizeVCPUs: current = config.cpus.boot_vcpus, then a bare resize.
    let current = info["config"]["cpus"]["boot_vcpus"].as_u64().unwrap();
    let (s, r) = g.api("PUT", "vm.resize", json!({ "desired_vcpus": current + 1 }));
    assert_eq!((s, &r), (204, &Value::Null), "Cloud Hypervisor's answer: accepted, no body");
    g.wait_cpus("0-1", "0-1", HOTPLUG_TIMEOUT);
    assert_eq!(agent(&hvsock, "cpus"), "cpus online=0-1");
    let (_, info) = g.api("GET", "vm.info", Value::Null);
    assert_eq!(info["config"]["cpus"]["boot_vcpus"], json!(2), "{info}");
    // ResizeMemory: current = config.memory.size, grown by 256 MiB (two of
    // Kata's 128 MiB blocks); the agent sees it, and the share still serves
    // (virtiofsd mapped the new region before the guest could use it).
    let mem_kb = |a: &str| a.strip_prefix("mem total_kb=").and_then(|v| v.parse::<u64>().ok()).unwrap();
    let before = mem_kb(&agent(&hvsock, "mem"));
    let current = info["config"]["memory"]["size"].as_u64().unwrap();
    let (s, r) = g.api("PUT", "vm.resize", json!({ "desired_ram": current + (256 << 20) }));
    assert_eq!(s, 204, "{r}");
    let deadline = std::time::Instant::now() + HOTPLUG_TIMEOUT;
    while mem_kb(&agent(&hvsock, "mem")) < before + 250 * 1024 {
        assert!(std::time::Instant::now() < deadline, "the guest's memory did not grow");
        std::thread::sleep(Duration::from_secs(1));
    }
    let deadline = std::time::Instant::now() + HOTPLUG_TIMEOUT;
    loop {
        let (_, info) = g.api("GET", "vm.info", Value::Null);
        if info["config"]["memory"]["size"] == json!(current + (256 << 20)) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "memory.size did not follow: {info}");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::fs::write(shared.join("pod/after-resize"), b"grown\n").unwrap();
    assert_eq!(
        agent(&hvsock, &format!("read {mnt}/pod/after-resize")),
        format!("fs-read {mnt}/pod/after-resize bytes=6 fnv={} first=grown", tests::virtiofsd::fnv1a(b"grown\n"))
    );

    let (s, _) = g.api("PUT", "vmm.shutdown", Value::Null);
    assert_eq!(s, 204);
    assert_eq!(g.wait_exit(Duration::from_secs(60)).code(), Some(0));
}
