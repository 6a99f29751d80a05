//! Issue 6 (local mode), end to end, the parts e2e_ratelimit.rs does not cover: the real usage
//! of every API (JSON and streamed) is what gets charged; each workload has its own budget;
//! quotas answer 403 until the window ends; concurrent callers on two workers never take more
//! than the budget when answers cost less than their estimates (since issue 14, requests reserve
//! their estimate at admission; tests/e2e_budgets.rs has the adversarial cases); the prompt
//! estimate refuses oversized prompts before anything reaches Azure.

mod common;

use azure_standin::{EndpointKind, StandIn, StandInConfig};
use common::{client, Cluster, Envoy, EnvoyOptions};
use futures_util::StreamExt;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::time::{SystemTime, UNIX_EPOCH};

const KEY_A: &str = "team-a-key-0123456789";
const KEY_B: &str = "team-b-key-9876543210";

fn plugin_config(standin: &StandIn, rate_limits: Value) -> Value {
    json!({
        "auth": {"api_keys": [
            {"sha256": common::hex(&Sha256::digest(KEY_A.as_bytes())), "workload": "team-a"},
            {"sha256": common::hex(&Sha256::digest(KEY_B.as_bytes())), "workload": "team-b"}
        ]},
        "credentials": common::standin_credentials(&standin.tenant_id()),
        "backends": {
            "aoai": {"kind": "azure_openai", "host": "r.openai.azure.com", "api_version": "2024-10-21", "credential": "main"},
            "aoai-v1": {"kind": "azure_openai_v1", "host": "v1.openai.azure.com", "credential": "main"},
            "foundry": {"kind": "foundry_anthropic", "host": "contoso.services.ai.azure.com", "credential": "main"}
        },
        "models": {
            "gpt-4o": {"backend": "aoai", "deployment": "gpt-4o-prod"},
            "embeddings": {"backend": "aoai", "deployment": "text-embedding-3-small"},
            "gpt-4o-v1": {"backend": "aoai-v1", "deployment": "gpt-4o-prod"},
            "claude-opus-4-5": {"backend": "foundry", "deployment": "claude-opus-4-5"}
        },
        "rate_limits": rate_limits
    })
}

