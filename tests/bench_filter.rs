//! `make bench` (not part of `make test`): the filter's cost next to bare Envoy and Envoy's
//! native filters, each figure measured in the same run on the same Envoy binary, one scenario
//! after another: 1 worker (`--concurrency 1`), loopback, a fast local upstream (below), no
//! access log.
//!
//! - Throughput: `wrk` (Debian package, `make bench` installs it), 1 thread, a fixed number of
//!   connections, a fixed duration after a warm-up; every answer must be the expected status.
//! - Rounds: the scenarios issue 27 sets goals for (bare Envoy, the full path, routing + Entra
//!   token, a failover pool, streaming) run `ROUNDS` times, each round against its own bare
//!   Envoy run, so each goal's figure comes with its run-to-run spread (median, min-max). The
//!   other scenarios run once, between the first round and the second, against the mean of the
//!   bare runs. A Wasm filter that does nothing (written in WebAssembly text) shows what any
//!   proxy-wasm filter costs before it does anything.
//! - Latency added: one connection, requests one after another, p50/p99 minus bare Envoy's.
//! - Streaming: time to first byte and per-event delay of an SSE answer whose events carry the
//!   upstream's send time, so holding chunks back would show.
//! - Memory: Envoy's `server.memory_allocated` with 10,000 distinct workloads in the
//!   rate-limit table; RSS and `server.memory_allocated` with 1 and with 4 workers, bare and
//!   with the filter (what each added worker costs: its own Wasm VM).
//!
//! Nothing here asserts a timing: the figures are printed, the goals' as `goal:` lines that
//! `make bench` repeats at its end. The cold-path figures (signature check of a new token,
//! forged tokens) are in bench_auth.rs; forged tokens/s is also measured here under load.

mod bench_support;
mod common;
#[path = "bench_filter/report.rs"]
mod report;

use azure_standin::{StandIn, StandInConfig};
use bench_support::*;
use common::Envoy;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

const CONNECTIONS: u32 = 16;
const WRK_SECS: u32 = 5;
const SEQUENTIAL_REQUESTS: usize = 1500;
/// Streamed answers per round (each `STREAM_EVENTS` events `STREAM_GAP` apart: ~0.2 s).
const STREAMS: usize = 40;
const WORKLOADS: usize = 10_000;
/// Rounds of the goal scenarios (their spread is the run-to-run noise).
const ROUNDS: usize = 3;

// ---------------------------------------------------------------------------------------------
// wrk

/// What one wrk run reports.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WrkResult {
    pub requests: u64,
    pub requests_per_s: f64,
    pub non_2xx: u64,
    pub p50_us: f64,
    pub p99_us: f64,
}

fn wrk_binary() -> PathBuf {
    if let Ok(p) = std::env::var("WRK") {
        return PathBuf::from(p);
    }
    PathBuf::from("wrk")
}

/// A duration as wrk prints it (`812.00us`, `1.23ms`, `2.00s`), in microseconds.
fn wrk_duration_us(s: &str) -> Option<f64> {
    let s = s.trim();
    let (num, scale) = if let Some(n) = s.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60e6)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1e6)
    } else {
        return None;
    };
    num.trim().parse::<f64>().ok().map(|v| v * scale)
}

/// Parses `wrk --latency` output.
fn parse_wrk(out: &str) -> Option<WrkResult> {
    let mut r = WrkResult::default();
    for line in out.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            r.requests_per_s = v.trim().parse().ok()?;
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            r.non_2xx = v.trim().parse().ok()?;
        } else if let Some(v) = line.strip_prefix("50%") {
            r.p50_us = wrk_duration_us(v)?;
        } else if let Some(v) = line.strip_prefix("99%") {
            r.p99_us = wrk_duration_us(v)?;
        } else if line.contains(" requests in ") {
            r.requests = line.split_whitespace().next()?.parse().ok()?;
        }
    }
    (r.requests > 0 && r.requests_per_s > 0.0).then_some(r)
}

fn lua_string(s: &str) -> String {
    // JSON string syntax is a valid Lua string literal for what we send (no \u escapes).
    serde_json::to_string(s).unwrap()
}

