//! imds-observer: an eBPF observer of cloud-metadata traffic. The binary
//! (main.rs) is the command line over these modules; the benches use them
//! too. Each module imports only from the layers below it, in this order:
//! model → sys → capture, identity → correlate → pipeline → diagnose → sink
//! → cli → run → tui (`LAYERS`; the test `layers_import_only_downward`
//! keeps it so). `fuzzing`, the fuzz targets' entry points, sits above them
//! all.
pub mod capture;
pub mod cli;
pub mod correlate;
pub mod diagnose;
#[cfg(test)]
mod docs;
// build.rs's commit for `--version`, tested here (build scripts have none).
#[cfg(test)]
#[path = "../build/commit.rs"]
mod build_commit;
// build.rs's hash of the eBPF object for `--version`, tested here too.
#[cfg(test)]
#[path = "../build/object_hash.rs"]
mod build_object_hash;
// Hidden: for the fuzz crate (fuzz/) only, not an API.
#[doc(hidden)]
pub mod fuzzing;
pub mod identity;
pub mod model;
pub mod pipeline;
pub mod run;
pub mod sink;
pub mod sys;
pub mod tui;

/// The layers, lowest first: a module imports only from layers below its
/// own (README, "How it works"). Modules of one layer do not import each
/// other.
#[cfg(test)]
const LAYERS: &[&[&str]] = &[
    &["model"],
    &["sys"],
    &["capture", "identity"],
    &["correlate"],
    &["pipeline"],
    &["diagnose"],
    &["sink"],
    &["cli"],
    &["run"],
    &["tui"],
    &["fuzzing"],
];

#[cfg(test)]
mod tests {
    use std::{fs, path::Path};

    use super::LAYERS;

    /// The top-level modules a source text names through `crate::`, also
    /// inside grouped imports (`use crate::{a::X, b::{Y, Z}}`).
    fn crate_paths(text: &str) -> Vec<String> {
        let mut out = Vec::new();
        for (i, _) in text.match_indices("crate::") {
            let rest = &text[i + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                // Names at the group's first level.
                let (mut depth, mut name, mut at_start) = (0, String::new(), true);
                for c in group.chars() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => break,
                        '}' => depth -= 1,
                        ',' if depth == 0 => at_start = true,
                        c if depth == 0 && at_start && (c.is_alphanumeric() || c == '_') => {
                            name.push(c)
                        }
                        _ if depth == 0 && !name.is_empty() => {
                            out.push(std::mem::take(&mut name));
                            at_start = false;
                        }
                        _ => {}
                    }
                }
            } else {
                let n: String =
                    rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                out.push(n);
            }
        }
        out
    }

    fn layer(module: &str) -> Option<usize> {
        LAYERS.iter().position(|l| l.contains(&module))
    }

    fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for e in fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }

    #[test]
    fn crate_paths_reads_grouped_imports() {
        let text = "use crate::{\n    capture::{self, decode::{Http, Packet}},\n    model::Event,\n};\nlet x = crate::sys::clock::now();";
        assert_eq!(crate_paths(text), ["capture", "model", "sys"]);
    }

    #[test]
    fn layers_import_only_downward() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        walk(&src, &mut files);
        let mut wrong = Vec::new();
        for f in &files {
            let rel = f.strip_prefix(&src).unwrap();
            let module =
                rel.components().next().unwrap().as_os_str().to_string_lossy().replace(".rs", "");
            // Test code may reach anywhere.
            if rel.ends_with("tests.rs") || ["lib", "main", "docs"].contains(&module.as_str()) {
                continue;
            }
            let Some(own) = layer(&module) else {
                wrong.push(format!("{}: module {module} is in no layer", rel.display()));
                continue;
            };
            let text = fs::read_to_string(f).unwrap();
            let code = text.split("#[cfg(test)]\nmod tests").next().unwrap();
            for used in crate_paths(code) {
                if used == module {
                    continue;
                }
                match layer(&used) {
                    Some(l) if l < own => {}
                    _ => wrong.push(format!("{}: {module} imports {used}", rel.display())),
                }
            }
        }
        assert!(wrong.is_empty(), "imports against the layers:\n{}", wrong.join("\n"));
    }
}
