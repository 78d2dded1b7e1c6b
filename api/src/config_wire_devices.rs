//! The device lists of Cloud Hypervisor's `VmConfig` (`disks`, `rng`) to
//! lithe's [`DevicesConfig`] and back: what lithe honours is taken, what it
//! accepts at Cloud Hypervisor's default is ignored, anything else is
//! named, field by field, as in the rest of `vm.create`.

use serde_json::{json, Map, Value};
use vmm::config::{DevicesConfig, DiskConfig, FsConfig, NetConfig, RngConfig, VsockConfig, DEFAULT_RNG_SRC};

use crate::config_wire::WireError;

/// What a disk or rng object may carry besides what lithe honours, and
/// which values of it mean "nothing" (Cloud Hypervisor's defaults).
fn default_only(key: &str, v: &Value) -> Option<bool> {
    let ok = match key {
        // One queue, no PCI: a segment number and a queue count of one say nothing lithe lacks.
        "pci_segment" => v.is_u64(),
        "num_queues" => v.is_null() || v.as_u64() == Some(1),
        "queue_size" => v.is_null() || v.as_u64().is_some_and(|n| n.is_power_of_two() && n <= 256),
        "iommu" | "vhost_user" => v.is_null() || v == &Value::Bool(false),
        // Synchronous I/O either way; sparse files are what a raw image is.
        "disable_io_uring" | "disable_aio" | "sparse" => v.is_null() || v.is_boolean(),
        "image_type" => v.is_null() || v.as_str() == Some("Raw"),
        "vhost_socket" | "rate_limiter_config" | "rate_limit_group" | "queue_affinity" | "backing_files" => v.is_null(),
        _ => return None,
    };
    Some(ok)
}

fn string(obj: &Map<String, Value>, field: &str, key: &str) -> Result<Option<String>, WireError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(WireError::Invalid(format!("{field}.{key} must be a string"))),
    }
}

fn flag(obj: &Map<String, Value>, field: &str, key: &str) -> Result<bool, WireError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(WireError::Invalid(format!("{field}.{key} must be true or false"))),
    }
}

/// Refuses every key of `obj` that is neither honoured nor at its default.
fn check_rest(obj: &Map<String, Value>, field: &str, honoured: &[&str], refused: &mut Vec<String>) {
    for (k, v) in obj {
        if honoured.contains(&k.as_str()) {
            continue;
        }
        match default_only(k, v) {
            Some(true) => {}
            Some(false) => refused.push(format!(
                "{field}.{k} ({v}: lithe has one queue of up to 256, no IOMMU, no vhost-user disks, no rate limits)"
            )),
            None => refused.push(format!("{field}.{k} (not a field lithe knows)")),
        }
    }
}

/// The `net[]` keys lithe takes at their Cloud Hypervisor defaults (or, for
/// Kata's, at any value it sends): one queue pair, no UFO, no vhost-user.
fn net_default_only(key: &str, v: &Value) -> Option<bool> {
    let ok = match key {
        "num_queues" => v.is_null() || v.as_u64().is_some_and(|n| n == 1 || n == 2),
        "queue_size" => v.is_null() || v.as_u64().is_some_and(|n| n.is_power_of_two() && n <= 256),
        "offload_ufo" => v.is_null() || v.is_boolean(),
        "pci_segment" => v.is_null() || v.is_u64(),
        "iommu" | "vhost_user" => v.is_null() || v == &Value::Bool(false),
        "vhost_mode" => v.is_null() || v.as_str() == Some("Client"),
        "mtu" | "host_mac" | "vhost_socket" | "rate_limiter_config" | "fds" => v.is_null(),
        _ => return None,
    };
    Some(ok)
}

/// `net[i]`: a TAP by name (fds come with `vm.add-net`), its MAC and offloads.
fn net_from(i: usize, v: &Value, refused: &mut Vec<String>) -> Result<NetConfig, WireError> {
    net_object(&format!("net[{i}]"), v, false, refused)
}

