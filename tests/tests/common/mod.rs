//! Shared by the lab tests: the observer's real output checked against
//! docs/events.md, so the schema documents every field a run writes.
use std::{collections::BTreeSet, path::Path};

use imds_lab::Value;

/// The field paths docs/events.md documents: the backquoted names in the
/// first column of its tables headed `field` (`a.b`: field b of object a,
/// or of each element of list a).
fn documented_fields() -> BTreeSet<String> {
    let md =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/events.md"))
            .unwrap();
    let mut out = BTreeSet::new();
    let mut in_fields = false;
    for line in md.lines() {
        let Some(row) = line.strip_prefix('|') else {
            in_fields = false;
            continue;
        };
        let first = row.split('|').next().unwrap().trim();
        if first == "field" {
            in_fields = true;
        } else if in_fields && !first.starts_with("---") {
            out.extend(first.split(',').map(|f| f.trim().trim_matches('`').to_string()));
        }
    }
    out
}

fn paths(v: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(o) => {
            for (k, v) in o {
                let p = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                out.insert(p.clone());
                // A pod's labels are its own names.
                if k != "labels" {
                    paths(v, &p, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| paths(v, prefix, out)),
        _ => {}
    }
}

/// Every field of every line the observer wrote is in docs/events.md.
pub fn assert_fields_documented(events: &[Value]) {
    let documented = documented_fields();
    let mut seen = BTreeSet::new();
    for e in events {
        paths(e, "", &mut seen);
    }
    let missing: Vec<_> = seen.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "fields in the observer's output that docs/events.md does not list: {missing:?}"
    );
}
