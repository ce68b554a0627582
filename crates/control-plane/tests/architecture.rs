//! The control plane's layering, checked on its source: the HTTP layer
//! (`src/http/`) depends on the core, never the other way round. Only
//! `src/lib.rs`, which wires the two together, may name both
//! (docs/ARCHITECTURE.md, "connectivity-control-plane").

use std::path::{Path, PathBuf};

/// Files allowed to name the HTTP layer besides those inside it.
const WIRING: &[&str] = &["src/lib.rs"];

#[test]
fn the_core_does_not_depend_on_the_http_layer() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let files = rust_files(&root.join("src"));
    let core: Vec<&PathBuf> = files
        .iter()
        .filter(|f| !f.starts_with(root.join("src/http")))
        .filter(|f| !WIRING.iter().any(|w| *f == &root.join(w)))
        .collect();
    // A wrong path or filter must not make the test pass by reading nothing.
    assert!(
        core.len() >= 10,
        "found only {} core files under {}",
        core.len(),
        root.join("src").display()
    );
    assert!(
        files.iter().any(|f| f.starts_with(root.join("src/http"))),
        "found no file under src/http: the layer this test guards has moved"
    );

    let mut offences = Vec::new();
    for file in core {
        let text = std::fs::read_to_string(file)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
        let shown = file.strip_prefix(root).unwrap_or(file).display();
        for line in http_references(&text) {
            offences.push(format!("{shown}:{line}"));
        }
    }
    assert!(
        offences.is_empty(),
        "the core refers to the HTTP layer (crate::http / super::http); move what it needs \
         into the core, or do the wiring in src/lib.rs:\n  {}",
        offences.join("\n  ")
    );
}

/// The detector itself, on the forms a reference can take, so that a broken
/// matcher cannot make the test above pass.
#[test]
fn references_to_the_http_layer_are_found_in_every_form() {
    let found = |text: &str| http_references(text).len();
    assert_eq!(found("use crate::http::serve;"), 1);
    assert_eq!(found("use super::http::oauth::TOKEN_PATH;"), 1);
    assert_eq!(found("let x = super::super::http::X;"), 1);
    assert_eq!(found("use crate::{\n    audit,\n    http::serve,\n};"), 1);
    assert_eq!(found("use super::{http, state};"), 1);
    assert_eq!(found("f(crate::http::routes());"), 1);
    // Not references: comments, strings, other names, nested groups.
    assert_eq!(found("//! read by [`crate::http`]"), 0);
    assert_eq!(found("let a = 1; // crate::http would be wrong"), 0);
    assert_eq!(found("let s = \"crate::http\";"), 0);
    assert_eq!(found("use crate::https_proxy;"), 0);
    assert_eq!(found("use crate::delivery::{http, sink};"), 0);
    assert_eq!(found("use crate::{delivery::{http}, state};"), 0);
    assert_eq!(found("let s = r#\"a \" crate::http\"#;"), 0);
    assert_eq!(found("/* crate::http */ let x = 1;"), 0);
    // Literals that hold a quote do not hide the code after them.
    assert_eq!(found("let q = b'\"'; use crate::http::x;"), 1);
    assert_eq!(found("let q = '\\''; use crate::http::x;"), 1);
    assert_eq!(found("let s = r#\"\"\"#; use crate::http::x;"), 1);
    assert_eq!(found("fn f<'a>(x: &'a str) { crate::http::g(x) }"), 1);
    // Lines are counted through comments and strings spanning lines.
    assert_eq!(
        http_references("/* a\n b */\nlet s = \"x\n y\";\nuse crate::http;"),
        vec![5]
    );
}

