//! `make bench` (not part of `make test`): the filter's cost next to bare Envoy and Envoy's
//! native filters, each figure measured in the same run on the same Envoy binary, one scenario
//! after another: 1 worker (`--concurrency 1`), loopback, a fast local upstream (below), no
//! access log.
//!
//! - Throughput: `wrk` (Debian package, `make bench` installs it), 1 thread, a fixed number of
//!   connections, a fixed duration after a warm-up; every answer must be the expected status.
//!   Bare Envoy runs first and last, and ratios are taken against the mean of the two, since
//!   the machine drifts over a run. A Wasm filter that does nothing (written in WebAssembly
//!   text) shows what any proxy-wasm filter costs before it does anything.
//! - Latency added: one connection, requests one after another, p50/p99 minus bare Envoy's.
//! - Streaming: time to first byte and per-event delay of an SSE answer whose events carry the
//!   upstream's send time, so holding chunks back would show.
//! - Memory: Envoy's `server.memory_allocated` with 10,000 distinct workloads in the
//!   rate-limit table.
//!
//! Nothing here asserts a timing: the figures are printed. The cold-path figures (signature
//! check of a new token, forged tokens) are in bench_auth.rs; forged tokens/s is also measured
//! here under load.

mod bench_support;
mod common;

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
const STREAMS: usize = 100;
const WORKLOADS: usize = 10_000;

// ---------------------------------------------------------------------------------------------
// wrk

