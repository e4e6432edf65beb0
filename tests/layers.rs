//! The folders are the architecture: imports flow one way (ARCHITECTURE.md, "Modules").
//! This test reads every source file and fails on an import that points up a layer, so
//! a cycle cannot come back unnoticed.

use std::collections::BTreeMap;
use std::path::Path;

/// Layer of each top-level module: a module may import its own layer and those below.
fn layer(module: &str) -> Option<u8> {
    Some(match module {
        "clock" | "config" | "root" | "budget" | "pair" | "huge_pages" | "human" => 0,
        "store" => 1,
        "engine" | "dataset" | "generate" => 2,
        "work" => 3,
        "run" => 4,
        "serve" => 5,
        "cli" => 6,
        _ => return None,
    })
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn imports_flow_one_way_between_the_subsystems() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut upward: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap().to_string_lossy().into_owned();
        if rel == "main.rs" || rel == "lib.rs" {
            continue;
        }
        let top = rel.split('/').next().unwrap().trim_end_matches(".rs");
        let mine = layer(top).unwrap_or_else(|| panic!("{rel}: module {top} has no layer here"));
        let text = std::fs::read_to_string(f).unwrap();
        for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
            for (i, _) in line.match_indices("crate::") {
                let name: String = line[i + 7..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if let Some(theirs) = layer(&name)
                    && theirs > mine
                {
                    upward.entry(rel.clone()).or_default().push(name);
                }
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports pointing up a layer: {upward:#?}"
    );
}

#[test]
fn the_work_modules_import_each_other_one_way() {
    // assign → kinds → workbench → (deliverables, backfill) → session → (handoff, vcs) → tasks → grade, history
    let order = [
        "assign",
        "kinds",
        "workbench",
        "deliverables",
        "backfill",
        "session",
        "handoff",
        "vcs",
        "tasks",
        "grade",
        "history",
    ];
    let work = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/work");
    for (i, m) in order.iter().enumerate() {
        let text = std::fs::read_to_string(work.join(format!("{m}.rs"))).unwrap();
        for above in &order[..i] {
            let needle = format!("crate::work::{above}");
            assert!(
                !text
                    .lines()
                    .filter(|l| !l.trim_start().starts_with("//"))
                    .any(|l| l.contains(&needle)),
                "work::{m} imports work::{above}, which sits above it"
            );
        }
    }
}