async fn setup(rate_limits: Value, concurrency: u32) -> (StandIn, Envoy) {
    let standin = StandIn::start(StandInConfig::default()).await.unwrap();
    let mut o = EnvoyOptions::new(plugin_config(&standin, rate_limits));
    o.clusters = ["entra", "aoai", "aoai-v1", "foundry"]
        .iter()
        .map(|n| Cluster::new(*n, standin.port()))
        .collect();
    o.backend_routes = vec!["aoai".into(), "aoai-v1".into(), "foundry".into()];
    o.concurrency = concurrency;
    let envoy = Envoy::start(o).await;
    (standin, envoy)
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

async fn post(envoy: &Envoy, key: &str, path: &str, body: Value) -> reqwest::Response {
    client()
        .post(envoy.url(path))
        .header("api-key", key)
        .json(&body)
        .send()
        .await
        .unwrap()
}

fn chat(words: &str) -> Value {
    json!({"model": "gpt-4o", "max_tokens": 6, "messages": [{"role": "user", "content": words}]})
}

/// What the filter reserves for a request at admission (src/estimate.rs): ceil(body bytes / 4)
/// plus its completion limit, else the default allowance of 1,024; embeddings none.
fn estimate(path: &str, body: &Value) -> u64 {
    let bytes = serde_json::to_vec(body).unwrap().len() as u64;
    let completion = if path.ends_with("embeddings") {
        0
    } else {
        ["max_tokens", "max_completion_tokens", "max_output_tokens"]
            .iter()
            .filter_map(|k| body[*k].as_u64())
            .max()
            .unwrap_or(1024)
    };
    bytes.div_ceil(4) + completion
}

/// The tokens an answer reports, read by this test on its own terms (not the filter's parser):
/// JSON `usage` of each API, or the usage events of a stream.
fn reported_tokens(body: &str, streamed: bool) -> u64 {
    let total = |u: &Value| -> u64 {
        if let Some(t) = u["total_tokens"].as_u64() {
            return t;
        }
        // Anthropic: no total; input (with cache) + output.
        [
            "input_tokens",
            "cache_read_input_tokens",
            "cache_creation_input_tokens",
            "output_tokens",
        ]
        .iter()
        .filter_map(|k| u[*k].as_u64())
        .sum()
    };
    if !streamed {
        let v: Value = serde_json::from_str(body).unwrap();
        return total(&v["usage"]);
    }
    let events: Vec<Value> = body
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str(d.trim()).ok())
        .collect();
    // Chat completions: the usage chunk. Responses API: response.completed.
    if let Some(u) = events.iter().find_map(|e| {
        e.get("usage")
            .filter(|u| u.is_object())
            .filter(|_| e.get("type").is_none())
            .or_else(|| (e["type"] == "response.completed").then(|| &e["response"]["usage"]))
    }) {
        return total(u);
    }
    // Anthropic: input in message_start, cumulative output in the last message_delta.
    let start = events
        .iter()
        .find(|e| e["type"] == "message_start")
        .expect("message_start");
    let input = total(&json!({
        "input_tokens": start["message"]["usage"]["input_tokens"],
        "cache_read_input_tokens": start["message"]["usage"]["cache_read_input_tokens"],
        "cache_creation_input_tokens": start["message"]["usage"]["cache_creation_input_tokens"],
    }));
    let output = events
        .iter()
        .rev()
        .find(|e| e["type"] == "message_delta")
        .and_then(|e| e["usage"]["output_tokens"].as_u64())
        .expect("message_delta with usage");
    input + output
}

async fn body_text(resp: reqwest::Response) -> String {
    let mut body = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(c) = stream.next().await {
        body.extend_from_slice(&c.unwrap());
    }
    String::from_utf8(body).unwrap()
}

#[tokio::test]
async fn the_real_usage_of_every_api_is_charged_json_and_streamed() {
    let budget = 1_000_000u64;
    let (_standin, envoy) = setup(json!({"default": {"tokens_per_minute": budget}}), 1).await;
    common::early_in_a_minute().await;
    let msgs = json!([{"role": "user", "content": "one two three four five"}]);
    let calls: Vec<(&str, Value, bool)> = vec![
        ("/v1/chat/completions", chat("one two three"), false),
        (
            "/v1/chat/completions",
            // Asking for the usage chunk, to compare the charge with it.
            json!({"model": "gpt-4o", "stream": true, "stream_options": {"include_usage": true}, "messages": msgs}),
            true,
        ),
        (
            "/v1/embeddings",
            json!({"model": "embeddings", "input": "some text to embed"}),
            false,
        ),
        (
            "/v1/responses",
            json!({"model": "gpt-4o-v1", "input": "hello there you"}),
            false,
        ),
        (
            "/v1/responses",
            json!({"model": "gpt-4o-v1", "input": "hello there", "stream": true}),
            true,
        ),
        (
            "/v1/messages",
            json!({"model": "claude-opus-4-5", "max_tokens": 12, "messages": msgs}),
            false,
        ),
        (
            "/v1/messages",
            json!({"model": "claude-opus-4-5", "max_tokens": 9, "stream": true, "messages": msgs}),
            true,
        ),
    ];
    let mut charged = 0u64;
    for (path, body, streamed) in calls {
        let resp = post(&envoy, KEY_A, path, body.clone()).await;
        assert_eq!(resp.status(), 200, "{path} {body}");
        assert_eq!(
            common::header_u64(&resp, "x-ratelimit-remaining-tokens"),
            Some(budget - charged - estimate(path, &body)),
            "before {path} {body}: everything earlier was charged exactly"
        );
        let tokens = reported_tokens(&body_text(resp).await, streamed);
        assert!(tokens > 0, "{path}: the answer reports usage");
        charged += tokens;
    }
    let resp = post(&envoy, KEY_A, "/v1/chat/completions", chat("last")).await;
    assert_eq!(
        common::header_u64(&resp, "x-ratelimit-remaining-tokens"),
        Some(budget - charged - estimate("/v1/chat/completions", &chat("last")))
    );
}

