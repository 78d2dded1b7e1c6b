//! QEMU's QMP, as much as the bench needs: the greeting and capabilities
//! handshake, commands answered in order, and the events that arrive in
//! between kept (each carries QEMU's own timestamp).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    /// Events read so far.
    pub events: Vec<Value>,
}

impl Qmp {
    /// Connects (retrying while QEMU starts) and leaves negotiation mode.
    pub fn connect(socket: &Path, limit: Duration) -> Result<Qmp, String> {
        let deadline = Instant::now() + limit;
        let stream = loop {
            match UnixStream::connect(socket) {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline => return Err(format!("QMP {}: {e}", socket.display())),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        stream.set_read_timeout(Some(Duration::from_secs(60))).map_err(|e| e.to_string())?;
        let writer = stream.try_clone().map_err(|e| e.to_string())?;
        let mut q = Qmp { reader: BufReader::new(stream), writer, events: Vec::new() };
        let greeting = q.read()?;
        if greeting.get("QMP").is_none() {
            return Err(format!("QMP: unexpected greeting {greeting}"));
        }
        q.execute("qmp_capabilities", Value::Null)?;
        Ok(q)
    }

    fn read(&mut self) -> Result<Value, String> {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).map_err(|e| format!("QMP read: {e}"))?;
        if n == 0 {
            return Err("QMP: connection closed".into());
        }
        serde_json::from_str(&line).map_err(|e| format!("QMP: {e} in {line:?}"))
    }

    /// Runs `command`; its `return` value, or its error as a string.
    pub fn execute(&mut self, command: &str, arguments: Value) -> Result<Value, String> {
        let msg = if arguments.is_null() {
            json!({ "execute": command })
        } else {
            json!({ "execute": command, "arguments": arguments })
        };
        writeln!(self.writer, "{msg}").map_err(|e| format!("QMP write: {e}"))?;
        loop {
            let v = self.read()?;
            if v.get("event").is_some() {
                self.events.push(v);
                continue;
            }
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            return Err(format!("QMP {command}: {}", v["error"]["desc"].as_str().unwrap_or(&v.to_string())));
        }
    }

    /// Reads events for up to `wait` (a command does this too).
    pub fn poll_events(&mut self, wait: Duration) {
        let _ = self.reader.get_ref().set_read_timeout(Some(wait.max(Duration::from_millis(1))));
        while let Ok(v) = self.read() {
            if v.get("event").is_some() {
                self.events.push(v);
            }
        }
        let _ = self.reader.get_ref().set_read_timeout(Some(Duration::from_secs(60)));
    }

    /// RAM the VM has: boot memory plus plugged DIMMs.
    pub fn memory_size(&mut self) -> Result<u64, String> {
        let r = self.execute("query-memory-size-summary", Value::Null)?;
        Ok(r["base-memory"].as_u64().unwrap_or(0) + r["plugged-memory"].as_u64().unwrap_or(0))
    }

    /// Brings the VM's RAM to `bytes`: a `pc-dimm` of the difference (on a
    /// RAM backend of its own) to grow, `device_del` of the latest DIMMs to
    /// shrink (the guest offlines and ejects them; QEMU then sends
    /// `DEVICE_DELETED` and the backend can go).
    pub fn set_memory(&mut self, bytes: u64) -> Result<(), String> {
        let now = self.memory_size()?;
        let dimms = self.execute("query-memory-devices", Value::Null)?;
        let mut dimms: Vec<(String, u64)> = dimms
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| Some((d["data"]["id"].as_str()?.to_string(), d["data"]["size"].as_u64()?)))
            .collect();
        if bytes > now {
            let n = dimms.len();
            let size = bytes - now;
            self.execute(
                "object-add",
                json!({ "qom-type": "memory-backend-ram", "id": format!("mem{n}"), "size": size }),
            )?;
            self.execute(
                "device_add",
                json!({ "driver": "pc-dimm", "id": format!("dimm{n}"), "memdev": format!("mem{n}") }),
            )?;
        } else {
            let mut left = now;
            dimms.sort();
            while left > bytes {
                let (id, size) = dimms.pop().ok_or("no DIMM left to remove")?;
                self.execute("device_del", json!({ "id": id }))?;
                left -= size;
            }
        }
        Ok(())
    }

    /// Brings the VM to `n` vCPUs: `device_add` of the free CPU slots
    /// `query-hotpluggable-cpus` lists, lowest first, or `device_del` of
    /// the CPUs this bench added, latest first (the guest ejects them; QEMU
    /// then sends `DEVICE_DELETED`).
    pub fn set_vcpus(&mut self, n: usize) -> Result<(), String> {
        let slots = self.execute("query-hotpluggable-cpus", Value::Null)?;
        let slots = slots.as_array().ok_or("query-hotpluggable-cpus: not a list")?;
        let plugged: Vec<&Value> = slots.iter().filter(|s| s.get("qom-path").is_some()).collect();
        let mut free: Vec<&Value> = slots.iter().filter(|s| s.get("qom-path").is_none()).collect();
        let key = |s: &Value| {
            let p = &s["props"];
            (p["socket-id"].as_u64(), p["core-id"].as_u64(), p["thread-id"].as_u64())
        };
        free.sort_by_key(|s| key(s));
        if n > plugged.len() {
            for s in free.iter().take(n - plugged.len()) {
                let mut args = s["props"].clone();
                let p = &s["props"];
                let id = format!(
                    "cpu-s{}-c{}-t{}",
                    p["socket-id"].as_u64().unwrap_or(0),
                    p["core-id"].as_u64().unwrap_or(0),
                    p["thread-id"].as_u64().unwrap_or(0)
                );
                args["driver"] = s["type"].clone();
                args["id"] = json!(id);
                self.execute("device_add", args)?;
            }
        } else {
            // Only CPUs added with an id can be removed; the boot CPU has none.
            let mut ours: Vec<&Value> = plugged
                .into_iter()
                .filter(|s| s["qom-path"].as_str().is_some_and(|p| p.starts_with("/machine/peripheral/")))
                .collect();
            ours.sort_by_key(|s| std::cmp::Reverse(key(s)));
            let keep_boot = 1;
            let remove = (ours.len() + keep_boot).saturating_sub(n);
            for s in ours.iter().take(remove) {
                let id = s["qom-path"].as_str().unwrap_or_default().rsplit('/').next().unwrap_or_default().to_string();
                self.execute("device_del", json!({ "id": id }))?;
            }
        }
        Ok(())
    }
}
