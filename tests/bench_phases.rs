//! `make bench` (not part of `make test`): where the filter's time goes, phase by phase, in
//! counts that do not depend on how busy the machine is.
//!
//! 1. **Host calls per phase.** The filter's own code runs natively against a host that counts
//!    every call it makes under the phase it was made in (`azure_llm_filter::host::phase`),
//!    with the bytes crossed each way (bench_phases/host.rs, driven through the proxy-wasm
//!    SDK's entry points by bench_phases/driver.rs): the full path, a JSON answer and a stream.
//! 2. **Instructions per request inside Envoy.** One Envoy (1 worker) under
//!    `valgrind --tool=callgrind` with one listener per scenario (bench_phases/callgrind.rs):
//!    bare Envoy, a Wasm filter that does nothing, the filter on a path it does not handle,
//!    then the full path built up one feature at a time (routing + Entra token, GenAI
//!    histograms, access-log properties, JWT check, tokens/minute limit, pricing), a failover
//!    pool, streams. Callgrind counts what Envoy executes (its own code, V8's and the filter's
//!    compiled Wasm) while a scenario serves the same requests on one connection: the same
//!    binaries, config and requests give the same count whatever else runs on the machine.
//! 3. **What one host call costs.** Probe filters in WebAssembly text make ten calls of one
//!    kind per request (bench_phases/probes.rs); their count minus the do-nothing filter's is
//!    the price of a call. Prices × the calls of 1. give each phase's host-call cost.
//! 4. **What the guardrails cost** (issue 26; `what_the_guardrails_cost`): the full path with
//!    no `guardrails` section, the same run twice (the noise), with a policy for other
//!    workloads only (what a request pays for the guardrails' existence), and a 4 KiB prompt
//!    without and with the local rules (one string, four parts, non-ASCII prose).
//!
//! Nothing here asserts a figure; the tables are printed (and kept in target/bench.txt).

mod bench_support;
#[path = "bench_phases/callgrind.rs"]
mod callgrind;
mod common;
#[path = "bench_phases/driver.rs"]
mod driver;
#[path = "bench_phases/host.rs"]
mod host;
#[path = "bench_phases/probes.rs"]
mod probes;

use azure_llm_filter::host::phase::Phase;
use azure_standin::{StandIn, StandInConfig};
use bench_support::*;
use callgrind::Callgrind;
use common::EnvoyOptions;
use driver::{Answers, Exchange, Measured, Plugin};
use host::{Count, Kind};
use serde_json::json;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Instant;

/// Requests counted per scenario (after the warm-up); JSON answers.
const MEASURED: u64 = 100;
/// Streamed answers counted (each `STREAM_EVENTS` events `STREAM_GAP` apart).
const MEASURED_STREAMS: u64 = 10;
/// Requests per scenario before instrumentation starts (V8 tiers functions up as they run),
/// then before counting (valgrind translates the code again once instrumentation is on).
const WARM_UP: usize = 100;
const WARM_UP_STREAMS: usize = 10;
const WARM_UP_INSTRUMENTED: usize = 10;

const STREAM_BODY: &str =
    r#"{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"stream please"}]}"#;

// ---------------------------------------------------------------------------------------------
// 2. The scenarios under callgrind

/// One listener of the Envoy under callgrind.
struct Scenario {
    name: String,
    opts: EnvoyOptions,
    path: &'static str,
    body: &'static str,
    measured: u64,
    /// Before its warm-up, one request whose first attempt the upstream answers 500 (Envoy
    /// retries it on the pool's next target): the first target has failed once, and the
    /// warm-up's answers then clear that.
    fail_once_first: bool,
}

impl Scenario {
    fn json(name: &str, opts: EnvoyOptions) -> Scenario {
        Scenario {
            name: name.to_string(),
            opts,
            path: CHAT_PATH,
            body: CHAT_BODY,
            measured: MEASURED,
            fail_once_first: false,
        }
    }

