//! Every metric the code emits has help text (promtool wants it), described
//! by the component that emits it.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

/// `switchboard_*` names in string literals.
fn names(text: &str) -> BTreeSet<&str> {
    let is_name = |s: &&str| {
        s.len() > "switchboard_".len()
            && s.starts_with("switchboard_")
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    };
    text.split('"').filter(is_name).collect()
}

/// A metric is described by the first string after a `describe_counter!(`,
/// `describe_gauge!(` or `describe_histogram!(`.
fn described_in(text: &str) -> Vec<&str> {
    text.split("describe_")
        .skip(1)
        .filter(|rest| {
            ["counter!", "gauge!", "histogram!"]
                .iter()
                .any(|m| rest.starts_with(m))
        })
        .filter_map(|rest| rest.split('"').nth(1))
        .collect()
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

#[test]
fn every_emitted_metric_is_described() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let texts: Vec<String> = ["runtime/src", "broker/src", "workers/src", "benches/src"]
        .iter()
        .flat_map(|dir| walk(&root.join(dir)))
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    let described: BTreeSet<&str> = texts.iter().flat_map(|t| described_in(t)).collect();
    let undescribed: BTreeSet<&str> = texts
        .iter()
        .flat_map(|t| names(t))
        .filter(|n| !described.contains(n))
        .collect();
    assert!(
        undescribed.is_empty(),
        "no describe_*! for: {undescribed:?}"
    );
    // The shared runtime emits none of its own: names live with components.
    let runtime = walk(&root.join("runtime/src"))
        .into_iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect::<Vec<_>>();
    assert!(
        runtime.iter().all(|t| described_in(t).is_empty()),
        "the runtime describes no component's metrics"
    );
}
