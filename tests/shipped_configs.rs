//! The invariants of every shipped deployment file (issue 22): the Envoy bootstraps and Istio
//! manifests under envoy/ are what operators copy, so they are held to the production lints of
//! `check-config` (src/lint: the same rules judge users' own files) with zero findings, plus
//! what only the shipped set must guarantee.

use serde::Deserialize as _;
use serde_json::Value as Json;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `*.yaml` under envoy/, relative to the repository root, sorted.
fn shipped_files() -> Vec<String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "yaml") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(&root().join("envoy"), &mut files);
    let mut rel: Vec<String> = files
        .iter()
        .map(|p| p.strip_prefix(root()).unwrap().display().to_string())
        .collect();
    rel.sort();
    rel
}

/// The YAML documents of a file, as JSON.
fn documents(rel: &str) -> Vec<Json> {
    let text = std::fs::read_to_string(root().join(rel)).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| Json::deserialize(d).unwrap_or_else(|e| panic!("{rel}: {e}")))
        .filter(|d| !d.is_null())
        .collect()
}

#[test]
fn every_shipped_file_passes_the_production_lints() {
    let files = shipped_files();
    assert!(files.len() >= 8, "{files:?}");
    let mut linted = 0;
    let mut findings = Vec::new();
    for rel in &files {
        for doc in documents(rel) {
            if let Some(found) = azure_llm_filter::lint::document(&doc) {
                linted += 1;
                findings.extend(found.into_iter().map(|f| format!("{rel}: {f}")));
            }
        }
    }
    assert!(linted >= 11, "only {linted} documents linted");
    assert!(findings.is_empty(), "\n{}", findings.join("\n"));
}

/// Every upstream TLS context of a shipped file verifies the server: this counts them, so a
/// file that stops using TLS for Entra or Azure (plain HTTP to 443 is a lint finding too)
/// cannot pass by having nothing to check.
#[test]
fn every_shipped_file_reaches_entra_and_azure_over_verified_tls() {
    let expected = [
        ("envoy/aks-workload-identity.yaml", 2),
        ("envoy/azure-production.yaml", 4),
        ("envoy/istio/aks-workload-identity/envoyfilter.yaml", 2),
        ("envoy/istio/envoyfilter.yaml", 2),
        ("envoy/istio/azure-egress.yaml", 4),
    ];
    for (rel, n) in expected {
        let docs = documents(rel);
        let mut contexts = Vec::new();
        for doc in &docs {
            tls_contexts(doc, &mut contexts);
        }
        assert_eq!(contexts.len(), n, "{rel}: {contexts:?}");
        for c in contexts {
            assert!(
                c.get("common_tls_context").is_some() || c.get("caCertificates").is_some(),
                "{rel}: {c}"
            );
        }
    }
}

/// Upstream TLS contexts (Envoy) and TLS settings of DestinationRules (Istio), anywhere in `v`.
fn tls_contexts<'a>(v: &'a Json, out: &mut Vec<&'a Json>) {
    match v {
        Json::Object(m) => {
            let upstream = m
                .get("@type")
                .and_then(Json::as_str)
                .is_some_and(|t| t.ends_with(".UpstreamTlsContext"));
            let istio = m.get("mode").and_then(Json::as_str) == Some("SIMPLE");
            if upstream || istio {
                out.push(v);
            }
            m.values().for_each(|c| tls_contexts(c, out));
        }
        Json::Array(a) => a.iter().for_each(|c| tls_contexts(c, out)),
        _ => {}
    }
}

/// A file for local trial only says so in its first lines; the others are meant for production.
#[test]
fn the_demo_says_it_is_for_local_trial_only() {
    for rel in shipped_files() {
        let text = std::fs::read_to_string(root().join(&rel)).unwrap();
        let head: String = text.lines().take(3).collect::<Vec<_>>().join("\n");
        let trial = head.contains("FOR LOCAL TRIAL ONLY");
        assert_eq!(trial, rel == "envoy/envoy.yaml", "{rel}:\n{head}");
    }
}

fn check_config(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_check-config"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("run check-config");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn scratch(name: &str, text: &str) -> String {
    let dir = root().join("target/shipped-configs-tests");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

/// check-config runs the same lints on whatever it is given: the shipped files pass, a copy
/// whose clusters no longer verify fails with one line per cluster naming it and the fix, and
/// `--warn-only` reports the same without failing.
#[test]
fn check_config_lints_every_shipped_file_and_fails_on_a_hazard() {
    let files = shipped_files();
    let args: Vec<&str> = files.iter().map(String::as_str).collect();
    let (code, out) = check_config(&args);
    assert_eq!(code, Some(0), "{out}");
    assert!(!out.contains(": hazard: "), "{out}");

    let production = std::fs::read_to_string(root().join("envoy/azure-production.yaml")).unwrap();
    // Without the validation contexts the file still parses; each TLS cluster is a hazard.
    let stripped = strip_validation(&production);
    let file = scratch("production-unverified.yaml", &stripped);
    let (code, out) = check_config(&[&file]);
    assert_eq!(code, Some(1), "{out}");
    let hazards: Vec<&str> = out.lines().filter(|l| l.contains(": hazard: ")).collect();
    assert_eq!(hazards.len(), 4, "{out}");
    for cluster in ["entra", "ptu", "payg", "foundry"] {
        assert!(
            hazards
                .iter()
                .any(|l| l.contains(&format!(
                    ": hazard: cluster {cluster}: upstream TLS without validation_context"
                )) && l.contains("fix: add common_tls_context.validation_context")),
            "{cluster}: {out}"
        );
    }
    let (code, out) = check_config(&["--warn-only", &file]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(out.matches(": hazard: ").count(), 4, "{out}");
}

/// The file without its `validation_context` blocks (each is the key line and the lines
/// indented below it).
fn strip_validation(text: &str) -> String {
    let mut out = String::new();
    let mut skip_below: Option<usize> = None;
    for line in text.lines() {
        let indent = line.len() - line.trim_start().len();
        if let Some(i) = skip_below {
            if indent > i || line.trim().is_empty() {
                continue;
            }
            skip_below = None;
        }
        if line.trim_start().starts_with("validation_context:") {
            skip_below = Some(indent);
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}