    fn streamed(name: &str, opts: EnvoyOptions) -> Scenario {
        Scenario {
            body: STREAM_BODY,
            measured: MEASURED_STREAMS,
            ..Scenario::json(name, opts)
        }
    }
}

const BARE: &str = "bare Envoy";
const NOTHING: &str = "a Wasm filter that does nothing";
const FLOOR: &str = "azure-llm-filter, path not handled (floor)";
const ROUTING: &str = "routing + Entra token (histograms, properties off)";
const FULL: &str = "+ pricing = full path";
const POOL_NO_UPSTREAM: &str =
    "full path, pool of 2, no upstream filter (Envoy's aggregate cluster)";
const POOL_NOTHING: &str = "full path, pool of 2, an upstream Wasm filter that does nothing";
const POOL: &str = "full path, failover pool of 2 (no failover)";
const POOL_RECOVERED: &str =
    "full path, failover pool of 2 (no failover), its first target failed once and recovered";
const BARE_STREAM: &str = "bare Envoy, streamed answer";
const FULL_STREAM: &str = "full path, streamed answer";
const NO_CALL: &str = "probe filter, no call";

/// The ladder (each row adds one feature to the one above), then the pool, streams and the
/// host-call probes.
fn scenarios(fx: &Fixture) -> Vec<Scenario> {
    let mut floor = filter_options(fx, jwt_auth(fx));
    floor.extra_routes_yaml = Some(
        "- match: { prefix: \"/passthrough\" }\n  route: { cluster: aoai, timeout: 30s }\n"
            .to_string(),
    );
    let mut ladder = filter_options_with(fx, None, false);
    ladder.plugin_config["gen_ai_histograms"] = json!(false);
    ladder.plugin_config["access_log_properties"] = json!(false);
    let routing = ladder.clone();
    ladder.plugin_config["gen_ai_histograms"] = json!(true);
    let histograms = ladder.clone();
    ladder.plugin_config["access_log_properties"] = json!(true);
    let properties = ladder.clone();
    ladder.plugin_config["auth"] = jwt_auth(fx);
    let jwt = ladder.clone();
    let full = filter_options(fx, jwt_auth(fx));
    let mut limits = full.clone();
    if let Some(p) = limits.plugin_config.as_object_mut() {
        p.remove("pricing");
    }
    let mut s = vec![
        Scenario::json(BARE, bare_options(fx)),
        Scenario::json(NOTHING, trivial_wasm_options(fx)),
        Scenario {
            path: "/passthrough",
            ..Scenario::json(FLOOR, floor)
        },
        Scenario::json(ROUTING, routing),
        Scenario::json("+ GenAI histograms", histograms),
        Scenario::json("+ access-log properties", properties),
        Scenario::json("+ JWT check (RS256, cached)", jwt),
        Scenario::json("+ tokens/minute limit", limits),
        Scenario::json(FULL, full.clone()),
        Scenario::json(
            POOL_NO_UPSTREAM,
            pool_options_upstream(fx, PoolUpstream::None),
        ),
        Scenario::json(
            POOL_NOTHING,
            pool_options_upstream(fx, PoolUpstream::Nothing),
        ),
        Scenario::json(POOL, pool_options(fx)),
        Scenario {
            fail_once_first: true,
            ..Scenario::json(
                POOL_RECOVERED,
                pool_options_named(fx, "ptu-recovered", "payg-recovered"),
            )
        },
        Scenario::streamed(BARE_STREAM, bare_options(fx)),
        Scenario::streamed(FULL_STREAM, full),
    ];
    let wat = probes::wat();
    let probe = |name: &str, i: Option<usize>| {
        let plugin = format!("probe_{}", probes::configuration(i));
        let configuration = probes::configuration(i);
        Scenario::json(
            name,
            wat_filter_options(fx, "probes", &wat, &plugin, Some(&configuration)),
        )
    };
    s.push(probe(NO_CALL, None));
    for (i, p) in probes::PROBES.iter().enumerate() {
        s.push(probe(p.name, Some(i)));
    }
    s
}

