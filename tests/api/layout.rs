//! The module map in `src/lib.rs` is true: every `crate::` and `super::` path in `src/` goes down
//! the table of layers, and no two modules use each other, directly or around a loop.
//!
//! Paths are read from the source text (comments and unit tests left out), which is what a
//! reader follows; a path hidden in a macro would escape, and none of ours is.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

/// `src/lib.rs`'s table, top line first. A module may use modules of lower lines, and on the
/// last line each other.
const LAYERS: &[&[&str]] = &[
    &["cli"],
    &["app"],
    &["http"],
    &["write"],
    &["read"],
    &["db", "storage", "imaging", "metrics"],
    &["config", "model", "blocking", "telemetry"],
];

fn rank(top: &str) -> usize {
    LAYERS
        .iter()
        .position(|line| line.contains(&top))
        .unwrap_or_else(|| panic!("`{top}` is not in the table of layers (src/lib.rs)"))
}

/// Every `.rs` file under `dir`.
fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module a file holds: `src/write/upload.rs` is `["write", "upload"]`, `src/db/mod.rs` is
/// `["db"]`.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts
}

/// The text that counts: no comments, no `#[cfg(test)] mod tests`.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    };
    text.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every path that starts with `crate::` or `super::`, with `use` groups expanded:
/// `crate::{a::b, c::{d, e}}` gives `crate::a::b`, `crate::c::d`, `crate::c::e`.
fn paths(code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for root in ["crate", "super"] {
        let needle = format!("{root}::");
        let mut from = 0;
        while let Some(at) = code[from..].find(&needle) {
            let start = from + at;
            from = start + needle.len();
            let before = code[..start].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue; // `portfolio_server::crate…` or `a::super`: not a root
            }
            expand(vec![root.to_string()], &code[from..], &mut out);
        }
    }
    out
}

/// Reads one path (or group) from the start of `rest`, after `prefix::`.
fn expand(prefix: Vec<String>, rest: &str, out: &mut Vec<Vec<String>>) {
    let rest = rest.trim_start();
    if let Some(group) = rest.strip_prefix('{') {
        let mut depth = 0;
        let mut item_start = 0;
        for (i, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    expand(prefix.clone(), &group[item_start..i], out);
                    return;
                }
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(prefix.clone(), &group[item_start..i], out);
                    item_start = i + 1;
                }
                _ => {}
            }
        }
        return;
    }
    let ident: String = rest
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    if ident.is_empty() {
        out.push(prefix);
        return;
    }
    let mut path = prefix;
    path.push(ident.clone());
    match rest[ident.len()..].strip_prefix("::") {
        Some(more) => expand(path, more, out),
        None => out.push(path),
    }
}

/// The longest known module `path` names (`crate::write::upload::Uploader` → `write::upload`).
fn resolve(modules: &BTreeSet<Vec<String>>, path: &[String]) -> Option<Vec<String>> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|m| modules.contains(m))
}

/// module → the modules it uses.
fn graph() -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&src, &mut all);
    all.retain(|f| !f.ends_with("main.rs"));
    let modules: BTreeSet<Vec<String>> = all.iter().map(|f| module_of(&src, f)).collect();
    let mut edges = BTreeMap::new();
    for file in &all {
        let here = module_of(&src, file);
        let mut uses = BTreeSet::new();
        for path in paths(&code(&std::fs::read_to_string(file).unwrap())) {
            let absolute: Vec<String> = if path[0] == "super" {
                let parent = &here[..here.len().saturating_sub(1)];
                parent.iter().chain(&path[1..]).cloned().collect()
            } else {
                path[1..].to_vec()
            };
            if let Some(target) = resolve(&modules, &absolute)
                && target != here
                && !target.is_empty()
            {
                uses.insert(target);
            }
        }
        edges.insert(here, uses);
    }
    edges
}

#[test]
fn every_module_uses_only_the_layers_below_it() {
    let mut climbs = Vec::new();
    for (from, uses) in graph() {
        let Some(top) = from.first() else { continue };
        for to in uses {
            let (a, b) = (rank(top), rank(&to[0]));
            let bottom = a == LAYERS.len() - 1 && b == a;
            if to[0] != *top && b <= a && !bottom {
                climbs.push(format!("{} uses {}", from.join("::"), to.join("::")));
            }
        }
    }
    assert!(climbs.is_empty(), "{climbs:#?}");
}

#[test]
fn no_module_is_in_a_cycle() {
    let graph = graph();
    // Depth-first search with colours: meeting a module still on the stack is a cycle.
    fn visit<'a>(
        m: &'a Vec<String>,
        graph: &'a BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        state: &mut BTreeMap<&'a Vec<String>, bool>,
        stack: &mut Vec<&'a Vec<String>>,
        cycles: &mut Vec<String>,
    ) {
        match state.get(m) {
            Some(true) => {
                let at = stack.iter().position(|s| *s == m).unwrap();
                let names: Vec<String> = stack[at..].iter().map(|s| s.join("::")).collect();
                cycles.push(format!("{} -> {}", names.join(" -> "), m.join("::")));
                return;
            }
            Some(false) => return,
            None => {}
        }
        state.insert(m, true);
        stack.push(m);
        for next in graph.get(m).into_iter().flatten() {
            // A child using its parent's items (the seam in `mod.rs`) is not a cycle: the
            // parent only declares the child.
            if m.starts_with(next) {
                continue;
            }
            visit(next, graph, state, stack, cycles);
        }
        stack.pop();
        state.insert(m, false);
    }
    let (mut state, mut cycles) = (BTreeMap::new(), Vec::new());
    for m in graph.keys() {
        visit(m, &graph, &mut state, &mut Vec::new(), &mut cycles);
    }
    assert!(cycles.is_empty(), "{cycles:#?}");
}

#[test]
fn the_reader_finds_paths_in_groups_and_skips_comments() {
    let text = "use crate::{a::b, c::{d, e::F}};\n// crate::z::y\nfn f() { super::g::h(); }";
    let found: Vec<String> = paths(&code(text)).iter().map(|p| p.join("::")).collect();
    assert_eq!(
        found,
        [
            "crate::a::b",
            "crate::c::d",
            "crate::c::e::F",
            "super::g::h"
        ]
    );
}