#[tokio::test]
async fn a_workload_that_spends_its_budget_does_not_touch_another_workloads() {
    let (standin, envoy) = setup(
        json!({
            "default": {"tokens_per_minute": 100000, "requests_per_minute": 1000},
            "workloads": {"team-a": {"tokens_per_minute": 60}}
        }),
        1,
    )
    .await;
    common::early_in_a_minute().await;

    // team-b first: its own counters, the default policy.
    let resp = post(&envoy, KEY_B, "/v1/chat/completions", chat("hi")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        common::header_u64(&resp, "x-ratelimit-limit-requests"),
        Some(1000)
    );
    assert_eq!(
        common::header_u64(&resp, "x-ratelimit-remaining-requests"),
        Some(999)
    );
    let b_first = reported_tokens(&body_text(resp).await, false);

    let mut refused = None;
    for _ in 0..30 {
        let resp = post(
            &envoy,
            KEY_A,
            "/v1/chat/completions",
            chat("spend my budget"),
        )
        .await;
        if resp.status() == 429 {
            refused = Some(resp);
            break;
        }
        assert_eq!(resp.status(), 200);
        assert_eq!(
            common::header_u64(&resp, "x-ratelimit-limit-tokens"),
            Some(60)
        );
    }
    let refused = refused.expect("team-a ran out of its 60 tokens");
    let retry_after = common::header_u64(&refused, "retry-after").unwrap();
    let to_window_end = 60 - now_s() % 60;
    assert!(
        retry_after >= to_window_end.saturating_sub(2) && retry_after <= to_window_end + 2,
        "Retry-After {retry_after} is the time to the minute's end ({to_window_end})"
    );
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    assert!(!body["error"]["message"].as_str().unwrap().is_empty());
    let served = standin.count(EndpointKind::DataPlane);

    // team-b is unaffected, and its remaining budget shows only its own use.
    let resp = post(&envoy, KEY_B, "/v1/chat/completions", chat("hi again")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        common::header_u64(&resp, "x-ratelimit-remaining-tokens"),
        Some(100000 - b_first - estimate("/v1/chat/completions", &chat("hi again")))
    );
    assert_eq!(
        common::header_u64(&resp, "x-ratelimit-remaining-requests"),
        Some(998)
    );
    assert_eq!(standin.count(EndpointKind::DataPlane), served + 1);

    // team-a stays refused, and refusals never reach Azure.
    let resp = post(&envoy, KEY_A, "/v1/chat/completions", chat("again")).await;
    assert_eq!(resp.status(), 429);
    assert_eq!(standin.count(EndpointKind::DataPlane), served + 1);
}