/// Instructions per request of every scenario, by name.
async fn instructions_per_request(fx: &Fixture, scenarios: &[Scenario]) -> BTreeMap<String, f64> {
    let ports: Vec<u16> = scenarios.iter().map(|_| common::free_port()).collect();
    let admin_port = common::free_port();
    let listeners: Vec<&EnvoyOptions> = scenarios.iter().map(|s| &s.opts).collect();
    let mut cg = Callgrind::start(&callgrind::bootstrap(&listeners, &ports, admin_port));
    let started = Instant::now();
    let url = |i: usize, path: &str| format!("http://127.0.0.1:{}{path}", ports[i]);
    let token = &fx.caller_token;
    let http = common::client();
    for (i, s) in scenarios.iter().enumerate() {
        callgrind::wait_serving(&mut cg, &http, &url(i, s.path), token, s.body).await;
    }
    for (i, s) in scenarios.iter().enumerate() {
        if s.fail_once_first {
            FAIL_NEXT.store(true, std::sync::atomic::Ordering::SeqCst);
            callgrind::send(&http, &url(i, s.path), token, s.body, 1).await;
            assert!(
                !FAIL_NEXT.load(std::sync::atomic::Ordering::SeqCst),
                "{}: the upstream failed an attempt",
                s.name
            );
        }
        let n = if s.measured < MEASURED {
            WARM_UP_STREAMS
        } else {
            WARM_UP
        };
        callgrind::send(&http, &url(i, s.path), token, s.body, n).await;
    }
    println!(
        "bench_phases: Envoy under callgrind serving and warm after {:.0} s",
        started.elapsed().as_secs_f64()
    );
    cg.control(&["--instr=on"]);
    let mut per_request = BTreeMap::new();
    for (i, s) in scenarios.iter().enumerate() {
        // One connection per scenario, reused for all its requests.
        let http = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(1)
            .build()
            .unwrap();
        let u = url(i, s.path);
        callgrind::send(&http, &u, token, s.body, WARM_UP_INSTRUMENTED).await;
        cg.control(&["--zero"]);
        callgrind::send(&http, &u, token, s.body, s.measured as usize).await;
        let total = cg.dump();
        per_request.insert(s.name.clone(), total as f64 / s.measured as f64);
    }
    println!(
        "bench_phases: callgrind done after {:.0} s",
        started.elapsed().as_secs_f64()
    );
    per_request
}

// ---------------------------------------------------------------------------------------------
// 1. Host calls per phase, natively

fn header(name: &str, value: impl Into<Vec<u8>>) -> (String, Vec<u8>) {
    (name.to_string(), value.into())
}

/// The request headers as Envoy gives them to the filter (what reqwest sends, plus Envoy's
/// own).
fn request_headers(token: &str, body: &str) -> Vec<(String, Vec<u8>)> {
    vec![
        header(":authority", "127.0.0.1:10000"),
        header(":path", CHAT_PATH),
        header(":method", "POST"),
        header(":scheme", "http"),
        header("authorization", format!("Bearer {token}")),
        header("content-type", "application/json"),
        header("accept", "*/*"),
        header("content-length", body.len().to_string()),
        header("x-forwarded-proto", "http"),
        header("x-request-id", "8d4f1c1e-6a0b-4c55-9a43-2f6f3e1f0b7d"),
    ]
}

fn response_headers(content_type: &str, length: Option<usize>) -> Vec<(String, Vec<u8>)> {
    let mut h = vec![
        header(":status", "200"),
        header("content-type", content_type),
        header("date", "Mon, 07 Dec 2026 10:00:00 GMT"),
        header("x-envoy-upstream-service-time", "1"),
    ];
    if let Some(n) = length {
        h.push(header("content-length", n.to_string()));
    }
    h
}

