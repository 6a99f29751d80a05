//! Issue 23, end to end through Envoy with 2 workers: budgets in money. `cost_per_day` /
//! `cost_per_month` (the price table's currency) reserve each request's estimate priced at
//! the model's rates and are reconciled with the answer's real cost, exactly (integer
//! pico-units); a spent budget is refused with 403 `cost_quota_exceeded` and `Retry-After`;
//! `x-ratelimit-*-cost` tell the workload's standing; metrics and the access log count it; 20
//! concurrent requests at the edge consume no more than the budget.
//!
//! Prices: 2.5 per million input tokens, 10 per million output tokens, so one token of input
//! costs 2.5 micro-units (2,500,000 pico-units) and one of output 10. The stand-in's answers
//! have 12 completion tokens; a prompt of W words has 3 + W tokens.

mod common;

use azure_standin::{EndpointKind, StandIn, StandInConfig};
use common::{client, Cluster, Envoy, EnvoyOptions};
use futures_util::StreamExt;
use serde_json::{json, Value};

/// 0.001 USD a day.
const BUDGET_MICROS: u64 = 1000;

async fn setup(rate_limits: Value) -> (StandIn, Envoy) {
    let standin = StandIn::start(StandInConfig::default()).await.unwrap();
    let mut o = EnvoyOptions::new(json!({
        "credentials": common::standin_credentials(&standin.tenant_id()),
        "backends": {"aoai": {"kind": "azure_openai", "host": "r.openai.azure.com", "api_version": "2024-10-21", "credential": "main"}},
        "models": {
            "gpt-4o": {"backend": "aoai", "deployment": "gpt-4o-prod"},
            "embeddings": {"backend": "aoai", "deployment": "text-embedding-3-small"}
        },
        "pricing": {"currency": "USD", "models": {
            "gpt-4o": {"input": 2.5, "output": 10},
            "embeddings": {"input": 0.02, "output": 0}
        }},
        "rate_limits": rate_limits
    }));
    o.clusters = ["entra", "aoai"]
        .iter()
        .map(|n| Cluster::new(*n, standin.port()))
        .collect();
    o.backend_routes = vec!["aoai".into()];
    o.concurrency = 2;
    let envoy = Envoy::start(o).await;
    (standin, envoy)
}

fn chat(max_tokens: u64) -> Value {
    json!({"model": "gpt-4o", "max_tokens": max_tokens, "messages": [{"role": "user", "content": "hello world"}]})
}

/// The estimate's cost in pico-units: ceil(bytes / 4) input tokens and `max_tokens` output.
fn estimate_pico(body: &Value) -> u64 {
    let bytes = serde_json::to_vec(body).unwrap().len() as u64;
    bytes.div_ceil(4) * 2_500_000 + body["max_tokens"].as_u64().unwrap() * 10_000_000
}

/// The real cost of `chat(12)`: 5 input tokens, 12 output, in pico-units (132.5 micro-units).
const REAL_PICO: u64 = 5 * 2_500_000 + 12 * 10_000_000;

async fn post(envoy: &Envoy, body: &Value) -> reqwest::Response {
    client()
        .post(envoy.url("/v1/chat/completions"))
        .json(body)
        .send()
        .await
        .unwrap()
}