/// What one wrk run reports.
#[derive(Debug, Clone, Default, PartialEq)]
struct WrkResult {
    requests: u64,
    requests_per_s: f64,
    non_2xx: u64,
    p50_us: f64,
    p99_us: f64,
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

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
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

/// A scenario's name, its wrk figures and its one-connection (p50, p99) latency.
type Row = (String, WrkResult, Option<(f64, f64)>);

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with make bench"]
async fn filter_cost_next_to_bare_envoy_and_native_filters() {
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
    let forged =
        fx.standin
            .sign_token_with_foreign_key(caller_claims(&fx.standin, "bench-app", "forged"));

    let mut rows: Vec<Row> = Vec::new();
    let mut measure = |name: &str, r: WrkResult, lat: Option<(f64, f64)>, expect_2xx: bool| {
        if expect_2xx {
            assert_eq!(r.non_2xx, 0, "{name}: every answer must be 200: {r:?}");
        } else {
            assert_eq!(
                r.non_2xx, r.requests,
                "{name}: every answer must be refused: {r:?}"
            );
        }
        rows.push((name.to_string(), r, lat));
    };

    // Bare Envoy.
    let envoy = Envoy::start(bare_options(&fx)).await;
    let (bare_lat, r) = latency_and_throughput(&envoy, &token).await;
    measure("bare Envoy", r, Some(bare_lat), true);
    let bare_stream = stream_times(&envoy, &token).await;
    let bare_mem = memory_allocated(&envoy).await;
    drop(envoy);

    // The filter, full path; then forged tokens against it.
    let envoy = Envoy::start(filter_options(&fx, jwt_auth(&fx))).await;
    let (lat, r) = latency_and_throughput(&envoy, &token).await;
    measure("azure-llm-filter, full path", r, Some(lat), true);
    let filter_stream = stream_times(&envoy, &token).await;
    let filter_mem = memory_allocated(&envoy).await;
    let r = throughput(&envoy, CHAT_PATH, &forged);
    measure(
        "azure-llm-filter, forged RS256 tokens (401)",
        r,
        None,
        false,
    );
    drop(envoy);

    // The same without the access-log properties (`access_log_properties: false`).
    let mut o = filter_options(&fx, jwt_auth(&fx));
    o.plugin_config["access_log_properties"] = json!(false);
    let envoy = Envoy::start(o).await;
    let (lat, r) = latency_and_throughput(&envoy, &token).await;
    measure(
        "azure-llm-filter, full path, access_log_properties off",
        r,
        Some(lat),
        true,
    );
    drop(envoy);

    // The same without the GenAI histograms (`gen_ai_histograms: false`): their cost.
    let mut o = filter_options(&fx, jwt_auth(&fx));
    o.plugin_config["gen_ai_histograms"] = json!(false);
    let envoy = Envoy::start(o).await;
    let (lat, r) = latency_and_throughput(&envoy, &token).await;
    measure(
        "azure-llm-filter, full path, gen_ai_histograms off",
        r,
        Some(lat),
        true,
    );
    drop(envoy);

    // The same with the old "charge after" budgets (`rate_limits.reserve: false`): what
    // reserving the estimate at admission costs.
    let mut o = filter_options(&fx, jwt_auth(&fx));
    o.plugin_config["rate_limits"]["reserve"] = json!(false);
    let envoy = Envoy::start(o).await;
    let (lat, r) = latency_and_throughput(&envoy, &token).await;
    measure(
        "azure-llm-filter, full path, rate_limits.reserve false",
        r,
        Some(lat),
        true,
    );
    drop(envoy);

    // The full path through a failover pool, nothing failing over.
    let envoy = Envoy::start(pool_options(&fx)).await;
    let (lat, r) = latency_and_throughput(&envoy, &token).await;
    measure(
        "azure-llm-filter, full path, failover pool of 2 (no failover)",
        r,
        Some(lat),
        true,
    );
    drop(envoy);

    // The floor: the filter loaded with the full config, on a path it does not handle (it
    // only looks at the method and path), which Envoy routes to the same upstream.
    let mut o = filter_options(&fx, jwt_auth(&fx));
    o.extra_routes_yaml = Some(
        "- match: { prefix: \"/passthrough\" }\n  route: { cluster: aoai, timeout: 30s }\n"
            .to_string(),
    );
    let envoy = Envoy::start(o).await;
    let r = throughput(&envoy, "/passthrough", &token);
    measure(
        "azure-llm-filter loaded, path not handled (Wasm floor)",
        r,
        None,
        true,
    );
    drop(envoy);

    // What any Wasm filter costs: one that does nothing at all.
    let envoy = Envoy::start(trivial_wasm_options(&fx)).await;
    let r = throughput(&envoy, CHAT_PATH, &token);
    measure(
        "a Wasm filter that does nothing (any filter's floor)",
        r,
        None,
        true,
    );
    drop(envoy);

    // Where the filter's cost goes: routing and token injection only, then with JWT auth.
    for (auth, name) in [
        (None, "azure-llm-filter: routing + Entra token only"),
        (
            Some(jwt_auth(&fx)),
            "azure-llm-filter: + JWT auth (no limits)",
        ),
    ] {
        let envoy = Envoy::start(filter_options_with(&fx, auth, false)).await;
        let (lat, r) = latency_and_throughput(&envoy, &token).await;
        measure(name, r, Some(lat), true);
    }

    // Native jwt_authn + header_mutation, without and with its JWT cache.
    for (cache, name) in [
        (false, "native jwt_authn (no cache) + header_mutation"),
        (true, "native jwt_authn (cache) + header_mutation"),
    ] {
        let envoy = Envoy::start(native_options(&fx, cache)).await;
        let (lat, r) = latency_and_throughput(&envoy, &token).await;
        measure(name, r, Some(lat), true);
        if !cache {
            let r = throughput(&envoy, CHAT_PATH, &forged);
            measure(
                "native jwt_authn, forged RS256 tokens (401)",
                r,
                None,
                false,
            );
        }
    }

    // Bare Envoy once more: the machine drifts over a run; the ratios use both bare runs.
    let envoy = Envoy::start(bare_options(&fx)).await;
    let r = throughput(&envoy, CHAT_PATH, &token);
    measure("bare Envoy (again, last)", r, None, true);
    drop(envoy);

    let (mem_before, mem_after) = memory_with_many_workloads(&fx).await;
    let wasm_bytes = std::fs::metadata(common::wasm_path())
        .map(|m| m.len())
        .unwrap_or(0);

    // Report.
    let rps = |name: &str| {
        rows.iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, r, _)| r.requests_per_s)
            .unwrap_or(f64::NAN)
    };
    let bare = (rps("bare Envoy") + rps("bare Envoy (again, last)")) / 2.0;
    let filter = rps("azure-llm-filter, full path");
    let native_nocache = rps("native jwt_authn (no cache) + header_mutation");
    let native_cache = rps("native jwt_authn (cache) + header_mutation");
    println!();
    println!(
        "Envoy 1 worker, wrk 1 thread x {CONNECTIONS} connections x {WRK_SECS} s, POST chat completion, fast local upstream; x bare: against the mean of the two bare runs ({bare:.0} req/s)"
    );
    println!(
        "| scenario | req/s | x bare | wrk p50 | wrk p99 | 1-conn p50 | 1-conn p99 | p50 added | p99 added |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (name, r, lat) in &rows {
        let (l50, l99, a50, a99) = match lat {
            Some((p50, p99)) => (
                format!("{p50:.0} us"),
                format!("{p99:.0} us"),
                format!("{:+.0} us", p50 - bare_lat.0),
                format!("{:+.0} us", p99 - bare_lat.1),
            ),
            None => ("-".into(), "-".into(), "-".into(), "-".into()),
        };
        println!(
            "| {name} | {:.0} | {:.2} | {:.0} us | {:.0} us | {l50} | {l99} | {a50} | {a99} |",
            r.requests_per_s,
            r.requests_per_s / bare,
            r.p50_us,
            r.p99_us
        );
    }
    let bs = (
        sorted(bare_stream.ttfb_us),
        sorted(bare_stream.event_delay_us),
    );
    let fs = (
        sorted(filter_stream.ttfb_us),
        sorted(filter_stream.event_delay_us),
    );
    println!();
    println!(
        "Streaming ({STREAMS} SSE answers of {STREAM_EVENTS} events {} ms apart, one connection)",
        STREAM_GAP.as_millis()
    );
    println!("| | TTFB p50 | TTFB p99 | event delay p50 | event delay p99 |");
    println!("|---|---:|---:|---:|---:|");
    for (name, (ttfb, delay)) in [("bare Envoy", &bs), ("azure-llm-filter", &fs)] {
        println!(
            "| {name} | {:.0} us | {:.0} us | {:.0} us | {:.0} us |",
            percentile(ttfb, 0.5),
            percentile(ttfb, 0.99),
            percentile(delay, 0.5),
            percentile(delay, 0.99)
        );
    }
    println!(
        "| added by the filter | {:+.0} us | {:+.0} us | {:+.0} us | {:+.0} us |",
        percentile(&fs.0, 0.5) - percentile(&bs.0, 0.5),
        percentile(&fs.0, 0.99) - percentile(&bs.0, 0.99),
        percentile(&fs.1, 0.5) - percentile(&bs.1, 0.5),
        percentile(&fs.1, 0.99) - percentile(&bs.1, 0.99)
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
    println!();
    println!(
        "filter/native (no cache) throughput ratio: {:.2}",
        filter / native_nocache
    );
    println!(
        "filter/native (cache) throughput ratio: {:.2}",
        filter / native_cache
    );
    println!("filter/bare throughput ratio: {:.2}", filter / bare);
}
