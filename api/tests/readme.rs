//! The README's tables against the code, so they stay true: every endpoint
//! lithe serves or answers as missing, every `VmConfig` field (as Cloud
//! Hypervisor's schema has it, read from the decoder itself), every vCPU
//! state and reason `vm.info` can report.

use std::collections::BTreeSet;

use api::routes::{ENDPOINTS, NOT_BUILT};
use api::vm_config::VmConfig;
use vmm::cpu::{Phase, Reason};

const README: &str = include_str!("../../README.md");

/// The rows of the table whose header row starts with `header`: (first cell, rest).
fn table(header: &str) -> Vec<(String, String)> {
    let start = README.find(header).unwrap_or_else(|| panic!("README has no table headed {header:?}"));
    README[start..]
        .lines()
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').splitn(2, '|').collect();
            (cells[0].trim().to_string(), cells.get(1).unwrap_or(&"").trim().to_string())
        })
        .collect()
}

/// The `code` spans of `text`.
fn code(text: &str) -> Vec<String> {
    text.split('`').skip(1).step_by(2).map(str::to_string).collect()
}

/// The fields a struct of the schema has, from serde's own complaint about
/// an unknown one (`expected one of `a`, `b`, …`).
fn fields_of(path: &[&str]) -> BTreeSet<String> {
    let mut body = serde_json::json!({"no_such_field": 1});
    for key in path.iter().rev() {
        body = serde_json::json!({ *key: body });
    }
    let e = serde_json::from_value::<VmConfig>(body).expect_err("an unknown field is refused").to_string();
    let list = e.split("expected one of").nth(1).unwrap_or_else(|| panic!("{path:?}: {e}"));
    code(list).into_iter().collect()
}

#[test]
fn the_endpoint_table_names_what_is_served_and_what_is_not() {
    let rows = table("| Cloud Hypervisor endpoint | lithe |");
    let mut served = BTreeSet::new();
    let mut missing = Vec::new();
    for (cell, what) in &rows {
        for token in code(cell) {
            let endpoint = token.rsplit(' ').next().unwrap().to_string();
            if what.starts_with("served") {
                assert!(ENDPOINTS.iter().any(|(_, e)| *e == endpoint), "README says {endpoint} is served; it is not");
                served.insert(endpoint);
            } else {
                assert!(what.starts_with("404"), "{endpoint}: a row says served or 404");
                missing.push(endpoint);
            }
        }
    }
    for (method, endpoint) in ENDPOINTS {
        assert!(served.contains(*endpoint), "README's endpoint table lacks {method} {endpoint}");
    }
    let covers = |pattern: &str, e: &str| match pattern.strip_suffix('*') {
        Some(prefix) => e.starts_with(prefix),
        None => pattern == e,
    };
    for (endpoint, _) in NOT_BUILT {
        assert!(missing.iter().any(|p| covers(p, endpoint)), "README's endpoint table lacks {endpoint} (404)");
    }
    for p in &missing {
        assert!(NOT_BUILT.iter().any(|(e, _)| covers(p, e)), "README lists {p} as missing; routes do not");
    }
}

#[test]
fn the_vm_config_table_names_every_field_and_no_other() {
    // A row names top-level fields, or (`parent.field`, `field`, …) fields
    // of the struct its first name is in.
    let rows = table("| `VmConfig` field | lithe |");
    let mut mentioned: std::collections::BTreeMap<String, BTreeSet<String>> = Default::default();
    for (cell, _) in &rows {
        let names = code(cell);
        let parent = names.first().and_then(|n| n.split_once('.')).map_or("", |(p, _)| p).to_string();
        for name in names {
            let field = name.strip_prefix(&format!("{parent}.")).unwrap_or(&name).to_string();
            mentioned.entry(parent.clone()).or_default().insert(field);
        }
    }
    let mut top = mentioned.remove("").unwrap_or_default();
    top.extend(mentioned.keys().cloned());
    assert_eq!(top, fields_of(&[]), "top-level VmConfig fields: README vs the schema");
    for (parent, fields) in &mentioned {
        assert_eq!(fields, &fields_of(&[parent]), "{parent}'s fields: README vs the schema");
    }
}

#[test]
fn the_states_and_reasons_are_the_ones_vm_info_reports() {
    let wire = |v: &dyn erased::Named| v.name();
    let states = README.split("vCPU states, as `vm.info` reports them:").nth(1).expect("the states paragraph");
    let states = &states[..states.find("\n\n").unwrap_or(states.len())];
    // The names listed: snake_case (not `_OST` and other ACPI names in passing).
    let named: BTreeSet<String> =
        code(states).into_iter().filter(|n| n.starts_with(|c: char| c.is_ascii_lowercase())).collect();
    for p in Phase::ALL {
        assert!(named.contains(&wire(&p)), "README's states lack {}", wire(&p));
    }
    for r in Reason::ALL.into_iter().filter(|r| *r != Reason::None) {
        assert!(named.contains(&wire(&r)), "README's reasons lack {}", wire(&r));
    }
    let all: BTreeSet<String> = Phase::ALL
        .iter()
        .map(|p| wire(p))
        .chain(Reason::ALL.iter().map(|r| wire(r)))
        .chain(["reason".to_string()])
        .collect();
    for n in &named {
        assert!(all.contains(n), "README names a state or reason `{n}` that lithe does not have");
    }
}

/// A phase or reason as the API writes it.
mod erased {
    pub trait Named {
        fn name(&self) -> String;
    }
    impl<T: serde::Serialize> Named for T {
        fn name(&self) -> String {
            serde_json::to_value(self).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
        }
    }
}