/// A header's amount of money in pico-units (`12.345678` has six decimals).
fn money(resp: &reqwest::Response, name: &str) -> u64 {
    let v = resp.headers()[name].to_str().unwrap().to_string();
    let (units, micros) = v.split_once('.').unwrap();
    assert_eq!(micros.len(), 6, "{name}: {v}");
    (units.parse::<u64>().unwrap() * 1_000_000 + micros.parse::<u64>().unwrap()) * 1_000_000
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_daily_cost_budget_is_reserved_reconciled_and_refused_when_spent() {
    let (standin, envoy) = setup(json!({"default": {"cost_per_day": 0.001}})).await;
    let body = chat(12);
    let estimate = estimate_pico(&body);
    let budget = BUDGET_MICROS * 1_000_000;
    let mut admitted = 0u64;
    let refused = loop {
        let resp = post(&envoy, &body).await;
        if resp.status() != 200 {
            break resp;
        }
        // The standing includes this request's reservation: the budget less what the
        // earlier ones cost, exactly, and this one's estimate (cut down to micro-units).
        assert_eq!(money(&resp, "x-ratelimit-limit-cost"), budget);
        let remaining = money(&resp, "x-ratelimit-remaining-cost");
        let exact = budget - admitted * REAL_PICO - estimate;
        assert_eq!(remaining, exact - exact % 1_000_000, "after {admitted}");
        assert!(resp.headers().get("x-ratelimit-remaining-tokens").is_none());
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["usage"]["total_tokens"], 17);
        admitted += 1;
        assert!(admitted < 20, "the budget never ran out");
    };
    // Admitted while the estimate fits what the real costs left.
    assert_eq!(admitted, (budget - estimate) / REAL_PICO + 1);
    assert_eq!(refused.status(), 403);
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let to_midnight = 86_400 - now % 86_400;
    assert!(
        retry_after.abs_diff(to_midnight) <= 2,
        "retry after the UTC day ends: {retry_after} vs {to_midnight}"
    );
    let err: Value = refused.json().await.unwrap();
    assert_eq!(err["error"]["code"], "cost_quota_exceeded", "{err}");
    let message = err["error"]["message"].as_str().unwrap();
    assert!(message.contains("day cost budget"), "{message}");
    assert_eq!(standin.count(EndpointKind::DataPlane) as u64, admitted);
    assert_eq!(
        envoy
            .stat(&format!(
                "wasmcustom.{}",
                azure_llm_filter::metrics::ratelimit("cost_quota_exceeded")
            ))
            .await,
        Some(1)
    );
    assert_eq!(
        envoy
            .stat(&format!(
                "wasmcustom.{}",
                azure_llm_filter::metrics::ratelimit("charged_usage")
            ))
            .await,
        Some(admitted)
    );
    // Envoy flushes its access log within a second.
    let refusal_logged = || {
        envoy
            .logs()
            .lines()
            .any(|l| l.contains(" 403 ") && l.contains("ratelimit=cost_quota_exceeded"))
    };
    for _ in 0..50 {
        if refusal_logged() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        refusal_logged(),
        "the access log (and the usage record) names the refusal"
    );
}

/// A request estimated at more than the whole budget is refused, whatever the window holds,
/// with a message in money; embeddings are priced at their own rate; a streamed answer is
/// reconciled with its real cost too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streams_and_other_models_are_charged_their_cost() {
    let (_standin, envoy) =
        setup(json!({"workloads": {"anonymous": {"cost_per_month": 0.01}}})).await;
    let budget = 10_000 * 1_000_000;
    let big = chat(2000); // 2000 output tokens: 0.02 at least, more than the month's budget
    let resp = post(&envoy, &big).await;
    assert_eq!(resp.status(), 403);
    let err: Value = resp.json().await.unwrap();
    let message = err["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("USD") && message.contains("0.010000"),
        "{message}"
    );

    let stream = json!({"model": "gpt-4o", "max_tokens": 12, "stream": true,
        "messages": [{"role": "user", "content": "hello world"}]});
    let resp = post(&envoy, &stream).await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    while let Some(Ok(_)) = body.next().await {}
    // Embeddings: 3 input tokens at 0.02 per million (60,000 pico-units).
    let resp = client()
        .post(envoy.url("/v1/embeddings"))
        .json(&json!({"model": "embeddings", "input": "three words here"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let _ = resp.bytes().await;
    let probe = chat(1);
    let resp = post(&envoy, &probe).await;
    assert_eq!(resp.status(), 200);
    let remaining = money(&resp, "x-ratelimit-remaining-cost");
    let exact = budget - REAL_PICO - 3 * 20_000 - estimate_pico(&probe);
    assert_eq!(remaining, exact - exact % 1_000_000);
}

/// 20 concurrent requests against a fresh cost budget: admitted while their reservations fit,
/// and what they cost stays within the budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_requests_at_the_edge_stay_within_the_cost_budget() {
    let (standin, envoy) = setup(json!({"default": {"cost_per_day": 0.001}})).await;
    let body = chat(12);
    let estimate = estimate_pico(&body);
    let budget = BUDGET_MICROS * 1_000_000;
    let responses = futures_util::future::join_all((0..20).map(|_| post(&envoy, &body))).await;
    let mut admitted = 0u64;
    for r in responses {
        match r.status().as_u16() {
            200 => {
                admitted += 1;
                let _ = r.bytes().await;
            }
            403 => {}
            s => panic!("status {s}"),
        }
    }
    let at_once = budget / estimate;
    assert!(
        admitted >= at_once,
        "{admitted} admitted, {at_once} fit at once"
    );
    assert_eq!(standin.count(EndpointKind::DataPlane) as u64, admitted);
    assert!(
        admitted * REAL_PICO <= budget,
        "{admitted} answers cost {} of {budget}",
        admitted * REAL_PICO
    );
}