fn wrk(url: &str, headers: &[(&str, String)], body: &str, secs: u32) -> WrkResult {
    let dir = std::env::temp_dir().join(format!("azure-llm-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("post.lua");
    let mut lua = String::from("wrk.method = \"POST\"\n");
    let _ = writeln!(lua, "wrk.body = {}", lua_string(body));
    let _ = writeln!(lua, "wrk.headers[\"Content-Type\"] = \"application/json\"");
    for (k, v) in headers {
        let _ = writeln!(lua, "wrk.headers[{}] = {}", lua_string(k), lua_string(v));
    }
    std::fs::write(&script, lua).unwrap();
    let out = Command::new(wrk_binary())
        .args([
            "-t1",
            &format!("-c{CONNECTIONS}"),
            &format!("-d{secs}s"),
            "--latency",
            "-s",
        ])
        .arg(&script)
        .arg(url)
        .output()
        .unwrap_or_else(|e| panic!("cannot run wrk ({e}): `make bench` installs it"));
    let text = String::from_utf8_lossy(&out.stdout);
    parse_wrk(&text).unwrap_or_else(|| {
        panic!(
            "unreadable wrk output:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Warm-up, then the measured run, with `token` as the caller's bearer token.
fn throughput(envoy: &Envoy, path: &str, token: &str) -> WrkResult {
    let url = envoy.url(path);
    let headers = [("Authorization", format!("Bearer {token}"))];
    wrk(&url, &headers, CHAT_BODY, 1);
    wrk(&url, &headers, CHAT_BODY, WRK_SECS)
}

/// Once the Envoy serves: its one-connection latency, then its throughput.
async fn latency_and_throughput(envoy: &Envoy, token: &str) -> ((f64, f64), WrkResult) {
    wait_serving(envoy, token).await;
    let lat = sequential_latency(envoy, token).await;
    (lat, throughput(envoy, CHAT_PATH, token))
}

// ---------------------------------------------------------------------------------------------
// Sequential latency and streaming

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v
}

/// p50 and p99 (µs) of requests sent one after another on one connection.
async fn sequential_latency(envoy: &Envoy, token: &str) -> (f64, f64) {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()
        .unwrap();
    let url = envoy.url("/v1/chat/completions");
    let mut samples = Vec::with_capacity(SEQUENTIAL_REQUESTS);
    for i in 0..SEQUENTIAL_REQUESTS + 200 {
        let started = Instant::now();
        let resp = http
            .post(&url)
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(CHAT_BODY)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let _ = resp.bytes().await.unwrap();
        if i >= 200 {
            samples.push(started.elapsed().as_secs_f64() * 1e6);
        }
    }
    let s = sorted(samples);
    (percentile(&s, 0.50), percentile(&s, 0.99))
}

struct StreamTimes {
    ttfb_us: Vec<f64>,
    event_delay_us: Vec<f64>,
}

/// Streams `STREAMS` SSE answers; TTFB is request start to the first event, an event's delay
/// is its arrival minus the time the upstream sent it.
async fn stream_times(envoy: &Envoy, token: &str) -> StreamTimes {
    use futures_util::StreamExt;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()
        .unwrap();
    let body = r#"{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"stream please"}]}"#;
    let mut t = StreamTimes {
        ttfb_us: Vec::new(),
        event_delay_us: Vec::new(),
    };
    for round in 0..STREAMS + 3 {
        let started = Instant::now();
        let resp = http
            .post(envoy.url("/v1/chat/completions"))
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let mut chunks = resp.bytes_stream();
        let mut first = None;
        let mut events = 0;
        let mut pending = String::new();
        while let Some(chunk) = chunks.next().await {
            let now_us = micros_since_epoch() as f64;
            let chunk = chunk.unwrap();
            first.get_or_insert_with(|| started.elapsed().as_secs_f64() * 1e6);
            pending.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = pending.find("\n\n") {
                let event: String = pending.drain(..end + 2).collect();
                let sent = event
                    .split("\"t\":")
                    .nth(1)
                    .and_then(|r| r.split(',').next())
                    .and_then(|n| n.parse::<f64>().ok());
                if let Some(sent) = sent {
                    events += 1;
                    if round >= 3 {
                        t.event_delay_us.push(now_us - sent);
                    }
                }
            }
        }
        assert_eq!(events, STREAM_EVENTS, "every event arrived");
        if round >= 3 {
            t.ttfb_us.push(first.unwrap_or(f64::NAN));
        }
    }
    t
}

// ---------------------------------------------------------------------------------------------
// Memory with many workloads

/// Envoy updates `server.memory_allocated` when it flushes stats (every 5 s by default).
async fn memory_allocated(envoy: &Envoy) -> u64 {
    tokio::time::sleep(Duration::from_millis(5500)).await;
    envoy
        .stat("server.memory_allocated")
        .await
        .expect("server.memory_allocated")
}

/// (before, after) `server.memory_allocated` around requests from WORKLOADS distinct API-key
/// workloads, each with its own rate-limit counters.
async fn memory_with_many_workloads(fx: &Fixture) -> (u64, u64) {
    let keys: Vec<String> = (0..WORKLOADS)
        .map(|i| format!("bench-key-{i:05}"))
        .collect();
    let api_keys: Vec<Value> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| json!({"sha256": common::hex(&Sha256::digest(k.as_bytes())), "workload": format!("workload-{i:05}")}))
        .collect();
    let envoy = Envoy::start(filter_options(fx, json!({"api_keys": api_keys}))).await;
    let http = common::client();
    let send = |key: String| {
        let http = http.clone();
        let url = envoy.url("/v1/chat/completions");
        async move {
            let resp = http
                .post(url)
                .header("api-key", key)
                .header("content-type", "application/json")
                .body(CHAT_BODY)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            let _ = resp.bytes().await;
        }
    };
    for _ in 0..50 {
        send(keys[0].clone()).await;
    }
    let before = memory_allocated(&envoy).await;
    use futures_util::StreamExt;
    futures_util::stream::iter(keys.iter().cloned().map(send))
        .buffer_unordered(8)
        .collect::<Vec<()>>()
        .await;
    let after = memory_allocated(&envoy).await;
    (before, after)
}

// ---------------------------------------------------------------------------------------------

#[test]
fn wrk_output_is_understood() {
    let out = "Running 5s test @ http://127.0.0.1:1234/v1/chat/completions
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   812.44us  101.20us   3.01ms   90.12%
    Req/Sec    19.71k     1.02k   21.00k    78.00%
  Latency Distribution
     50%  790.00us
     75%    0.85ms
     90%    0.92ms
     99%    1.20ms
  98123 requests in 5.00s, 30.12MB read
  Non-2xx or 3xx responses: 7
Requests/sec:  19624.60
Transfer/sec:      6.02MB
";
    let r = parse_wrk(out).unwrap();
    assert_eq!(r.requests, 98123);
    assert_eq!(r.non_2xx, 7);
    assert!((r.requests_per_s - 19624.60).abs() < 1e-6);
    assert!((r.p50_us - 790.0).abs() < 1e-6);
    assert!((r.p99_us - 1200.0).abs() < 1e-6);
    assert_eq!(wrk_duration_us("2.00s"), Some(2e6));
    assert_eq!(parse_wrk("garbage"), None);
}

// ---------------------------------------------------------------------------------------------
// Memory per worker

/// Envoy's RSS and `server.memory_allocated` (bytes) with `workers` workers, after traffic
/// on 16 connections (Envoy spreads them over its workers, each with its own Wasm VM).
async fn memory_with_workers(opts: &common::EnvoyOptions, workers: u32, token: &str) -> (u64, u64) {
    let mut o = opts.clone();
    o.concurrency = workers;
    let envoy = Envoy::start(o).await;
    wait_serving(&envoy, token).await;
    let url = envoy.url(CHAT_PATH);
    let headers = [("Authorization", format!("Bearer {token}"))];
    wrk(&url, &headers, CHAT_BODY, 1);
    let allocated = memory_allocated(&envoy).await;
    let rss = report::rss_bytes(envoy.pid()).unwrap_or(0);
    (rss, allocated)
}

/// (RSS, memory_allocated) added per worker from 1 to 4 workers, in bytes.
async fn memory_per_added_worker(opts: &common::EnvoyOptions, token: &str) -> (f64, f64) {
    let (rss1, alloc1) = memory_with_workers(opts, 1, token).await;
    let (rss4, alloc4) = memory_with_workers(opts, 4, token).await;
    (
        (rss4 as f64 - rss1 as f64) / 3.0,
        (alloc4 as f64 - alloc1 as f64) / 3.0,
    )
}

// ---------------------------------------------------------------------------------------------
// The run

const BARE: &str = "bare Envoy";
const FULL: &str = "azure-llm-filter, full path";
const ROUTING: &str = "azure-llm-filter: routing + Entra token only";
const POOL: &str = "azure-llm-filter, full path, failover pool of 2 (no failover)";

/// What a round measured besides its rows: (bare, filter) stream times.
type Streams = (StreamTimes, StreamTimes);

/// One round of the goal scenarios: bare Envoy, the full path (and its stream), routing +
/// Entra token, the full path through a pool. The first round also measures what is measured
/// once on these Envoys (memory, forged tokens).
async fn goal_round(fx: &Fixture, round: usize, rows: &mut Vec<report::Row>) -> Streams {
    let token = fx.caller_token.clone();
    let mut push = |name: &str, wrk: WrkResult, latency: Option<(f64, f64)>, ok: bool| {
        check(name, &wrk, ok);
        rows.push(report::Row {
            name: name.to_string(),
            round: Some(round),
            wrk,
            latency,
        });
    };
    let envoy = Envoy::start(bare_options(fx)).await;
    let (lat, r) = latency_and_throughput(&envoy, &token).await;
    push(BARE, r, Some(lat), true);
    let bare_stream = stream_times(&envoy, &token).await;
    drop(envoy);

    let envoy = Envoy::start(filter_options(fx, jwt_auth(fx))).await;
    let (lat, r) = latency_and_throughput(&envoy, &token).await;
    push(FULL, r, Some(lat), true);
    let filter_stream = stream_times(&envoy, &token).await;
    drop(envoy);

    let envoy = Envoy::start(filter_options_with(fx, None, false)).await;
    let (lat, r) = latency_and_throughput(&envoy, &token).await;
    push(ROUTING, r, Some(lat), true);
    drop(envoy);

    let envoy = Envoy::start(pool_options(fx)).await;
    let (lat, r) = latency_and_throughput(&envoy, &token).await;
    push(POOL, r, Some(lat), true);
    drop(envoy);
    (bare_stream, filter_stream)
}

/// Every answer is the expected one: 200, or a refusal for forged tokens.
fn check(name: &str, r: &WrkResult, expect_2xx: bool) {
    if expect_2xx {
        assert_eq!(r.non_2xx, 0, "{name}: every answer must be 200: {r:?}");
    } else {
        assert_eq!(
            r.non_2xx, r.requests,
            "{name}: every answer must be refused: {r:?}"
        );
    }
}

/// The scenarios measured once: parts of the full path left out, the floors, native filters,
/// forged tokens.
async fn single_scenarios(fx: &Fixture, rows: &mut Vec<report::Row>) {
    let token = fx.caller_token.clone();
    let forged =
        fx.standin
            .sign_token_with_foreign_key(caller_claims(&fx.standin, "bench-app", "forged"));
    let mut push = |name: &str, wrk: WrkResult, latency: Option<(f64, f64)>, ok: bool| {
        check(name, &wrk, ok);
        rows.push(report::Row {
            name: name.to_string(),
            round: None,
            wrk,
            latency,
        });
    };
    let full = filter_options(fx, jwt_auth(fx));
    let envoy = Envoy::start(full.clone()).await;
    wait_serving(&envoy, &token).await;
    let r = throughput(&envoy, CHAT_PATH, &forged);
    push(
        "azure-llm-filter, forged RS256 tokens (401)",
        r,
        None,
        false,
    );
    drop(envoy);

    for (name, key, value) in [
        (
            "azure-llm-filter, full path, access_log_properties off",
            "access_log_properties",
            json!(false),
        ),
        (
            "azure-llm-filter, full path, gen_ai_histograms off",
            "gen_ai_histograms",
            json!(false),
        ),
    ] {
        let mut o = full.clone();
        o.plugin_config[key] = value;
        let envoy = Envoy::start(o).await;
        let (lat, r) = latency_and_throughput(&envoy, &token).await;
        push(name, r, Some(lat), true);
    }
    // The old "charge after" budgets: what reserving the estimate at admission costs.
    let mut o = full.clone();
    o.plugin_config["rate_limits"]["reserve"] = json!(false);
    let envoy = Envoy::start(o).await;
    let (lat, r) = latency_and_throughput(&envoy, &token).await;
    push(
        "azure-llm-filter, full path, rate_limits.reserve false",
        r,
        Some(lat),
        true,
    );
    drop(envoy);

    // The floor: the filter loaded with the full config, on a path it does not handle (it
    // only looks at the method and path), which Envoy routes to the same upstream.
    let mut o = full.clone();
    o.extra_routes_yaml = Some(
        "- match: { prefix: \"/passthrough\" }\n  route: { cluster: aoai, timeout: 30s }\n"
            .to_string(),
    );
    let envoy = Envoy::start(o).await;
    let r = throughput(&envoy, "/passthrough", &token);
    push(
        "azure-llm-filter loaded, path not handled (Wasm floor)",
        r,
        None,
        true,
    );
    drop(envoy);

    // What any Wasm filter costs: one that does nothing at all.
    let envoy = Envoy::start(trivial_wasm_options(fx)).await;
    let r = throughput(&envoy, CHAT_PATH, &token);
    push(
        "a Wasm filter that does nothing (any filter's floor)",
        r,
        None,
        true,
    );
    drop(envoy);

    let envoy = Envoy::start(filter_options_with(fx, Some(jwt_auth(fx)), false)).await;
    let (lat, r) = latency_and_throughput(&envoy, &token).await;
    push(
        "azure-llm-filter: + JWT auth (no limits)",
        r,
        Some(lat),
        true,
    );
    drop(envoy);

    // Native jwt_authn + header_mutation, without and with its JWT cache.
    for (cache, name) in [
        (false, "native jwt_authn (no cache) + header_mutation"),
        (true, "native jwt_authn (cache) + header_mutation"),
    ] {
        let envoy = Envoy::start(native_options(fx, cache)).await;
        let (lat, r) = latency_and_throughput(&envoy, &token).await;
        push(name, r, Some(lat), true);
        if !cache {
            let r = throughput(&envoy, CHAT_PATH, &forged);
            push(
                "native jwt_authn, forged RS256 tokens (401)",
                r,
                None,
                false,
            );
        }
    }
}

/// (TTFB p50 added, event delay p50 added, p99s) of one round's streams, µs.
fn stream_added(s: &Streams) -> [f64; 4] {
    let (b, f) = (
        (
            sorted(s.0.ttfb_us.clone()),
            sorted(s.0.event_delay_us.clone()),
        ),
        (
            sorted(s.1.ttfb_us.clone()),
            sorted(s.1.event_delay_us.clone()),
        ),
    );
    [
        percentile(&f.0, 0.5) - percentile(&b.0, 0.5),
        percentile(&f.0, 0.99) - percentile(&b.0, 0.99),
        percentile(&f.1, 0.5) - percentile(&b.1, 0.5),
        percentile(&f.1, 0.99) - percentile(&b.1, 0.99),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with make bench"]
async fn filter_cost_next_to_bare_envoy_and_native_filters() {
    let started = Instant::now();
    let load_before = report::machine_load();
    let _ = micros_since_epoch();
    let standin = StandIn::start(StandInConfig::default()).await.unwrap();
    let upstream_port = start_upstream();
    let caller_token = standin.sign_token(caller_claims(&standin, "bench-app", "bench-1"));
    let fx = Fixture {
        standin,
        upstream_port,
        caller_token,
    };
    let token = fx.caller_token.clone();

    let mut rows = Vec::new();
    let mut streams = Vec::new();
    for round in 0..ROUNDS {
        streams.push(goal_round(&fx, round, &mut rows).await);
        if round == 0 {
            single_scenarios(&fx, &mut rows).await;
        }
    }
    // Memory: bare and filter Envoys after traffic; 10,000 workloads; per added worker.
    let bare_envoy = Envoy::start(bare_options(&fx)).await;
    wait_serving(&bare_envoy, &token).await;
    let bare_mem = memory_allocated(&bare_envoy).await;
    drop(bare_envoy);
    let filter_envoy = Envoy::start(filter_options(&fx, jwt_auth(&fx))).await;
    wait_serving(&filter_envoy, &token).await;
    let filter_mem = memory_allocated(&filter_envoy).await;
    drop(filter_envoy);
    let (mem_before, mem_after) = memory_with_many_workloads(&fx).await;
    let (bare_rss_worker, bare_alloc_worker) =
        memory_per_added_worker(&bare_options(&fx), &token).await;
    let (rss_worker, alloc_worker) =
        memory_per_added_worker(&filter_options(&fx, jwt_auth(&fx)), &token).await;
    let wasm_bytes = std::fs::metadata(common::wasm_path())
        .map(|m| m.len())
        .unwrap_or(0);

    // Report.
    let report = report::Report {
        bare: BARE.to_string(),
        rows,
    };
    let rps = |name: &str| {
        report::spread(
            &report
                .rows
                .iter()
                .filter(|r| r.name == name)
                .map(|r| r.wrk.requests_per_s)
                .collect::<Vec<_>>(),
        )
        .0
    };
    println!();
    println!(
        "Envoy 1 worker, wrk 1 thread x {CONNECTIONS} connections x {WRK_SECS} s, POST chat completion, fast local upstream; {ROUNDS} rounds of the goal scenarios (x bare: against the same round's bare run; scenarios run once: against the mean of the bare runs, {:.0} req/s); medians",
        report.bare_mean()
    );
    print!("{}", report.table());
    let added: Vec<[f64; 4]> = streams.iter().map(stream_added).collect();
    let column = |i: usize| added.iter().map(|a| a[i]).collect::<Vec<f64>>();
    println!();
    println!(
        "Streaming ({STREAMS} SSE answers of {STREAM_EVENTS} events {} ms apart per round, one connection): added by the filter, median of {ROUNDS} rounds (min-max)",
        STREAM_GAP.as_millis()
    );
    println!("| TTFB p50 | TTFB p99 | event delay p50 | event delay p99 |");
    println!("|---:|---:|---:|---:|");
    println!(
        "| {} us | {} us | {} us | {} us |",
        report::with_spread(&column(0), 0),
        report::with_spread(&column(1), 0),
        report::with_spread(&column(2), 0),
        report::with_spread(&column(3), 0)
    );
    println!();
    println!(
        "wasm module: {wasm_bytes} bytes ({:.2} MB)",
        wasm_bytes as f64 / 1e6
    );
    println!(
        "Envoy server.memory_allocated: bare {:.1} MB; with the filter {:.1} MB; filter with {WORKLOADS} API-key workloads configured {:.1} MB before and {:.1} MB after one request from each ({:.0} bytes per workload)",
        bare_mem as f64 / 1e6,
        filter_mem as f64 / 1e6,
        mem_before as f64 / 1e6,
        mem_after as f64 / 1e6,
        (mem_after as f64 - mem_before as f64) / WORKLOADS as f64
    );
    println!(
        "Per added worker (--concurrency 1 vs 4, after traffic on {CONNECTIONS} connections): RSS +{:.2} MB with the filter, +{:.2} MB bare; server.memory_allocated +{:.2} MB with the filter, +{:.2} MB bare",
        rss_worker / 1e6,
        bare_rss_worker / 1e6,
        alloc_worker / 1e6,
        bare_alloc_worker / 1e6
    );
    println!();
    println!(
        "bench_filter: {:.0} s; machine: {load_before} at the start, {} at the end",
        started.elapsed().as_secs_f64(),
        report::machine_load()
    );
    println!(
        "goal: full path (JWT RS256 + Entra token + tokens/minute + usage record + histograms) x bare Envoy: {}; goal >= 0.60",
        report::with_spread(&report.ratios(FULL), 2)
    );
    println!(
        "goal: routing + Entra token x bare Envoy: {}; goal >= 0.70",
        report::with_spread(&report.ratios(ROUTING), 2)
    );
    println!(
        "goal: failover pool of 2 without failover, added per request to the same model unpooled (1/req/s): {} us; goal <= 10 us",
        report::with_spread(&report.added_us(POOL, FULL), 1)
    );
    println!(
        "goal: streamed answer, first byte added at p50: {} us; goal < 300 us",
        report::with_spread(&column(0), 0)
    );
    println!(
        "goal: Envoy + filter RSS per added worker: {:.2} MB (bare Envoy {:.2} MB); goal < 1 MB",
        rss_worker / 1e6,
        bare_rss_worker / 1e6
    );
    println!(
        "filter/native (no cache) throughput ratio: {:.2}",
        rps(FULL) / rps("native jwt_authn (no cache) + header_mutation")
    );
    println!(
        "filter/native (cache) throughput ratio: {:.2}",
        rps(FULL) / rps("native jwt_authn (cache) + header_mutation")
    );
    println!(
        "filter/bare throughput ratio: {:.2}",
        report::spread(&report.ratios(FULL)).0
    );
}