/// `vm.add-net`'s body: as a `net[]` entry, but the TAP may come as fds.
pub fn net_from_add(v: &Value, has_fds: bool, refused: &mut Vec<String>) -> Result<NetConfig, WireError> {
    net_object("net", v, has_fds, refused)
}

fn net_object(field: &str, v: &Value, has_fds: bool, refused: &mut Vec<String>) -> Result<NetConfig, WireError> {
    let Some(obj) = v.as_object() else { return Err(WireError::Invalid(format!("{field} must be an object"))) };
    let tap = string(obj, field, "tap")?;
    if tap.is_none() && !has_fds {
        return Err(WireError::Invalid(format!("{field}.tap is required (or send the TAP's fds with vm.add-net)")));
    }
    let mut n = NetConfig::on_tap(tap.as_deref().unwrap_or(""));
    n.tap = tap;
    if let Some(mac) = string(obj, field, "mac")? {
        vmm::config::parse_mac(&mac).map_err(|e| WireError::Invalid(format!("{field}.mac: {e}")))?;
        n.mac = mac;
    }
    n.id = string(obj, field, "id")?;
    let on = |key: &str| -> Result<bool, WireError> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(true),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(WireError::Invalid(format!("{field}.{key} must be true or false"))),
        }
    };
    n.offload_csum = on("offload_csum")?;
    n.offload_tso = on("offload_tso")?;
    for (k, v) in obj {
        if ["tap", "mac", "id", "offload_csum", "offload_tso"].contains(&k.as_str()) {
            continue;
        }
        // The host side's address: lithe does not set it. Accepted at Cloud
        // Hypervisor's defaults (which its generated clients, Kata's among
        // them, always send) and with TAP fds (which Cloud Hypervisor then
        // ignores it for).
        if k == "ip" || k == "mask" {
            let default = if k == "ip" { "192.168.249.1" } else { "255.255.255.0" };
            if !(v.is_null() || has_fds || v.as_str() == Some(default)) {
                refused.push(format!("{field}.{k} ({v}: lithe does not set the TAP's address; give it with ip(8))"));
            }
            continue;
        }
        match net_default_only(k, v) {
            Some(true) => {}
            Some(false) => refused.push(format!(
                "{field}.{k} ({v}: lithe has one queue pair of up to 256, no UFO, no vhost-user, no rate limits, and does not set the TAP's address)"
            )),
            None => refused.push(format!("{field}.{k} (not a field lithe knows)")),
        }
    }
    Ok(n)
}

/// `fs[i]`: a virtio-fs device on a running vhost-user backend. Every key
/// Cloud Hypervisor's `FsConfig` has is honoured (`pci_segment` is taken and
/// means nothing: there is no PCI); values are checked with `--fs`'s rules.
fn fs_from(i: usize, v: &Value, refused: &mut Vec<String>) -> Result<FsConfig, WireError> {
    let field = format!("fs[{i}]");
    let Some(obj) = v.as_object() else { return Err(WireError::Invalid(format!("{field} must be an object"))) };
    let required = |key: &str| -> Result<String, WireError> {
        string(obj, &field, key)?.ok_or_else(|| WireError::Invalid(format!("{field}.{key} is required")))
    };
    let mut f = FsConfig::new(&required("tag")?, required("socket")?);
    let number = |key: &str| -> Result<Option<u16>, WireError> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| u16::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| WireError::Invalid(format!("{field}.{key} must be a number up to 65535"))),
        }
    };
    f.num_queues = number("num_queues")?.unwrap_or(f.num_queues);
    f.queue_size = number("queue_size")?.unwrap_or(f.queue_size);
    f.id = string(obj, &field, "id")?;
    f.check().map_err(|e| WireError::Invalid(format!("{field}: {e}")))?;
    for (k, v) in obj {
        match k.as_str() {
            "tag" | "socket" | "num_queues" | "queue_size" | "id" => {}
            "pci_segment" if v.is_null() || v.is_u64() => {}
            "pci_segment" => refused.push(format!("{field}.pci_segment ({v}: a segment number, and there is no PCI)")),
            _ => refused.push(format!("{field}.{k} (not a field lithe knows)")),
        }
    }
    Ok(f)
}

