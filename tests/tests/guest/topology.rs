//! `--cpus topology=T:C:D:P` as the guest sees it: hot-added vCPUs join the
//! core and package their APIC id encodes, and Linux's sysfs says so.

use std::collections::BTreeMap;

use tests::{Guest, Launch, BOOT_TIMEOUT, HOTPLUG_TIMEOUT};

/// "0-2,5" → [0, 1, 2, 5].
fn cpu_list(s: &str) -> Vec<u32> {
    s.split(',')
        .filter(|p| !p.is_empty())
        .flat_map(|p| match p.split_once('-') {
            Some((a, b)) => (a.parse().unwrap()..=b.parse().unwrap()).collect::<Vec<u32>>(),
            None => vec![p.parse().unwrap()],
        })
        .collect()
}

/// One `LITHE-GUEST topology cpu=N package=P die=D core=C threads=L` line.
#[derive(Debug)]
struct Place {
    package: u32,
    core: u32,
    threads: Vec<u32>,
}

fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace().find_map(|w| w.strip_prefix(key)).unwrap_or_else(|| panic!("{key} in {line}"))
}

/// Asks the guest where its online CPUs are: logical CPU → place.
fn guest_topology(g: &mut Guest) -> BTreeMap<u32, Place> {
    let from = g.console_lines();
    g.send("topology");
    g.wait_console_after(from, "LITHE-GUEST topology end", HOTPLUG_TIMEOUT);
    g.console_since(from)
        .iter()
        .filter(|l| l.contains("LITHE-GUEST topology cpu="))
        .map(|l| {
            let place = Place {
                package: field(l, "package=").parse().unwrap(),
                core: field(l, "core=").parse().unwrap(),
                threads: cpu_list(field(l, "threads=")),
            };
            (field(l, "cpu=").parse().unwrap(), place)
        })
        .collect()
}

/// 2 threads x 3 cores x 1 die x 2 packages: a thread bit, two core bits,
/// then the package, so package 1 starts at APIC id 8 (ids 6 and 7 unused).
#[test]
fn hot_added_vcpus_join_the_core_and_package_their_apic_id_encodes() {
    let mut g =
        Guest::launch(Launch { cpus: "boot=2,max=12,topology=2:3:1:2", with_kernel: true, ..Launch::default() });
    g.wait_apic(&[0, 1], BOOT_TIMEOUT);
    let at_boot = g.kmsg_count("Converting physical 0");

    // vCPUs 2..6: the rest of package 0, then the first thread of package 1.
    let r = g.resize(7);
    assert_eq!(r["complete"], serde_json::json!(true), "{r}");
    g.wait_apic(&[0, 1, 2, 3, 4, 5, 8], HOTPLUG_TIMEOUT);
    let report = g.last_report().unwrap();
    let logical = cpu_list(&report.online);
    let apic: Vec<u32> = report.apic.split(',').map(|a| a.parse().unwrap()).collect();
    let places = guest_topology(&mut g);
    assert_eq!(places.len(), logical.len(), "a topology line per online CPU: {places:?}");
    for (cpu, id) in logical.iter().zip(&apic) {
        let p = &places[cpu];
        assert_eq!((p.package, p.core), (id >> 3, (id >> 1) & 3), "CPU {cpu} (APIC id {id}): {p:?}");
        // Its thread siblings: the online CPUs whose APIC ids differ only in the thread bit.
        let siblings: Vec<u32> =
            logical.iter().zip(&apic).filter(|(_, other)| *other >> 1 == id >> 1).map(|(c, _)| *c).collect();
        assert_eq!(p.threads, siblings, "CPU {cpu} (APIC id {id}): {p:?}");
    }
    // Linux found package 0 for the hot-added CPUs there, not new packages.
    assert_eq!(g.kmsg_count("Converting physical 0"), at_boot, "a hot-added CPU left its package");

    // And they leave again by vCPU id.
    let r = g.resize(2);
    assert_eq!(r["complete"], serde_json::json!(true), "{r}");
    g.wait_apic(&[0, 1], HOTPLUG_TIMEOUT);
    g.send("poweroff");
    assert_eq!(g.wait_exit(std::time::Duration::from_secs(120)).code(), Some(0));
}