/// The fast upstream's answers (bench_support::upstream), byte for byte.
fn json_answer() -> Vec<u8> {
    json!({
        "id": "chatcmpl-bench", "object": "chat.completion", "created": 1, "model": "gpt-4o",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": "Hello, benchmark."}}],
        "usage": {"prompt_tokens": 14, "completion_tokens": 4, "total_tokens": 18}
    })
    .to_string()
    .into_bytes()
}

fn stream_chunks() -> Vec<Vec<u8>> {
    let mut chunks: Vec<Vec<u8>> = (0..STREAM_EVENTS)
        .map(|i| format!(
            "data: {{\"object\":\"chat.completion.chunk\",\"t\":{i},\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"w{i} \"}}}}],\"usage\":null}}\n\n"
        ).into_bytes())
        .collect();
    chunks.push(b"data: {\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":14,\"completion_tokens\":20,\"total_tokens\":34}}\n\ndata: [DONE]\n\n".to_vec());
    chunks
}

fn value_of<'h>(headers: &'h [(String, Vec<u8>)], name: &str) -> Option<&'h [u8]> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_slice())
}

/// The full path's host calls for a JSON answer and for a stream.
async fn host_calls(fx: &Fixture) -> [(&'static str, Measured); 2] {
    let entra_token = fx
        .standin
        .issue_access_token("22222222-2222-2222-2222-222222222222", 3600);
    let answers = Answers {
        token: json!({"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599,
                      "access_token": entra_token})
        .to_string(),
        jwks: fx.standin.jwks_json().to_string(),
    };
    let full = filter_options(fx, jwt_auth(fx));
    let plugin = Plugin::configure(&full.plugin_config.to_string(), &answers);
    let answer = json_answer();
    let json = Exchange {
        request_headers: request_headers(&fx.caller_token, CHAT_BODY),
        request_body: CHAT_BODY.as_bytes(),
        response_headers: response_headers("application/json", Some(answer.len())),
        answer_chunks: vec![answer],
    };
    let stream = Exchange {
        request_headers: request_headers(&fx.caller_token, STREAM_BODY),
        request_body: STREAM_BODY.as_bytes(),
        response_headers: response_headers("text/event-stream", None),
        answer_chunks: stream_chunks(),
    };
    let measure = |x: &Exchange| {
        // The first requests define the stats and fill the caches; the next is counted.
        for _ in 0..3 {
            plugin.exchange(x, &answers, false);
        }
        let m = plugin.exchange(x, &answers, true);
        assert_eq!(
            value_of(&m.upstream_headers, "authorization"),
            Some(format!("Bearer {entra_token}").as_bytes()),
            "the Entra token replaced the caller's"
        );
        assert_eq!(
            value_of(&m.upstream_headers, ":path"),
            Some(AZURE_PATH.as_bytes())
        );
        m
    };
    [
        ("full path, JSON answer", measure(&json)),
        (
            "full path, streamed answer (20 events and the usage chunk)",
            measure(&stream),
        ),
    ]
}

// ---------------------------------------------------------------------------------------------
// Tables

/// The probe that prices a kind of host call.
fn price_of(kind: Kind, prices: &BTreeMap<&'static str, f64>) -> Option<f64> {
    let probe = match kind {
        Kind::HeadersRead => 2,
        Kind::HeaderRead => 1,
        Kind::HeaderWrite => 3,
        Kind::HeaderRemove => 4,
        Kind::PropertyWrite => 5,
        Kind::SharedRead => 6,
        Kind::SharedWrite => 7,
        Kind::Metric => 8,
        Kind::BodyRead => 9,
        Kind::BodyWrite => 10,
        Kind::PropertyRead => 11,
        Kind::Log => 12,
        Kind::Clock => 0,
        Kind::Other => return None,
    };
    prices.get(probes::PROBES[probe].name).copied()
}

fn phase_table(title: &str, m: &Measured, prices: Option<&BTreeMap<&'static str, f64>>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nHost calls per phase, {title} ({} callbacks into the VM)",
        m.callbacks
    );
    let priced = prices.is_some();
    let _ = writeln!(
        out,
        "| phase | host calls | data handed in (allocations in the VM) | bytes in | bytes out |{} calls |",
        if priced { " host-call instructions in Envoy |" } else { "" }
    );
    let _ = writeln!(
        out,
        "|---|---:|---:|---:|---:|{}---|",
        if priced { "---:|" } else { "" }
    );
    let mut total = Count::default();
    let mut total_cost = 0.0;
    for phase in Phase::ALL {
        let mut sum = Count::default();
        let mut cost = 0.0;
        let mut what = Vec::new();
        for kind in Kind::ALL {
            if let Some(c) = m.counts.get(&(phase, kind)) {
                sum.add(c);
                what.push(format!("{} {}", c.calls, kind.name()));
                cost += prices.and_then(|p| price_of(kind, p)).unwrap_or(0.0) * c.calls as f64;
            }
        }
        if sum.calls == 0 {
            continue;
        }
        total.add(&sum);
        total_cost += cost;
        let cost = if priced {
            format!(" {cost:.0} |")
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |{cost} {} |",
            phase.name(),
            sum.calls,
            sum.allocations,
            sum.bytes_in,
            sum.bytes_out,
            what.join(", ")
        );
    }
    let cost = if priced {
        format!(" {total_cost:.0} |")
    } else {
        String::new()
    };
    let _ = writeln!(
        out,
        "| all | {} | {} | {} | {} |{cost} |",
        total.calls, total.allocations, total.bytes_in, total.bytes_out
    );
    out
}

