//! Issue 5, end to end: backend kinds, aliases and body rewriting, Azure-style and Foundry
//! gateway paths, discovery, header-only routing, the missing-option guard, and refusals.

mod common;

use azure_standin::{EndpointKind, Fault, StandIn, StandInConfig};
use common::{client, Cluster, Envoy, EnvoyOptions};
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn plugin_config(standin: &StandIn) -> Value {
    json!({
        "credentials": common::standin_credentials(&standin.tenant_id()),
        "backends": {
            "aoai": {"kind": "azure_openai", "host": "eastus-res.openai.azure.com", "api_version": "2024-10-21", "credential": "main"},
            "aoai-v1": {"kind": "azure_openai_v1", "host": "westeu-res.openai.azure.com", "credential": "main"},
            "foundry": {"kind": "foundry_anthropic", "host": "contoso.services.ai.azure.com", "credential": "main",
                        "headers": {"x-ms-useragent": "azure-llm-filter"}}
        },
        "models": {
            "gpt-4o": {"backend": "aoai", "deployment": "gpt-4o-prod", "aliases": ["gpt4o-latest"], "version": "2024-11-20"},
            "gpt-4o-v1": {"backend": "aoai-v1", "deployment": "gpt-4o-prod"},
            "embeddings": {"backend": "aoai", "deployment": "text-embedding-3-small"},
            "claude-opus-4-5": {"backend": "foundry", "deployment": "claude-opus-4-5"}
        },
        "max_body_bytes": 65536
    })
}

fn options(standin: &StandIn, plugin: Value) -> EnvoyOptions {
    let mut o = EnvoyOptions::new(plugin);
    o.clusters = ["entra", "aoai", "aoai-v1", "foundry"]
        .iter()
        .map(|n| Cluster::new(*n, standin.port()))
        .collect();
    o.backend_routes = vec!["aoai".into(), "aoai-v1".into(), "foundry".into()];
    o
}

async fn setup() -> (StandIn, Envoy) {
    let standin = StandIn::start(StandInConfig::default()).await.unwrap();
    let envoy = Envoy::start(options(&standin, plugin_config(&standin))).await;
    (standin, envoy)
}

