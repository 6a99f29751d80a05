//! Issue 9: soak. Mixed traffic through a real Envoy (2 workers) for `SOAK_SECS` seconds
//! (default 15 inside `make test`; `make soak` runs 300): JSON and streamed chat completions
//! from several workloads, each charged to local token limits, while the Entra tokens the
//! filter injects expire every 8 seconds. Every answer must be a complete 200 with its usage;
//! Envoy's memory is sampled after the warm-up and at the end (a bound is asserted only on
//! runs of two minutes or more; the figures are printed either way).

mod common;

use azure_standin::{EndpointKind, StandIn, StandInConfig};
use common::{Cluster, Envoy, EnvoyOptions};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CALLERS: usize = 6;
const WORKLOADS: [&str; 3] = ["team-a", "team-b", "team-c"];
const TOKEN_LIFETIME_S: u64 = 8;

fn soak_secs() -> u64 {
    std::env::var("SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15)
}

fn key(workload: &str) -> String {
    format!("{workload}-soak-key")
}

#[derive(Default)]
struct Tally {
    json: AtomicU64,
    streams: AtomicU64,
    failures: Mutex<Vec<String>>,
    latencies_us: Mutex<Vec<f64>>,
}

/// One request, checked whole: status, body, usage.
async fn one(
    http: &reqwest::Client,
    url: &str,
    workload: &str,
    stream: bool,
) -> Result<(), String> {
    let mut body = json!({
        "model": "gpt-4o",
        "stream": stream,
        "max_tokens": 12,
        "messages": [{"role": "user", "content": format!("soak test from {workload}")}]
    });
    if stream {
        // The usage chunk is checked below: ask for it (the filter strips the one it adds).
        body["stream_options"] = json!({"include_usage": true});
    }
    let resp = http
        .post(url)
        .header("api-key", key(workload))
        .json(&body)
        .send()
        .await
        .map_err(|e| format!("send: {e}"))?;
    let status = resp.status().as_u16();
    let text = resp.text().await.map_err(|e| format!("body: {e}"))?;
    if status != 200 {
        return Err(format!("status {status}: {text}"));
    }
    if stream {
        let usage = text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .any(|v| v["usage"]["total_tokens"].as_u64().is_some_and(|t| t > 0));
        if !usage || !text.trim_end().ends_with("data: [DONE]") {
            return Err(format!("incomplete stream: {text}"));
        }
    } else {
        let v: Value = serde_json::from_str(&text).map_err(|e| format!("json: {e}: {text}"))?;
        if v["usage"]["total_tokens"].as_u64().unwrap_or(0) == 0 {
            return Err(format!("no usage: {text}"));
        }
    }
    Ok(())
}

async fn memory_allocated(envoy: &Envoy) -> u64 {
    envoy
        .stat("server.memory_allocated")
        .await
        .expect("server.memory_allocated")
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[(((sorted.len() - 1) as f64) * p).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mixed_traffic_with_expiring_tokens_has_no_failure_and_flat_memory() {
    let secs = soak_secs();
    let standin = StandIn::start(StandInConfig {
        token_lifetime_secs: TOKEN_LIFETIME_S,
        ..Default::default()
    })
    .await
    .unwrap();
    let api_keys: Vec<Value> = WORKLOADS
        .iter()
        .map(|w| json!({"sha256": common::hex(&Sha256::digest(key(w).as_bytes())), "workload": w}))
        .collect();
    let plugin = json!({
        "auth": {"api_keys": api_keys},
        "credentials": common::standin_credentials(&standin.tenant_id()),
        "backends": {"aoai": {"kind": "azure_openai", "host": "r.openai.azure.com", "api_version": "2024-10-21", "credential": "main"}},
        "models": {"gpt-4o": {"backend": "aoai", "deployment": "gpt-4o-prod"}},
        "rate_limits": {"default": {"tokens_per_minute": 100_000_000u64, "requests_per_minute": 10_000_000u64}}
    });
    let mut o = EnvoyOptions::new(plugin);
    o.clusters = vec![
        Cluster::new("entra", standin.port()),
        Cluster::new("aoai", standin.port()),
    ];
    o.backend_routes = vec!["aoai".into()];
    o.concurrency = 2;
    o.log_level = "warning".into();
    o.access_log = false;
    let envoy = Arc::new(Envoy::start(o).await);

    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut callers = Vec::new();
    for c in 0..CALLERS {
        let (tally, stop) = (tally.clone(), stop.clone());
        let url = envoy.url("/v1/chat/completions");
        callers.push(tokio::spawn(async move {
            let http = common::client();
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let workload = WORKLOADS[(c + n) % WORKLOADS.len()];
                let stream = (c + n) % 3 == 0;
                let started = Instant::now();
                match one(&http, &url, workload, stream).await {
                    Ok(()) => {
                        let counter = if stream { &tally.streams } else { &tally.json };
                        counter.fetch_add(1, Ordering::Relaxed);
                        if let Ok(mut l) = tally.latencies_us.lock() {
                            l.push(started.elapsed().as_secs_f64() * 1e6);
                        }
                    }
                    Err(e) => {
                        if let Ok(mut f) = tally.failures.lock() {
                            f.push(e);
                        }
                    }
                }
                n += 1;
            }
        }));
    }

    let started = Instant::now();
    let warm_up = Duration::from_secs((secs / 4).max(6));
    tokio::time::sleep(warm_up).await;
    // server.memory_allocated is refreshed at each stats flush (5 s).
    let mem_start = memory_allocated(&envoy).await;
    let remaining = Duration::from_secs(secs).saturating_sub(started.elapsed());
    tokio::time::sleep(remaining.max(Duration::from_secs(6))).await;
    let mem_end = memory_allocated(&envoy).await;
    stop.store(true, Ordering::Relaxed);
    for c in callers {
        c.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();

    let failures = tally.failures.lock().unwrap().clone();
    let json_n = tally.json.load(Ordering::Relaxed);
    let streams = tally.streams.load(Ordering::Relaxed);
    let mut lat = tally.latencies_us.lock().unwrap().clone();
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let fetches = standin.count(EndpointKind::Token);
    println!(
        "soak: {elapsed:.0} s, {} requests ({json_n} JSON, {streams} streamed), {} failures, \
         {fetches} Entra token fetches ({TOKEN_LIFETIME_S} s tokens), latency p50 {:.1} ms p99 {:.1} ms, \
         Envoy memory {:.1} MB after warm-up -> {:.1} MB at the end",
        json_n + streams,
        failures.len(),
        percentile(&lat, 0.5) / 1e3,
        percentile(&lat, 0.99) / 1e3,
        mem_start as f64 / 1e6,
        mem_end as f64 / 1e6,
    );
    assert!(
        failures.is_empty(),
        "{} failed requests, first: {:?}",
        failures.len(),
        failures.first()
    );
    assert!(json_n > 0 && streams > 0, "both kinds of traffic ran");
    assert!(
        fetches as u64 >= (secs / TOKEN_LIFETIME_S).max(1),
        "tokens were refreshed while traffic ran ({fetches} fetches in {secs} s)"
    );
    if secs >= 120 {
        assert!(
            mem_end <= mem_start + mem_start / 5 + 4_000_000,
            "Envoy memory grew from {mem_start} to {mem_end} bytes"
        );
    }
}