fn ladder_table(scenarios: &[Scenario], per: &BTreeMap<String, f64>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nInstructions Envoy executes per request (callgrind; 1 worker, one connection, {MEASURED} requests per row, {MEASURED_STREAMS} for streams, after a warm-up)"
    );
    let _ = writeln!(
        out,
        "| scenario | instructions / request | added by the row | bare / row |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|");
    let bare = per.get(BARE).copied().unwrap_or(f64::NAN);
    let bare_stream = per.get(BARE_STREAM).copied().unwrap_or(f64::NAN);
    let mut previous: Option<f64> = None;
    for s in scenarios {
        if s.name == NO_CALL || probes::PROBES.iter().any(|p| p.name == s.name) {
            continue;
        }
        let n = per.get(&s.name).copied().unwrap_or(f64::NAN);
        let added = match (previous, s.name.starts_with('+')) {
            (Some(p), true) => format!("{:+.0}", n - p),
            _ => "-".to_string(),
        };
        let base = if s.measured < MEASURED {
            bare_stream
        } else {
            bare
        };
        let _ = writeln!(out, "| {} | {n:.0} | {added} | {:.2} |", s.name, base / n);
        previous = Some(n);
    }
    let stream_added = per.get(FULL_STREAM).copied().unwrap_or(f64::NAN) - bare_stream;
    let _ = writeln!(
        out,
        "The filter adds {:.0} instructions to a streamed answer ({:.0} per event beyond the JSON answer's {:.0}).",
        stream_added,
        (stream_added - (per.get(FULL).copied().unwrap_or(f64::NAN) - bare)) / (STREAM_EVENTS + 1) as f64,
        per.get(FULL).copied().unwrap_or(f64::NAN) - bare
    );
    out
}

fn price_table(per: &BTreeMap<String, f64>) -> (String, BTreeMap<&'static str, f64>) {
    let nothing = per.get(NO_CALL).copied().unwrap_or(f64::NAN);
    let mut prices = BTreeMap::new();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nWhat one host call costs in Envoy (callgrind: a probe filter making {} calls per request, minus the same filter making none, / {})",
        probes::CALLS,
        probes::CALLS
    );
    let _ = writeln!(out, "| host call | instructions |");
    let _ = writeln!(out, "|---|---:|");
    for p in &probes::PROBES {
        let price = (per.get(p.name).copied().unwrap_or(f64::NAN) - nothing) / probes::CALLS as f64;
        prices.insert(p.name, price);
        let _ = writeln!(out, "| {} | {price:.0} |", p.name);
    }
    (out, prices)
}

