//! The crate's layout rules (ARCHITECTURE.md, issue 19), checked on the files under src/:
//!
//! - no source file over 800 lines and no function over 150 lines. Test code is exempt: files
//!   named `tests.rs` or `testkeys.rs`, and the body of a file's `#[cfg(test)] mod tests { .. }`
//!   (the lines from `#[cfg(test)]` to the `}` that closes the module at column 0);
//! - `config/error.rs` is the bottom of the import graph: it names nothing of the crate
//!   (`crate::`, `super::`);
//! - the domains' configuration files import only `config::error` from `config`, so `config`
//!   can import them without an import circle.
//!
//! Line-based on rustfmt-formatted code (CI checks the formatting): a function starts at a
//! `fn` line and ends at the first `}` with the same indentation.

use std::fs;
use std::path::{Path, PathBuf};

const MAX_FILE_LINES: usize = 800;
const MAX_FUNCTION_LINES: usize = 150;
/// The domains' configuration: they check their sections with `config::error` and nothing
/// else of `config` (which assembles them).
const DOMAIN_CONFIG_FILES: &[&str] = &[
    "src/auth/config.rs",
    "src/capture.rs",
    "src/pricing.rs",
    "src/ratelimit.rs",
    "src/rls/config.rs",
    "src/routing/config.rs",
    "src/entra/credential",
    "src/guard/config.rs",
];

fn source_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            source_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn is_test_file(path: &Path) -> bool {
    matches!(
        path.file_name().and_then(|n| n.to_str()),
        Some("tests.rs" | "testkeys.rs")
    )
}

/// The file's lines without its `#[cfg(test)] mod tests { .. }` block(s).
fn non_test_lines(text: &str) -> Vec<&str> {
    let lines: Vec<&str> = text.lines().collect();
    let mut kept = Vec::with_capacity(lines.len());
    let mut i = 0;
    while i < lines.len() {
        let opens_tests = lines[i].trim() == "#[cfg(test)]"
            && lines
                .get(i + 1)
                .is_some_and(|l| l.starts_with("mod tests {") || l.starts_with("pub mod tests {"));
        if opens_tests {
            let end = (i + 2..lines.len()).find(|&j| lines[j] == "}");
            i = end.map_or(lines.len(), |j| j + 1);
            continue;
        }
        kept.push(lines[i]);
        i += 1;
    }
    kept
}

fn rel(path: &Path) -> String {
    path.strip_prefix(env!("CARGO_MANIFEST_DIR"))
        .unwrap_or(path)
        .display()
        .to_string()
}

fn src_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    source_files(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut files,
    );
    files.sort();
    assert!(files.len() > 20, "found only {files:?}");
    files
}

/// (name, first line number, length) of each function longer than `max` lines.
fn long_functions(lines: &[&str], max: usize) -> Vec<(String, usize, usize)> {
    let mut found = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let body = line.trim_start();
        let indent = &line[..line.len() - body.len()];
        let body = body
            .trim_start_matches("pub(crate) ")
            .trim_start_matches("pub(super) ")
            .trim_start_matches("pub ")
            .trim_start_matches("const ")
            .trim_start_matches("async ");
        let Some(rest) = body.strip_prefix("fn ") else {
            continue;
        };
        // The line that opens the body; a declaration without one (a trait's) ends with ';'
        // first, and a body closed on the same line is short.
        let opens = lines[i..]
            .iter()
            .find(|l| l.contains('{') || l.trim_end().ends_with(';'));
        if opens.is_none_or(|l| !l.contains('{') || l.trim_end().ends_with('}')) {
            continue;
        }
        let end = lines[i..]
            .iter()
            .position(|l| *l == format!("{indent}}}"))
            .map(|n| i + n);
        let Some(end) = end else { continue };
        let len = end - i + 1;
        if len > max {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            found.push((name, i + 1, len));
        }
    }
    found
}

#[test]
fn no_source_file_over_800_lines_and_no_function_over_150() {
    let mut problems = Vec::new();
    for path in src_files() {
        if is_test_file(&path) {
            continue;
        }
        let text = fs::read_to_string(&path).unwrap();
        let lines = non_test_lines(&text);
        if lines.len() > MAX_FILE_LINES {
            problems.push(format!(
                "{}: {} lines outside tests (at most {MAX_FILE_LINES})",
                rel(&path),
                lines.len()
            ));
        }
        for (name, _, len) in long_functions(&lines, MAX_FUNCTION_LINES) {
            problems.push(format!(
                "{}: fn {name} has {len} lines (at most {MAX_FUNCTION_LINES})",
                rel(&path)
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn config_error_imports_nothing_of_the_crate() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/config/error.rs");
    let text = fs::read_to_string(&path).unwrap();
    for (n, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or_default();
        assert!(
            !code.contains("crate::") && !code.contains("super::"),
            "src/config/error.rs:{}: {line:?}: error.rs must import nothing of the crate",
            n + 1
        );
    }
}

#[test]
fn domain_configuration_imports_only_config_error() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut checked = 0;
    for path in src_files() {
        let r = rel(&path);
        if is_test_file(&path) || !DOMAIN_CONFIG_FILES.iter().any(|d| r.starts_with(d)) {
            continue;
        }
        let text = fs::read_to_string(root.join(&r)).unwrap();
        for line in non_test_lines(&text) {
            let code = line.split("//").next().unwrap_or_default();
            for (at, _) in code.match_indices("crate::config") {
                assert!(
                    code[at..].starts_with("crate::config::error"),
                    "{r}: {line:?}: a domain's configuration imports only config::error"
                );
            }
        }
        checked += 1;
    }
    assert!(
        checked >= DOMAIN_CONFIG_FILES.len(),
        "checked {checked} files"
    );
}

#[test]
fn the_rules_see_what_they_check() {
    // A long function and a test module: the rules count the one and skip the other.
    let long = format!(
        "fn long() {{\n{}}}\n#[cfg(test)]\nmod tests {{\n    fn t() {{\n{}    }}\n}}\n",
        "    x();\n".repeat(200),
        "        y();\n".repeat(900)
    );
    let lines = non_test_lines(&long);
    assert_eq!(lines.len(), 202);
    assert_eq!(
        long_functions(&lines, MAX_FUNCTION_LINES),
        vec![("long".to_string(), 1, 202)]
    );
    let short = "    pub fn f() {\n        a();\n    }\n";
    assert!(long_functions(&short.lines().collect::<Vec<_>>(), 2).len() == 1);
    assert!(long_functions(&short.lines().collect::<Vec<_>>(), 3).is_empty());
}