/// `vm.info`'s fs list.
pub fn fs_to(d: &DevicesConfig) -> Option<Vec<Value>> {
    let fs =
        d.fs.iter()
            .map(|f| {
                json!({"tag": f.tag, "socket": f.socket.display().to_string(), "num_queues": f.num_queues,
                   "queue_size": f.queue_size, "id": f.id})
            })
            .collect::<Vec<_>>();
    (!fs.is_empty()).then_some(fs)
}

/// Cloud Hypervisor's device lists, as `vm.create` sends them.
pub struct WireDevices<'a> {
    pub disks: &'a Option<Vec<Value>>,
    pub net: &'a Option<Vec<Value>>,
    pub rng: &'a Option<Value>,
    pub vsock: &'a Option<Value>,
    pub fs: &'a Option<Vec<Value>>,
}

pub fn devices_from(w: WireDevices, refused: &mut Vec<String>) -> Result<DevicesConfig, WireError> {
    let WireDevices { disks, net, rng, vsock, fs } = w;
    let mut out = DevicesConfig::default();
    for (i, d) in disks.iter().flatten().enumerate() {
        let field = format!("disks[{i}]");
        let Some(obj) = d.as_object() else { return Err(WireError::Invalid(format!("{field} must be an object"))) };
        let Some(path) = string(obj, &field, "path")? else {
            return Err(WireError::Invalid(format!("{field}.path is required")));
        };
        out.disks.push(DiskConfig {
            path: path.into(),
            readonly: flag(obj, &field, "readonly")?,
            direct: flag(obj, &field, "direct")?,
            id: string(obj, &field, "id")?,
            serial: string(obj, &field, "serial")?,
        });
        check_rest(obj, &field, &["path", "readonly", "direct", "id", "serial"], refused);
    }
    match rng {
        None | Some(Value::Null) => {}
        Some(Value::Object(obj)) => {
            let src = string(obj, "rng", "src")?.unwrap_or_else(|| DEFAULT_RNG_SRC.into());
            out.rng = Some(RngConfig { src: src.into() });
            check_rest(obj, "rng", &["src"], refused);
        }
        Some(_) => return Err(WireError::Invalid("rng must be an object".into())),
    }
    match vsock {
        None | Some(Value::Null) => {}
        Some(Value::Object(obj)) => {
            let cid = match obj.get("cid") {
                Some(v) => v.as_u64().ok_or_else(|| WireError::Invalid("vsock.cid must be a number".into()))?,
                None => return Err(WireError::Invalid("vsock.cid is required".into())),
            };
            let Some(socket) = string(obj, "vsock", "socket")? else {
                return Err(WireError::Invalid("vsock.socket is required".into()));
            };
            out.vsock = Some(VsockConfig { cid, socket: socket.into() });
            check_rest(obj, "vsock", &["cid", "socket", "id"], refused);
        }
        Some(_) => return Err(WireError::Invalid("vsock must be an object".into())),
    }
    for (i, n) in net.iter().flatten().enumerate() {
        out.net.push(net_from(i, n, refused)?);
    }
    for (i, f) in fs.iter().flatten().enumerate() {
        out.fs.push(fs_from(i, f, refused)?);
    }
    Ok(out)
}

/// `vm.info`'s net list: what each device runs (one queue pair: two queues).
pub fn net_to(d: &DevicesConfig) -> Option<Vec<Value>> {
    let net = d
        .net
        .iter()
        .map(|n| {
            json!({"tap": n.tap, "mac": n.mac, "id": n.id, "num_queues": 2, "queue_size": 256,
                   "offload_csum": n.offload_csum, "offload_tso": n.offload_tso, "offload_ufo": false,
                   "iommu": false, "vhost_user": false})
        })
        .collect::<Vec<_>>();
    (!net.is_empty()).then_some(net)
}

