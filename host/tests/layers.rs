//! The host crate's modules form layers, and an import only ever points to a lower one
//! (README, "Layout"). An import that points sideways or up is how cycles start; this test
//! reads every `crate::` path under host/src and fails on the first such import, naming
//! the file. A new top-level module must be given a layer here before it compiles in.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Lowest first. A module may use modules of lower layers only.
const LAYERS: &[&[&str]] = &[
    &["exit", "check"],
    &["state", "ui"],
    &["hostsetup"],
    &["backend"],
    &["ssh"],
    &["clock", "agent", "proxy", "image", "seed"],
    &["doctor", "lifecycle", "args"],
    &["cmd"],
    &["cli"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The source without comments and string literals, so that neither a doc comment nor a
/// message that mentions a path counts as an import.
fn code_only(text: &str) -> String {
    let b = text.as_bytes();
    let (mut out, mut i) = (String::with_capacity(text.len()), 0);
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'\'' if b.get(i + 1) == Some(&b'"') && b.get(i + 2) == Some(&b'\'') => i += 3,
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
                out.push_str("\"\"");
            }
            c => {
                out.push(c as char);
                i += 1;
            }
        }
    }
    out
}

fn ident_at(s: &str) -> &str {
    let end = s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(s.len());
    &s[..end]
}

/// The first segment of every path that follows `prefix` (`crate::`, `super::`), looking
/// into `{a, b::c}` groups.
fn first_segments(code: &str, prefix: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (at, _) in code.match_indices(prefix) {
        let rest = code[at + prefix.len()..].trim_start();
        if let Some(group) = rest.strip_prefix('{') {
            let (mut depth, mut start) = (0, 0);
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        found.insert(ident_at(group[start..i].trim()).to_string());
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        found.insert(ident_at(group[start..i].trim()).to_string());
                        start = i + 1;
                    }
                    _ => {}
                }
            }
        } else {
            found.insert(ident_at(rest).to_string());
        }
    }
    found.retain(|s| !s.is_empty() && s != "self");
    found
}

/// The top-level module a file under src/ belongs to (`cmd/up.rs` → `cmd`).
fn module_of(file: &Path) -> String {
    let rel = file.strip_prefix(src()).unwrap();
    let first = rel.iter().next().unwrap().to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

#[test]
fn every_import_points_to_a_lower_layer() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut wrong = Vec::new();
    for f in &files {
        let module = module_of(f);
        if module == "lib" || module == "main" {
            continue;
        }
        let Some(mine) = layer_of(&module) else {
            wrong.push(format!("{}: module `{module}` has no layer in tests/layers.rs", f.display()));
            continue;
        };
        let code = code_only(&std::fs::read_to_string(f).unwrap());
        for used in first_segments(&code, "crate::") {
            if used == module {
                continue;
            }
            match layer_of(&used) {
                Some(theirs) if theirs < mine => {}
                Some(_) => wrong.push(format!("{}: `{module}` imports `{used}`, which is not below it", f.display())),
                None => wrong.push(format!("{}: imports `crate::{used}`, which has no layer", f.display())),
            }
        }
    }
    assert!(wrong.is_empty(), "imports against the layers:\n{}", wrong.join("\n"));
}

#[test]
fn no_command_imports_another() {
    let dir = src().join("cmd");
    let mut files = Vec::new();
    rust_files(&dir, &mut files);
    let commands: BTreeSet<String> =
        files.iter().map(|f| f.file_stem().unwrap().to_string_lossy().into_owned()).filter(|n| n != "mod").collect();
    let mut wrong = Vec::new();
    for f in &files {
        let me = f.file_stem().unwrap().to_string_lossy().into_owned();
        let code = code_only(&std::fs::read_to_string(f).unwrap());
        let via_super = first_segments(&code, "super::");
        let via_crate = first_segments(&code, "crate::cmd::");
        for other in via_super.iter().chain(&via_crate) {
            if commands.contains(other) && *other != me {
                wrong.push(format!("{}: imports the command `{other}`", f.display()));
            }
        }
    }
    assert!(wrong.is_empty(), "commands importing commands (move what they share below cmd/):\n{}", wrong.join("\n"));
}

#[test]
fn the_scanner_sees_grouped_imports_and_ignores_comments_and_strings() {
    let code = code_only(
        "use crate::{backend::{self, Endpoint}, state::vm::Vm, ssh};\n\
         // crate::doctor in a comment\n\
         let s = \"crate::cli in a string\";\n\
         let q = '\"'; crate::ui::progress::run();\n",
    );
    let got: Vec<String> = first_segments(&code, "crate::").into_iter().collect();
    assert_eq!(got, ["backend", "ssh", "state", "ui"]);
}
