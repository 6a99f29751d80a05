//! Issue 6 (local mode), end to end: budgets spent by real usage (JSON and streamed), 429
//! with Retry-After and x-ratelimit-* headers, other budgets unaffected, exact counting on two
//! workers. Since issue 14 each request reserves its estimate at admission (ceil(body bytes /
//! 4) + max_tokens), which `x-ratelimit-remaining-tokens` includes; the end of the answer
//! replaces it by the real usage.

mod common;

use azure_standin::{EndpointKind, StandIn, StandInConfig};
use common::{client, Cluster, Envoy, EnvoyOptions};
use futures_util::StreamExt;
use serde_json::{json, Value};

fn plugin_config(standin: &StandIn, rate_limits: Value) -> Value {
    json!({
        "credentials": common::standin_credentials(&standin.tenant_id()),
        "backends": {"aoai": {"kind": "azure_openai", "host": "r.openai.azure.com", "api_version": "2024-10-21", "credential": "main"}},
        "models": {
            "gpt-4o": {"backend": "aoai", "deployment": "gpt-4o-prod"},
            "gpt-4o-mini": {"backend": "aoai", "deployment": "gpt-4o-prod"}
        },
        "rate_limits": rate_limits
    })
}

async fn setup(rate_limits: Value, concurrency: u32) -> (StandIn, Envoy) {
    let standin = StandIn::start(StandInConfig::default()).await.unwrap();
    let mut o = EnvoyOptions::new(plugin_config(&standin, rate_limits));
    o.clusters = vec![
        Cluster::new("entra", standin.port()),
        Cluster::new("aoai", standin.port()),
    ];
    o.backend_routes = vec!["aoai".into()];
    o.concurrency = concurrency;
    let envoy = Envoy::start(o).await;
    (standin, envoy)
}

fn ask_body(model: &str) -> Value {
    json!({"model": model, "max_tokens": 10, "messages": [{"role": "user", "content": "count my tokens please"}]})
}

/// The filter's estimate of `ask`'s request: what its admission reserves.
fn ask_estimate() -> u64 {
    let body = serde_json::to_vec(&ask_body("gpt-4o")).unwrap();
    (body.len() as u64).div_ceil(4) + 10
}

async fn ask(envoy: &Envoy, model: &str) -> reqwest::Response {
    client()
        .post(envoy.url("/v1/chat/completions"))
        .json(&ask_body(model))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn spent_budget_gets_429_with_retry_after_and_other_budgets_are_unaffected() {
    let (standin, envoy) = setup(json!({"models": {"gpt-4o": {"tokens_per_minute": 60}}}), 1).await;
    common::early_in_a_minute().await;
    let mut charged = 0;
    let mut refused = None;
    for _ in 0..20 {
        let resp = ask(&envoy, "gpt-4o").await;
        if resp.status() == 429 {
            refused = Some(resp);
            break;
        }
        assert_eq!(resp.status(), 200);
        assert_eq!(
            common::header_u64(&resp, "x-ratelimit-limit-tokens"),
            Some(60)
        );
        assert_eq!(
            common::header_u64(&resp, "x-ratelimit-remaining-tokens"),
            Some(60 - charged - ask_estimate()),
            "the real usage of earlier answers and this request's reservation"
        );
        let body: Value = resp.json().await.unwrap();
        charged += body["usage"]["total_tokens"].as_u64().unwrap();
    }
    let refused = refused.expect("the budget ran out");
    assert!(
        charged <= 60 && charged + ask_estimate() > 60,
        "refused exactly when the reservation no longer fits ({charged} charged)"
    );
    let retry_after = common::header_u64(&refused, "retry-after").unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert_eq!(
        common::header_u64(&refused, "x-ratelimit-remaining-tokens"),
        Some(60 - charged)
    );
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    let served = standin.count(EndpointKind::DataPlane);

    // Another model's budget (here: none) is unaffected.
    let resp = ask(&envoy, "gpt-4o-mini").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(standin.count(EndpointKind::DataPlane), served + 1);
}

#[tokio::test]
async fn streamed_usage_is_charged_exactly() {
    let (_standin, envoy) = setup(json!({"default": {"tokens_per_minute": 100000}}), 1).await;
    common::early_in_a_minute().await;
    let resp = client()
        .post(envoy.url("/v1/chat/completions"))
        .json(&json!({"model": "gpt-4o", "stream": true, "stream_options": {"include_usage": true}, "messages": [{"role": "user", "content": "one two three four"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(c) = stream.next().await {
        body.extend_from_slice(&c.unwrap());
    }
    let text = String::from_utf8(body).unwrap();
    let usage_line = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .find(|v| v["usage"].is_object())
        .expect("usage chunk");
    let total = usage_line["usage"]["total_tokens"].as_u64().unwrap();
    assert!(total > 0);
    // The next request sees exactly that much gone (besides its own reservation).
    let resp = ask(&envoy, "gpt-4o").await;
    assert_eq!(
        common::header_u64(&resp, "x-ratelimit-remaining-tokens"),
        Some(100000 - total - ask_estimate())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_per_minute_are_exact_across_two_workers() {
    let (standin, envoy) = setup(json!({"default": {"requests_per_minute": 30}}), 2).await;
    common::early_in_a_minute().await;
    let mut tasks = Vec::new();
    for _ in 0..60 {
        let url = envoy.url("/v1/chat/completions");
        tasks.push(tokio::spawn(async move {
            client()
                .post(url)
                .json(&json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}))
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }));
    }
    let mut ok = 0;
    let mut limited = 0;
    for t in tasks {
        match t.await.unwrap() {
            200 => ok += 1,
            429 => limited += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(ok, 30, "exactly the budget, across both workers");
    assert_eq!(ok + limited, 60);
    assert_eq!(standin.count(EndpointKind::DataPlane), ok);
}
