//! Runs official-SDK caller scripts (Python, `make sdk`'s .venv) against a gateway: one process
//! per call, one JSON line per case on stdout (`{"case", "result"}` or `{"case", "exception",
//! "status", "body"}`), collected by case name.

use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The Python of the project's venv, with the SDKs (`make sdk`); `SDK_PYTHON` overrides.
pub fn python() -> PathBuf {
    let p = std::env::var_os("SDK_PYTHON")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| super::workspace_root().join(".venv/bin/python"));
    assert!(
        p.is_file(),
        "no Python with the SDKs at {}: run `make sdk` (or `make test`), or set SDK_PYTHON",
        p.display()
    );
    p
}

/// Runs `script CASE...` with `env`; the cases' JSON lines by name (every case must report).
pub async fn run(script: &Path, cases: &[&str], env: &[(&str, String)]) -> HashMap<String, Value> {
    let mut cmd = tokio::process::Command::new(python());
    cmd.arg(script).args(cases);
    for (k, v) in env {
        cmd.env(k, v);
    }
    // The SDKs read these; none may point the callers elsewhere.
    for var in [
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "ANTHROPIC_API_KEY",
        "ANTHROPIC_BASE_URL",
        "AZURE_OPENAI_ENDPOINT",
        "AZURE_OPENAI_API_KEY",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "http_proxy",
        "https_proxy",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("NO_PROXY", "*").kill_on_drop(true);
    let started = Instant::now();
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("SDK cases did not finish in 120 s")
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "sdk cases {cases:?}: {:.1} s\n{stdout}{stderr}",
        started.elapsed().as_secs_f64()
    );
    assert!(
        out.status.success(),
        "{} failed: {stderr}",
        script.display()
    );
    let results: HashMap<String, Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|v| (v["case"].as_str().unwrap_or_default().to_string(), v))
        .collect();
    for c in cases {
        assert!(
            results.contains_key(*c),
            "no result for {c}: {stdout}{stderr}"
        );
    }
    results
}

/// The case's result, or a failure showing what the SDK raised.
pub fn ok<'a>(results: &'a HashMap<String, Value>, case: &str) -> &'a Value {
    let line = &results[case];
    assert!(line.get("result").is_some(), "{case} raised: {line:#}");
    &line["result"]
}

/// The case's exception: (class, status, body).
pub fn raised<'a>(results: &'a HashMap<String, Value>, case: &str) -> (&'a str, u64, &'a Value) {
    let line = &results[case];
    assert!(
        line.get("exception").is_some(),
        "{case} did not raise: {line:#}"
    );
    (
        line["exception"].as_str().unwrap_or_default(),
        line["status"].as_u64().unwrap_or(0),
        &line["body"],
    )
}