#[tokio::test]
async fn a_spent_daily_quota_answers_403_until_midnight_utc() {
    let (standin, envoy) = setup(
        json!({"workloads": {"team-a": {"tokens_per_day": 40, "tokens_per_minute": 100000}}}),
        1,
    )
    .await;
    let mut refused = None;
    for _ in 0..30 {
        let resp = post(&envoy, KEY_A, "/v1/chat/completions", chat("use the quota")).await;
        if resp.status() != 200 {
            refused = Some(resp);
            break;
        }
    }
    let refused = refused.expect("the daily quota ran out");
    assert_eq!(refused.status(), 403);
    let retry_after = common::header_u64(&refused, "retry-after").unwrap();
    let to_midnight = 86_400 - now_s() % 86_400;
    assert!(
        retry_after + 3 >= to_midnight && retry_after <= to_midnight + 3,
        "Retry-After {retry_after} is the time to midnight UTC ({to_midnight})"
    );
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "quota_exceeded");
    let served = standin.count(EndpointKind::DataPlane);

    // A quota is not a rate: a fresh minute does not help, and team-b has no such quota.
    let resp = post(&envoy, KEY_A, "/v1/chat/completions", chat("more")).await;
    assert_eq!(resp.status(), 403);
    let resp = post(&envoy, KEY_B, "/v1/chat/completions", chat("more")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(standin.count(EndpointKind::DataPlane), served + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_callers_on_two_workers_never_take_more_than_the_budget() {
    const BUDGET: u64 = 400;
    const CALLERS: usize = 8;
    let (standin, envoy) = setup(
        json!({"workloads": {"team-a": {"tokens_per_minute": BUDGET}}}),
        2,
    )
    .await;
    common::early_in_a_minute().await;
    let url = envoy.url("/v1/chat/completions");
    let mut tasks = Vec::new();
    for _ in 0..CALLERS {
        let url = url.clone();
        // A client (connection) of its own per caller, so that Envoy spreads them over both
        // workers; each sends one request at a time until refused.
        tasks.push(tokio::spawn(async move {
            let c = client();
            let mut used = Vec::new();
            loop {
                let resp = c
                    .post(&url)
                    .header("api-key", KEY_A)
                    .json(&chat("concurrent spending of one budget"))
                    .send()
                    .await
                    .unwrap();
                match resp.status().as_u16() {
                    200 => used.push(reported_tokens(&resp.text().await.unwrap(), false)),
                    429 => return used,
                    other => panic!("unexpected status {other}"),
                }
            }
        }));
    }
    let mut charged = 0u64;
    let mut answered = 0usize;
    for t in tasks {
        let used = t.await.unwrap();
        answered += used.len();
        charged += used.iter().sum::<u64>();
    }
    assert_eq!(standin.count(EndpointKind::DataPlane), answered);
    // These answers cost less than their estimates: each admitted request held its estimate
    // until its real usage replaced it, so the budget is never crossed (before reservation,
    // every request in flight at the edge crossed it).
    let body = chat("concurrent spending of one budget");
    let each = estimate("/v1/chat/completions", &body);
    assert!(
        charged <= BUDGET,
        "{charged} tokens for a budget of {BUDGET}"
    );
    // A caller refused while others held reservations may leave room once they settle: one
    // caller uses it up, and is refused exactly when its reservation no longer fits.
    let refused = loop {
        let resp = post(&envoy, KEY_A, "/v1/chat/completions", body.clone()).await;
        if resp.status() != 200 {
            break resp;
        }
        charged += reported_tokens(&resp.text().await.unwrap(), false);
    };
    assert_eq!(refused.status(), 429);
    assert!(
        charged <= BUDGET && charged + each > BUDGET,
        "{charged} tokens charged of {BUDGET}, requests of {each} refused"
    );
    assert_eq!(
        common::header_u64(&refused, "x-ratelimit-remaining-tokens"),
        Some(BUDGET - charged)
    );
}

#[tokio::test]
async fn the_prompt_estimate_refuses_a_prompt_larger_than_what_is_left() {
    let (standin, envoy) = setup(
        json!({"default": {"tokens_per_minute": 200}, "estimate_prompt_tokens": true}),
        1,
    )
    .await;
    common::early_in_a_minute().await;
    // ~4,000 bytes: an estimate of ~1,000 tokens, more than the 200 the budget has.
    let big = "lorem ipsum dolor ".repeat(220);
    let resp = post(&envoy, KEY_A, "/v1/chat/completions", chat(&big)).await;
    assert_eq!(resp.status(), 429);
    assert!(common::header_u64(&resp, "retry-after").is_some());
    assert_eq!(
        standin.count(EndpointKind::DataPlane),
        0,
        "nothing reached Azure"
    );
    // A small prompt still fits.
    let resp = post(&envoy, KEY_A, "/v1/chat/completions", chat("small")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(standin.count(EndpointKind::DataPlane), 1);
}
