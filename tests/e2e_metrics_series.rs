//! Issue 25, through a real Envoy with two workers: the workload-series cap is decided once for
//! the whole Envoy (shared data), so with 5,000 workloads exactly `max_workload_series` (200)
//! are named, each on every worker, and their counters are exact; the rest are counted together
//! (no workload label), so totals are exact too. Workload names keep their dots. Measured on
//! the way: Envoy's memory per workload (at most 512 B, rate-limit counters and prices
//! included, as on the full path) and the size of a scrape (under 1 MB) at the default cap.

mod common;

use azure_standin::{StandIn, StandInConfig};
use common::{client, Cluster, Envoy, EnvoyOptions};
use futures_util::StreamExt;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

const WORKLOADS: usize = 5_000;
const CAP: usize = 200;
const BODY: &str =
    r#"{"model":"gpt-4o","max_tokens":1,"messages":[{"role":"user","content":"hello there"}]}"#;
/// The stand-in's usage for BODY: 3 + 2 words.
const PROMPT_TOKENS: u64 = 5;

fn key(i: usize) -> String {
    format!("series-key-{i:05}")
}

/// Dotted names, as `a.b` was rewritten to `a_b` before.
fn workload(i: usize) -> String {
    format!("team.{i:05}")
}

/// Envoy's heap in use now (`/memory`, not the stat flushed every 5 s).
async fn allocated(envoy: &Envoy) -> u64 {
    let v: Value = client()
        .get(envoy.admin_url("/memory"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["allocated"].as_str().unwrap().parse().unwrap()
}

/// `azure_llm_tokens{kind="prompt"}` by workload label ("" for the workloads past the cap),
/// and the size of the scrape.
async fn prompt_tokens_by_workload(envoy: &Envoy) -> (BTreeMap<String, u64>, usize) {
    let text = client()
        .get(envoy.admin_url("/stats/prometheus"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("azure_llm_tokens{")) {
        if !line.contains("kind=\"prompt\"") {
            continue;
        }
        let w = line
            .split("workload=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or_else(|| panic!("no workload label: {line}"));
        let v: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        *out.entry(w.to_string()).or_default() += v;
    }
    (out, text.len())
}

async fn send_all(envoy: &Envoy, keys: Vec<String>, fresh_connections: bool) {
    let http = client();
    let url = envoy.url("/v1/chat/completions");
    futures_util::stream::iter(keys.into_iter().map(|k| {
        let http = http.clone();
        let url = url.clone();
        async move {
            let mut req = http
                .post(url)
                .header("api-key", k)
                .header("content-type", "application/json")
                .body(BODY);
            if fresh_connections {
                req = req.header("connection", "close");
            }
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), 200);
            let _ = resp.bytes().await;
        }
    }))
    .buffer_unordered(16)
    .collect::<Vec<()>>()
    .await;
}

#[tokio::test]
async fn five_thousand_workloads_two_workers_one_cap() {
    let standin = StandIn::start(StandInConfig::default()).await.unwrap();
    let api_keys: Vec<Value> = (0..WORKLOADS)
        .map(|i| json!({"sha256": common::hex(&Sha256::digest(key(i).as_bytes())), "workload": workload(i)}))
        .collect();
    let mut o = EnvoyOptions::new(json!({
        "credentials": common::standin_credentials(&standin.tenant_id()),
        "backends": {"aoai": {"kind": "azure_openai", "host": "r.openai.azure.com",
                              "api_version": "2024-10-21", "credential": "main"}},
        "models": {"gpt-4o": {"backend": "aoai", "deployment": "gpt-4o-prod"}},
        "auth": {"api_keys": api_keys},
        "rate_limits": {"default": {"tokens_per_minute": 1_000_000_000u64}},
        "pricing": {"models": {"gpt-4o": {"input": 2.5, "output": 10}}},
    }));
    o.clusters = vec![
        Cluster::new("entra", standin.port()),
        Cluster::new("aoai", standin.port()),
    ];
    o.backend_routes = vec!["aoai".into()];
    o.concurrency = 2;
    o.access_log = false;
    o.log_level = "warning".into();
    let envoy = Envoy::start(o).await;

    // Warm-up from one workload (it takes the first series), then one request each.
    send_all(&envoy, vec![key(0); 50], false).await;
    let before = allocated(&envoy).await;
    send_all(&envoy, (0..WORKLOADS).map(key).collect(), false).await;
    let after = allocated(&envoy).await;
    let per_workload = after.saturating_sub(before) / WORKLOADS as u64;

    let (first, scrape_bytes) = prompt_tokens_by_workload(&envoy).await;
    let named: Vec<&String> = first.keys().filter(|w| !w.is_empty()).collect();
    assert_eq!(
        named.len(),
        CAP,
        "exactly the cap is named across both workers: {named:?}"
    );
    assert!(named.iter().all(|w| w.starts_with("team.")), "{named:?}");
    let total: u64 = first.values().sum();
    assert_eq!(
        total,
        (WORKLOADS as u64 + 50) * PROMPT_TOKENS,
        "totals are exact"
    );

    // Every named workload again, each on a new connection (both workers serve them): each is
    // counted under its name wherever it lands.
    let again: Vec<String> = named
        .iter()
        .map(|w| key(w.trim_start_matches("team.").parse::<usize>().unwrap()))
        .collect();
    send_all(&envoy, again, true).await;
    let (second, _) = prompt_tokens_by_workload(&envoy).await;
    for w in &named {
        let want = if w.as_str() == "team.00000" { 52 } else { 2 };
        assert_eq!(
            second.get(w.as_str()),
            Some(&(want * PROMPT_TOKENS)),
            "{w} counted under its name on every worker"
        );
    }
    assert_eq!(second.get(""), first.get(""), "nothing new past the cap");
    assert_eq!(second.keys().filter(|w| !w.is_empty()).count(), CAP);

    eprintln!(
        "e2e_metrics_series: {WORKLOADS} workloads, 2 workers: {per_workload} B of Envoy memory per workload \
         ({before} -> {after}), a scrape of {scrape_bytes} bytes with {CAP} named"
    );
    assert!(per_workload <= 512, "{per_workload} B per workload");
    assert!(scrape_bytes < 1_000_000, "{scrape_bytes} bytes");
}