/// `vm.info`'s device lists: disks, rng, vsock.
pub fn devices_to(d: &DevicesConfig) -> (Option<Vec<Value>>, Option<Value>, Option<Value>) {
    let disks = d
        .disks
        .iter()
        .map(|d| {
            json!({"path": d.path.display().to_string(), "readonly": d.readonly, "direct": d.direct,
                   "id": d.id, "serial": d.serial, "num_queues": 1, "queue_size": 256, "iommu": false})
        })
        .collect::<Vec<_>>();
    let rng = d.rng.as_ref().map(|r| json!({"src": r.src.display().to_string(), "iommu": false}));
    let vsock =
        d.vsock.as_ref().map(|v| json!({"cid": v.cid, "socket": v.socket.display().to_string(), "iommu": false}));
    ((!disks.is_empty()).then_some(disks), rng, vsock)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lists(
        disks: &Option<Vec<Value>>,
        net: &Option<Vec<Value>>,
        rng: &Option<Value>,
        vsock: &Option<Value>,
        refused: &mut Vec<String>,
    ) -> Result<DevicesConfig, WireError> {
        devices_from(WireDevices { disks, net, rng, vsock, fs: &None }, refused)
    }

    #[test]
    fn fs_takes_cloud_hypervisors_fields_and_checks_them() {
        let mut refused = Vec::new();
        // Kata's body for the pod's share.
        let kata = json!({"tag": "kataShared", "socket": "/run/vc/vm/x/vhost-fs.sock", "num_queues": 1,
                          "queue_size": 1024, "pci_segment": 0, "id": "fs0"});
        let fs = Some(vec![kata]);
        let w = WireDevices { disks: &None, net: &None, rng: &None, vsock: &None, fs: &fs };
        let d = devices_from(w, &mut refused).unwrap();
        assert!(refused.is_empty(), "{refused:?}");
        assert_eq!(d.fs.len(), 1);
        assert_eq!((d.fs[0].tag.as_str(), d.fs[0].num_queues, d.fs[0].queue_size), ("kataShared", 1, 1024));
        // vm.info reads back what it was given.
        let back = fs_to(&d);
        let w = WireDevices { disks: &None, net: &None, rng: &None, vsock: &None, fs: &back };
        assert_eq!(devices_from(w, &mut refused).unwrap(), d);
        for bad in [
            json!({"socket": "/s"}),
            json!({"tag": "t"}),
            json!({"tag": "", "socket": "/s"}),
            json!({"tag": "x".repeat(37), "socket": "/s"}),
            json!({"tag": "t", "socket": "/s", "queue_size": 1000}),
            json!({"tag": "t", "socket": "/s", "num_queues": 0}),
            json!({"tag": "t", "socket": "/s", "num_queues": 70000}),
            json!("t"),
        ] {
            let fs = Some(vec![bad.clone()]);
            let w = WireDevices { disks: &None, net: &None, rng: &None, vsock: &None, fs: &fs };
            assert!(devices_from(w, &mut refused).is_err(), "{bad}");
        }
        let fs = Some(vec![json!({"tag": "t", "socket": "/s", "dax": true})]);
        let w = WireDevices { disks: &None, net: &None, rng: &None, vsock: &None, fs: &fs };
        devices_from(w, &mut refused).unwrap();
        assert_eq!(refused, ["fs[0].dax (not a field lithe knows)"]);
    }

    #[test]
    fn disks_and_rng_are_honoured_and_the_rest_named() {
        let mut refused = Vec::new();
        let disks = Some(vec![
            json!({"path": "/d0", "readonly": true, "direct": true, "id": "root", "serial": "s0", "num_queues": 1,
                   "queue_size": 128, "pci_segment": 1, "iommu": false}),
            json!({"path": "/d1", "num_queues": 2, "vhost_user": true, "frob": 1}),
        ]);
        let vsock = Some(json!({"cid": 3, "socket": "/run/v.sock", "iommu": false}));
        let d =
            lists(&disks, &None, &Some(json!({"src": "/dev/random", "iommu": false})), &vsock, &mut refused).unwrap();
        assert_eq!(d.vsock, Some(VsockConfig { cid: 3, socket: "/run/v.sock".into() }));
        assert_eq!(
            d.disks[0],
            DiskConfig {
                readonly: true,
                direct: true,
                id: Some("root".into()),
                serial: Some("s0".into()),
                ..DiskConfig::new("/d0")
            }
        );
        assert_eq!(d.rng, Some(RngConfig { src: "/dev/random".into() }));
        let text = refused.join("|");
        for f in ["disks[1].num_queues", "disks[1].vhost_user", "disks[1].frob"] {
            assert!(text.contains(f), "{f} not named: {text}");
        }
        assert_eq!(refused.len(), 3, "{refused:?}");
        assert!(lists(&Some(vec![json!({})]), &None, &None, &None, &mut refused).is_err(), "a disk needs a path");
        assert!(lists(&None, &None, &None, &Some(json!({"cid": 3})), &mut refused).is_err(), "a vsock needs a socket");
        let (wire_disks, wire_rng, wire_vsock) = devices_to(&d);
        let mut again = Vec::new();
        let back = lists(&wire_disks, &None, &wire_rng, &wire_vsock, &mut again).unwrap();
        assert_eq!(back, d, "vm.info decodes to the same");
        assert!(again.is_empty(), "{again:?}");
    }

    #[test]
    fn net_takes_kata_s_body_and_names_what_it_cannot_honour() {
        // What Kata's clh driver sends (its generated client's defaults).
        let kata = json!({"tap": "tap0_kata", "mac": "02:42:ac:11:00:02", "num_queues": 2, "queue_size": 256,
                          "offload_tso": true, "offload_ufo": true, "offload_csum": true, "iommu": false,
                          "vhost_user": false, "id": "net0"});
        let mut refused = Vec::new();
        let d = lists(&None, &Some(vec![kata]), &None, &None, &mut refused).unwrap();
        assert!(refused.is_empty(), "{refused:?}");
        let n = &d.net[0];
        assert_eq!(
            (n.tap.as_deref(), n.mac.as_str(), n.id.as_deref()),
            (Some("tap0_kata"), "02:42:ac:11:00:02", Some("net0"))
        );
        assert!(n.offload_csum && n.offload_tso);
        let back = lists(&None, &net_to(&d), &None, &None, &mut refused).unwrap();
        assert_eq!(back, d, "vm.info decodes to the same");
        assert!(refused.is_empty(), "{refused:?}");

        let odd = json!({"tap": "t", "num_queues": 4, "ip": "10.0.0.1", "vhost_user": true, "frob": 1});
        lists(&None, &Some(vec![odd]), &None, &None, &mut refused).unwrap();
        let text = refused.join("|");
        for f in ["net[0].num_queues", "net[0].ip", "net[0].vhost_user", "net[0].frob"] {
            assert!(text.contains(f), "{f} not named: {text}");
        }
        for bad in [json!({}), json!({"tap": "t", "mac": "01:00:00:00:00:01"}), json!({"tap": "t", "mac": "zz"})] {
            assert!(lists(&None, &Some(vec![bad.clone()]), &None, &None, &mut refused).is_err(), "{bad}");
        }
        // Kata's vm.add-net body: accepted with fds, not without a TAP.
        let kata: Value = serde_json::from_str(crate::vm_config::KATA_ADD_NET).unwrap();
        let mut none = Vec::new();
        let n = net_from_add(&kata, true, &mut none).unwrap();
        assert!(none.is_empty(), "{none:?}");
        assert_eq!((n.mac.as_str(), n.tap.as_deref()), ("02:42:ac:11:00:02", None));
        assert!(net_from_add(&kata, false, &mut none).is_err(), "no TAP at all");
        let mut named = Vec::new();
        net_from_add(&json!({"tap": "t", "ip": "10.0.0.1"}), false, &mut named).unwrap();
        assert!(named.join("|").contains("net.ip"), "{named:?}");
        let fresh = lists(&None, &Some(vec![json!({"tap": "t"})]), &None, &None, &mut refused).unwrap();
        assert!(vmm::config::parse_mac(&fresh.net[0].mac).is_ok_and(|m| m[0] & 3 == 2), "a random local unicast MAC");
    }
}