/// The pool's cost without failover, split: Envoy's aggregate cluster and retry policy with
/// the listener filter's pool choice (the pool with no upstream filter), any upstream Wasm
/// filter (one that does nothing), and this filter's work as upstream filter (the rest).
fn pool_lines(get: &dyn Fn(&str) -> f64) -> String {
    let full = get(FULL);
    let pool = get(POOL);
    let aggregate = get(POOL_NO_UPSTREAM) - full;
    let any_upstream = get(POOL_NOTHING) - get(POOL_NO_UPSTREAM);
    let ours = pool - get(POOL_NOTHING);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nA failover pool of 2 without failover adds {:.0} instructions per request to the full path ({:.1}% of the full path's {full:.0}): Envoy's aggregate cluster and retry policy with the listener filter's pool choice and hand-over (the pool with no upstream filter) {aggregate:+.0}, any upstream Wasm filter (one that does nothing) {any_upstream:+.0}, this filter's work as upstream filter {ours:+.0}.",
        pool - full,
        (pool - full) / full * 100.0
    );
    let recovered = get(POOL_RECOVERED);
    if !recovered.is_nan() {
        let _ = writeln!(
            out,
            "A pool whose first target failed once and recovered (its health key exists in shared data) costs {:+.0} instructions per request more than one whose targets never failed.",
            recovered - pool
        );
    }
    let _ = writeln!(
        out,
        "goal: failover pool of 2 without failover, callgrind: {:+.0} instructions per request ({:+.1}% on the full path; aggregate cluster + listener's pool choice {aggregate:+.0}, an upstream Wasm filter as such {any_upstream:+.0}, this filter's upstream work {ours:+.0}); goal <= 10 us (bench_filter's pool line)",
        pool - full,
        (pool - full) / full * 100.0
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with make bench"]
async fn where_the_time_goes_phase_by_phase() {
    let standin = StandIn::start(StandInConfig::default()).await.unwrap();
    let upstream_port = start_upstream();
    let caller_token = standin.sign_token(caller_claims(&standin, "bench-app", "bench-1"));
    let fx = Fixture {
        standin,
        upstream_port,
        caller_token,
    };
    let measured = host_calls(&fx).await;
    if !callgrind::valgrind_present() {
        for (title, m) in &measured {
            println!("{}", phase_table(title, m, None));
        }
        println!(
            "bench_phases: valgrind not found (make bench installs it): no instruction counts"
        );
        return;
    }
    let mut scenarios = scenarios(&fx);
    // BENCH_PHASES_ONLY="pool,full path" counts only the scenarios whose name has one of
    // these (a quicker before/after of one change; the tables then have gaps).
    if let Ok(only) = std::env::var("BENCH_PHASES_ONLY") {
        let words: Vec<&str> = only.split(',').filter(|w| !w.is_empty()).collect();
        scenarios.retain(|s| words.iter().any(|w| s.name.contains(w)));
    }
    let per = instructions_per_request(&fx, &scenarios).await;
    let (prices_out, prices) = price_table(&per);
    let mut out = ladder_table(&scenarios, &per);
    out.push_str(&prices_out);
    for (title, m) in &measured {
        out.push_str(&phase_table(title, m, Some(&prices)));
    }
    let get = |name: &str| per.get(name).copied().unwrap_or(f64::NAN);
    let added = get(FULL) - get(BARE);
    let _ = writeln!(
        out,
        "\nThe full path adds {added:.0} instructions per request to bare Envoy; the table above prices its host calls (what is left is the filter's own Wasm code and Envoy's work for the request it changed)."
    );
    out.push_str(&pool_lines(&get));
    println!("{out}");
}

// ---------------------------------------------------------------------------------------------
// 4. What the guardrails cost (issue 26)

/// A prompt of `bytes` of ordinary prose (nothing a rule finds), as chat content: one string,
/// or `parts` text parts of one message (their joined text is scanned too).
fn prose_body(bytes: usize, parts: usize, non_ascii: bool) -> &'static str {
    let sentence = if non_ascii {
        "Résumé of the café meeting: the naïve plan needs a cleaner rollout and more tests. "
    } else {
        "Summary of the meeting: the current plan needs a cleaner rollout and more tests. "
    };
    let mut text = String::new();
    while text.len() + sentence.len() <= bytes {
        text.push_str(sentence);
    }
    let content = if parts <= 1 {
        json!(text)
    } else {
        let cut = text.len() / parts;
        let mut pieces = Vec::new();
        let mut at = 0;
        for i in 0..parts {
            let mut end = if i + 1 == parts {
                text.len()
            } else {
                (at + cut).min(text.len())
            };
            while !text.is_char_boundary(end) {
                end += 1;
            }
            pieces.push(json!({"type": "text", "text": &text[at..end]}));
            at = end;
        }
        json!(pieces)
    };
    let body = json!({"model": "gpt-4o", "max_tokens": 16, "messages": [{"role": "user", "content": content}]});
    Box::leak(body.to_string().into_boxed_str())
}

/// Every detector masking, two deny patterns blocking (none fires on the prose).
fn local_rules() -> serde_json::Value {
    json!({
        "pii": {"email": "mask", "phone": "mask", "payment_card": "mask", "iban": "mask",
                "us_ssn": "mask", "ip_address": "mask", "jwt": "mask", "azure_key": "mask"},
        "deny": [{"name": "falcon", "pattern": "(?i)\\bproject[\\s-]+falcon\\b"},
                 {"name": "secret", "pattern": "(?i)top\\s+secret|internal\\s+only"}]
    })
}

const GR_FULL: &str = "full path, no guardrails section";
const GR_AGAIN: &str = "full path, no guardrails section (again: the noise)";
const GR_OFF: &str = "full path, guardrails for other workloads only";
const GR_4K: &str = "full path, 4 KiB prompt";
const GR_4K_LOCAL: &str = "full path, 4 KiB prompt, local rules";
const GR_4K_PARTS: &str = "full path, 4 KiB prompt in 4 parts, local rules";
const GR_4K_FOLDED: &str = "full path, 4 KiB non-ASCII prompt, local rules";

fn guardrail_scenarios(fx: &Fixture) -> Vec<Scenario> {
    let full = filter_options(fx, jwt_auth(fx));
    let mut off = full.clone();
    off.plugin_config["guardrails"] = json!({"workloads": {"someone-else": local_rules()}});
    let mut local = full.clone();
    local.plugin_config["guardrails"] = json!({"default": local_rules()});
    let with = |name: &str, opts: &EnvoyOptions, body: &'static str| Scenario {
        body,
        ..Scenario::json(name, opts.clone())
    };
    vec![
        Scenario::json(GR_FULL, full.clone()),
        Scenario::json(GR_AGAIN, full.clone()),
        Scenario::json(GR_OFF, off),
        with(GR_4K, &full, prose_body(4096, 1, false)),
        with(GR_4K_LOCAL, &local, prose_body(4096, 1, false)),
        with(GR_4K_PARTS, &local, prose_body(4096, 4, false)),
        with(GR_4K_FOLDED, &local, prose_body(4096, 1, true)),
    ]
}