async fn post(envoy: &Envoy, path: &str, body: Value) -> (u16, Value) {
    let resp = client()
        .post(envoy.url(path))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn last_data_plane(standin: &StandIn) -> azure_standin::RecordedRequest {
    standin
        .requests_of(EndpointKind::DataPlane)
        .pop()
        .expect("a data-plane request")
}

#[tokio::test]
async fn every_backend_kind_and_inbound_form() {
    let (standin, envoy) = setup().await;
    let msg = json!([{"role": "user", "content": "hello there"}]);

    // Alias on the dated API: deployment in the path.
    let (s, b) = post(
        &envoy,
        "/v1/chat/completions",
        json!({"model": "gpt4o-latest", "messages": msg}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let r = last_data_plane(&standin);
    assert_eq!(r.path, "/openai/deployments/gpt-4o-prod/chat/completions");
    assert_eq!(r.header("host"), Some("eastus-res.openai.azure.com"));

    // v1 API: the body's model becomes the deployment, content-length stays right.
    let (s, b) = post(
        &envoy,
        "/v1/chat/completions",
        json!({"model": "gpt-4o-v1", "messages": msg}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let r = last_data_plane(&standin);
    assert_eq!(r.path, "/openai/v1/chat/completions");
    assert_eq!(r.header("host"), Some("westeu-res.openai.azure.com"));
    assert_eq!(r.body_json().unwrap()["model"], "gpt-4o-prod");
    assert_eq!(
        r.header("content-length")
            .map(|v| v.parse::<usize>().unwrap()),
        Some(r.body.len())
    );

    // Responses API through the v1 backend.
    let (s, b) = post(
        &envoy,
        "/v1/responses",
        json!({"model": "gpt-4o-v1", "input": "hi"}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(last_data_plane(&standin).path, "/openai/v1/responses");

    // Embeddings.
    let (s, b) = post(
        &envoy,
        "/v1/embeddings",
        json!({"model": "embeddings", "input": "some text"}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        last_data_plane(&standin).path,
        "/openai/deployments/text-embedding-3-small/embeddings"
    );

    // Anthropic Messages to Claude on Foundry, with the backend's extra header and a default
    // anthropic-version.
    let (s, b) = post(
        &envoy,
        "/v1/messages",
        json!({"model": "claude-opus-4-5", "max_tokens": 20, "messages": msg}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["type"], "message");
    let r = last_data_plane(&standin);
    assert_eq!(r.path, "/anthropic/v1/messages");
    assert_eq!(r.header("host"), Some("contoso.services.ai.azure.com"));
    assert_eq!(r.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(r.header("x-ms-useragent"), Some("azure-llm-filter"));

    // Azure-style path passed through, the caller's api-version replaced by the backend's.
    let (s, b) = post(
        &envoy,
        "/openai/deployments/gpt-4o/chat/completions?api-version=2023-05-15",
        json!({"messages": msg}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let r = last_data_plane(&standin);
    assert_eq!(r.path, "/openai/deployments/gpt-4o-prod/chat/completions");
    assert_eq!(r.query, "api-version=2024-10-21");

    // Foundry gateway connection forms.
    let (s, b) = post(
        &envoy,
        "/deployments/gpt-4o/chat/completions",
        json!({"messages": msg}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = post(
        &envoy,
        "/chat/completions",
        json!({"model": "gpt-4o", "messages": msg}),
    )
    .await;
    assert_eq!(s, 200, "{b}");

    // A model that does not speak the API asked for.
    let (s, b) = post(
        &envoy,
        "/v1/chat/completions",
        json!({"model": "claude-opus-4-5", "messages": msg}),
    )
    .await;
    assert_eq!(s, 400);
    assert_eq!(b["error"]["code"], "unsupported_api");
    assert!(standin
        .requests_of(EndpointKind::DataPlane)
        .iter()
        .all(|r| r.outcome_status == 200));
}

#[tokio::test]
async fn discovery_is_served_from_config() {
    let (standin, envoy) = setup().await;
    let models: Value = client()
        .get(envoy.url("/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        vec!["claude-opus-4-5", "embeddings", "gpt-4o", "gpt-4o-v1"]
    );
    let deployments: Value = client()
        .get(envoy.url("/deployments"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(deployments["value"].as_array().unwrap().len(), 4);
    let one: Value = client()
        .get(envoy.url("/deployments/gpt-4o"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(one["properties"]["model"]["format"], "OpenAI");
    assert_eq!(one["properties"]["model"]["version"], "2024-11-20");
    let claude: Value = client()
        .get(envoy.url("/deployments/claude-opus-4-5"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(claude["properties"]["model"]["format"], "Anthropic");
    let missing = client()
        .get(envoy.url("/deployments/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(standin.count(EndpointKind::DataPlane), 0);
}

/// The filter asks Azure for the stream's usage and takes the usage-only chunk out again, so
/// the caller gets the stream it asked for (issue 15; the SDK view is in e2e_sdk.rs).
#[tokio::test]
async fn streamed_chat_gets_usage_requested_and_passes_through() {
    let (standin, envoy) = setup().await;
    let resp = client()
        .post(envoy.url("/v1/chat/completions"))
        .json(&json!({"model": "gpt-4o", "stream": true, "messages": [{"role": "user", "content": "stream please"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut stream = resp.bytes_stream();
    let mut text = Vec::new();
    while let Some(chunk) = stream.next().await {
        text.extend_from_slice(&chunk.unwrap());
    }
    let text = String::from_utf8(text).unwrap();
    assert!(
        !text.contains("\"usage\":{"),
        "no usage chunk the caller did not ask for: {text}"
    );
    assert!(text.contains("deterministic"), "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"));
    let sent = last_data_plane(&standin).body_json().unwrap();
    assert_eq!(sent["stream_options"]["include_usage"], true);
}

#[tokio::test]
async fn refusals_oversized_and_injected_paths() {
    let (standin, envoy) = setup().await;
    let big = "x".repeat(70_000);
    let (s, b) = post(
        &envoy,
        "/v1/chat/completions",
        json!({"model": "gpt-4o", "messages": [{"role": "user", "content": big}]}),
    )
    .await;
    assert_eq!(s, 413, "{b}");
    for path in [
        "/openai/deployments/..%2f..%2fadmin/chat/completions",
        "/openai/deployments/gpt-4o%0d%0ax-evil:1/chat/completions",
    ] {
        let resp = client()
            .post(envoy.url(path))
            .json(&json!({"messages": []}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{path}");
    }
    // Model names from the body are looked up, never pasted into a path or a header.
    for model in [
        "../../admin",
        "gpt-4o/../../admin",
        "gpt-4o\r\nx-evil: 1",
        "gpt-4o?api-version=1",
        "gpt-4o%2f..",
    ] {
        let (s, b) = post(
            &envoy,
            "/v1/chat/completions",
            json!({"model": model, "messages": []}),
        )
        .await;
        assert_eq!(s, 404, "{model:?}: {b}");
        assert_eq!(b["error"]["code"], "model_not_found", "{model:?}");
    }
    let resp = client()
        .post(envoy.url("/v1/chat/completions"))
        .header("content-type", "text/plain")
        .body("not json at all")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(standin.count(EndpointKind::DataPlane), 0);
}

#[tokio::test]
async fn header_routing_mode_needs_no_body_pause() {
    let standin = StandIn::start(StandInConfig::default()).await.unwrap();
    let mut plugin = plugin_config(&standin);
    plugin["routing_mode"] = json!("header");
    plugin["model_header"] = json!("x-model");
    let mut opts = options(&standin, plugin);
    // What Istio's WasmPlugin gives: no allow_on_headers_stop_iteration.
    opts.allow_on_headers_stop_iteration = false;
    let envoy = Envoy::start(opts).await;
    let body = json!({"messages": [{"role": "user", "content": "hi"}]});
    let (s, b) = post(
        &envoy,
        "/openai/deployments/gpt-4o/chat/completions",
        body.clone(),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let resp = client()
        .post(envoy.url("/v1/chat/completions"))
        .header("x-model", "gpt-4o")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // No model in path or header: a clear 400 rather than a body read.
    let (s, b) = post(&envoy, "/v1/chat/completions", json!({"model": "gpt-4o"})).await;
    assert_eq!(s, 400);
    assert_eq!(b["error"]["code"], "missing_model");
}

/// Header routing with `allow_on_headers_stop_iteration: true` (the shipped setting) while
/// the token is still being fetched: the headers wait for it, and Envoy then hands the filter
/// the body. Letting that body through would release the held headers too, so the request
/// would reach Azure without its bearer (it did: the stand-in's 401). Each request must wait
/// for the token and arrive with it, with a body and without one.
#[tokio::test]
async fn header_routing_waits_for_the_token_though_the_body_flows() {
    let standin = StandIn::start(StandInConfig::default()).await.unwrap();
    // Every token request answered after 2 s: Envoy is up long before the first token.
    standin.push_fault(
        EndpointKind::Token,
        Fault::Delay(Duration::from_millis(2_000)),
        10,
    );
    let mut plugin = plugin_config(&standin);
    plugin["routing_mode"] = json!("header");
    plugin["model_header"] = json!("x-model");
    let opts = options(&standin, plugin);
    assert!(opts.allow_on_headers_stop_iteration);
    let envoy = Envoy::start(opts).await;
    let with_body = client()
        .post(envoy.url("/v1/chat/completions"))
        .header("x-model", "gpt-4o")
        .json(&json!({"messages": [{"role": "user", "content": "hi"}]}))
        .send();
    // No body at all (end of stream on the headers), the model named by the path.
    let without_body = client()
        .post(envoy.url("/openai/deployments/gpt-4o/chat/completions"))
        .send();
    let sent = Instant::now();
    let (with_body, without_body) = tokio::join!(with_body, without_body);
    let (with_body, without_body) = (with_body.unwrap(), without_body.unwrap());
    let took = sent.elapsed();
    // What reached Azure: (with a body, with a bearer), for both requests.
    let plane: Vec<(bool, bool)> = standin
        .requests_of(EndpointKind::DataPlane)
        .iter()
        .map(|r| {
            let bearer = r
                .header("authorization")
                .is_some_and(|a| a.starts_with("Bearer "));
            (!r.body.is_empty(), bearer)
        })
        .collect();
    let statuses = (with_body.status().as_u16(), without_body.status().as_u16());
    let body: Value = with_body.json().await.unwrap_or(Value::Null);
    assert_eq!(
        plane.len(),
        2,
        "both requests reach Azure: {plane:?} {statuses:?} {body}"
    );
    assert!(
        plane.iter().all(|(_, bearer)| *bearer),
        "each with its token: (body, bearer) {plane:?}, statuses {statuses:?} {body}"
    );
    assert_eq!(statuses.0, 200, "{body}");
    // The bodyless request reached Azure authenticated: whatever Azure answers it, it is not
    // the 401 of a request without a token.
    assert_ne!(statuses.1, 401);
    // The token came late: else this test shows nothing.
    assert!(took >= Duration::from_millis(1_000), "took {took:?}");
}

#[tokio::test]
async fn missing_allow_on_headers_option_fails_fast_with_a_named_500() {
    let standin = StandIn::start(StandInConfig::default()).await.unwrap();
    let mut plugin = plugin_config(&standin);
    plugin["body_wait_timeout_ms"] = json!(1000);
    let mut opts = options(&standin, plugin);
    opts.allow_on_headers_stop_iteration = false;
    let envoy = Envoy::start(opts).await;
    let started = Instant::now();
    let (s, b) = post(
        &envoy,
        "/v1/chat/completions",
        json!({"model": "gpt-4o", "messages": []}),
    )
    .await;
    assert_eq!(s, 500, "{b}");
    assert!(b["error"]["message"]
        .as_str()
        .unwrap()
        .contains("allow_on_headers_stop_iteration"));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(envoy.logs().contains("allow_on_headers_stop_iteration"));
}