/// Every `.rs` file under `dir`, recursively, in a stable order.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
    for entry in entries {
        let path = entry
            .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
            .path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// Line numbers (from 1) of the references to the crate's `http` module in
/// `text`, comments and string literals left out.
fn http_references(text: &str) -> Vec<usize> {
    let code = code_only(text);
    let mut lines = Vec::new();
    for prefix in ["crate::", "super::"] {
        for (at, _) in code.match_indices(prefix) {
            let rest = &code[at + prefix.len()..];
            let hit = if let Some(group) = rest.strip_prefix('{') {
                group_names_http(group)
            } else {
                starts_with_http(rest)
            };
            if hit {
                lines.push(code[..at].matches('\n').count() + 1);
            }
        }
    }
    lines.sort_unstable();
    lines.dedup();
    lines
}

/// Whether a path continues with the segment `http` (not `https`, `http_x`).
fn starts_with_http(rest: &str) -> bool {
    rest.strip_prefix("http")
        .is_some_and(|after| !after.starts_with(|c: char| c.is_alphanumeric() || c == '_'))
}

/// Whether a `use ...::{...}` group, read from just after its `{`, has an
/// item whose first segment is `http` (items of nested groups are not).
fn group_names_http(group: &str) -> bool {
    let mut depth = 0;
    let mut item_start = true;
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return false,
            '}' => depth -= 1,
            ',' if depth == 0 => item_start = true,
            c if c.is_whitespace() => {}
            _ if item_start && depth == 0 => {
                if starts_with_http(&group[i..]) {
                    return true;
                }
                item_start = false;
            }
            _ => {}
        }
    }
    false
}

/// `text` with comments, string and char literals blanked (newlines kept,
/// so line numbers still match).
fn code_only(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let skipped = match chars[i] {
            '/' if chars.get(i + 1) == Some(&'/') => line_comment(&chars, i),
            '/' if chars.get(i + 1) == Some(&'*') => block_comment(&chars, i),
            '"' => string(&chars, i + 1),
            'r' if raw_string_start(&chars, i) => raw_string(&chars, i + 1),
            '\'' => char_literal(&chars, i),
            _ => None,
        };
        match skipped {
            Some(end) => {
                out.extend(chars[i..end].iter().filter(|c| **c == '\n'));
                i = end;
            }
            None => {
                out.push(chars[i]);
                i += 1;
            }
        }
    }
    out
}

/// End (exclusive) of a `//` comment starting at `i`: its line's end.
fn line_comment(chars: &[char], i: usize) -> Option<usize> {
    let len = chars[i..].iter().position(|c| *c == '\n');
    Some(len.map_or(chars.len(), |n| i + n))
}

/// End of a `/* */` comment starting at `i` (they nest in Rust).
fn block_comment(chars: &[char], mut i: usize) -> Option<usize> {
    let mut depth = 0;
    while i < chars.len() {
        match (chars[i], chars.get(i + 1)) {
            ('/', Some('*')) => {
                depth += 1;
                i += 2;
            }
            ('*', Some('/')) => {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => i += 1,
        }
    }
    Some(chars.len())
}

/// End of a string whose text starts at `i` (after its opening quote).
fn string(chars: &[char], mut i: usize) -> Option<usize> {
    while i < chars.len() {
        match chars[i] {
            '\\' => i += 2,
            '"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    Some(chars.len())
}

/// Whether `r` at `i` opens a raw string (`r"`, `r#"`, `br#"`), rather than
/// ending an identifier.
fn raw_string_start(chars: &[char], i: usize) -> bool {
    let ident = |c: &char| c.is_alphanumeric() || *c == '_';
    let before = match i.checked_sub(1).map(|b| chars[b]) {
        Some('b') => i.checked_sub(2).map(|b| chars[b]),
        other => other,
    };
    let opens = chars[i + 1..].iter().find(|c| **c != '#') == Some(&'"');
    opens && !before.is_some_and(|c| ident(&c))
}

/// End of a raw string whose hashes start at `i`.
fn raw_string(chars: &[char], i: usize) -> Option<usize> {
    let hashes = chars[i..].iter().take_while(|c| **c == '#').count();
    let mut j = i + hashes + 1;
    while j < chars.len() {
        if chars[j] == '"'
            && chars[j + 1..]
                .iter()
                .take(hashes)
                .filter(|c| **c == '#')
                .count()
                == hashes
        {
            return Some(j + 1 + hashes);
        }
        j += 1;
    }
    Some(chars.len())
}

/// End of a char literal at `i` (`'x'`, `'\n'`, `'\u{..}'`); `None` for a
/// lifetime or label, which stays code.
fn char_literal(chars: &[char], i: usize) -> Option<usize> {
    if chars.get(i + 1) == Some(&'\\') {
        // From the character after the escaped one, so `'\''` ends right.
        let close = chars[i + 3..].iter().position(|c| *c == '\'')?;
        return Some(i + 3 + close + 1);
    }
    (chars.get(i + 2) == Some(&'\'')).then_some(i + 3)
}