/// `make bench`: what a request pays for the guardrails' existence when its workload has no
/// policy, and what the local rules cost per 4 KiB of prompt, in instructions Envoy executes
/// per request under callgrind (the same method as the ladder above).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with make bench"]
async fn what_the_guardrails_cost() {
    if !callgrind::valgrind_present() {
        println!("bench_phases: valgrind not found (make bench installs it): no guardrail figures");
        return;
    }
    let standin = StandIn::start(StandInConfig::default()).await.unwrap();
    let upstream_port = start_upstream();
    let caller_token = standin.sign_token(caller_claims(&standin, "bench-app", "bench-1"));
    let fx = Fixture {
        standin,
        upstream_port,
        caller_token,
    };
    let scenarios = guardrail_scenarios(&fx);
    let per = instructions_per_request(&fx, &scenarios).await;
    let get = |name: &str| per.get(name).copied().unwrap_or(f64::NAN);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nWhat the guardrails cost (callgrind; 1 worker, one connection, {MEASURED} requests per row, after a warm-up)"
    );
    let _ = writeln!(out, "| scenario | instructions / request | against |");
    let _ = writeln!(out, "|---|---:|---|");
    for (name, base) in [
        (GR_FULL, None),
        (GR_AGAIN, Some(GR_FULL)),
        (GR_OFF, Some(GR_FULL)),
        (GR_4K, Some(GR_FULL)),
        (GR_4K_LOCAL, Some(GR_4K)),
        (GR_4K_PARTS, Some(GR_4K)),
        (GR_4K_FOLDED, Some(GR_4K)),
    ] {
        let against = base.map_or("-".to_string(), |b| {
            format!("{:+.0} ({b})", get(name) - get(b))
        });
        let _ = writeln!(out, "| {name} | {:.0} | {against} |", get(name));
    }
    let noise = (get(GR_AGAIN) - get(GR_FULL)).abs();
    let _ = writeln!(
        out,
        "goal: guardrails off (a policy for other workloads only): {:+.0} instructions per request against no guardrails section (the same run twice differs by {noise:.0}); goal: nothing measurable",
        get(GR_OFF) - get(GR_FULL)
    );
    let _ = writeln!(
        out,
        "goal: local rules (8 detectors, 2 deny patterns) per 4 KiB of prompt, callgrind: {:+.0} instructions per request (4 parts: {:+.0}, non-ASCII: {:+.0}); reported, no goal",
        get(GR_4K_LOCAL) - get(GR_4K),
        get(GR_4K_PARTS) - get(GR_4K),
        get(GR_4K_FOLDED) - get(GR_4K)
    );
    println!("{out}");
}

/// For profiling the filter's own code natively (not part of make bench):
/// `valgrind --tool=callgrind target/bench-e2e/deps/bench_phases-* --ignored --exact
/// native_full_path_loop` runs the full path's JSON exchange `BENCH_PHASES_LOOP` times (default
/// 1000) against the counting host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "profiling aid"]
async fn native_full_path_loop() {
    let standin = StandIn::start(StandInConfig::default()).await.unwrap();
    let caller_token = standin.sign_token(caller_claims(&standin, "bench-app", "bench-1"));
    let fx = Fixture {
        standin,
        upstream_port: 1,
        caller_token,
    };
    let n: usize = std::env::var("BENCH_PHASES_LOOP")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let stream = std::env::var_os("BENCH_PHASES_STREAM").is_some();
    let entra_token = fx
        .standin
        .issue_access_token("22222222-2222-2222-2222-222222222222", 3600);
    let answers = Answers {
        token: json!({"token_type": "Bearer", "expires_in": 3599, "access_token": entra_token})
            .to_string(),
        jwks: fx.standin.jwks_json().to_string(),
    };
    let full = filter_options(&fx, jwt_auth(&fx));
    let plugin = Plugin::configure(&full.plugin_config.to_string(), &answers);
    let answer = json_answer();
    let (body, response, chunks) = if stream {
        (
            STREAM_BODY,
            response_headers("text/event-stream", None),
            stream_chunks(),
        )
    } else {
        (
            CHAT_BODY,
            response_headers("application/json", Some(answer.len())),
            vec![answer],
        )
    };
    let x = Exchange {
        request_headers: request_headers(&fx.caller_token, body),
        request_body: body.as_bytes(),
        response_headers: response,
        answer_chunks: chunks,
    };
    for _ in 0..n {
        plugin.exchange(&x, &answers, false);
    }
}
