//! Issue 7, end to end: the filter's metrics scraped from Envoy's admin `/stats/prometheus`
//! with their labels, and its per-request data in Envoy's access log.

mod common;

use azure_standin::{StandIn, StandInConfig};
use common::{client, Cluster, Envoy, EnvoyOptions};
use serde_json::{json, Value};
use std::time::Duration;

/// One Azure OpenAI backend with a token limit, behind the stand-in; `extra` is merged into
/// the plugin config.
async fn start(standin: &StandIn, extra: Value) -> Envoy {
    let mut plugin = json!({
        "credentials": common::standin_credentials(&standin.tenant_id()),
        "backends": {"aoai": {"kind": "azure_openai", "host": "r.openai.azure.com", "api_version": "2024-10-21", "credential": "main"}},
        "models": {"gpt-4o": {"backend": "aoai", "deployment": "gpt-4o-prod"}},
        "rate_limits": {"default": {"tokens_per_minute": 1000000}}
    });
    if let (Some(p), Some(e)) = (plugin.as_object_mut(), extra.as_object()) {
        p.extend(e.clone());
    }
    let mut o = EnvoyOptions::new(plugin);
    o.clusters = vec![
        Cluster::new("entra", standin.port()),
        Cluster::new("aoai", standin.port()),
    ];
    o.backend_routes = vec!["aoai".into()];
    Envoy::start(o).await
}

/// A chat completion of gpt-4o asking for at most 5 tokens.
async fn chat(envoy: &Envoy, content: &str) -> reqwest::Response {
    client()
        .post(envoy.url("/v1/chat/completions"))
        .json(&json!({"model": "gpt-4o", "max_tokens": 5, "messages": [{"role": "user", "content": content}]}))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn metrics_and_access_log_fields() {
    let standin = StandIn::start(StandInConfig::default()).await.unwrap();
    let envoy = start(&standin, json!({})).await;

    let resp = chat(&envoy, "count these four words").await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    let prompt = body["usage"]["prompt_tokens"].as_u64().unwrap();
    let completion = body["usage"]["completion_tokens"].as_u64().unwrap();
    let resp = client()
        .post(envoy.url("/v1/chat/completions"))
        .json(&json!({"model": "nope", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);

    tokio::time::sleep(Duration::from_millis(300)).await;
    let prom = client()
        .get(envoy.admin_url("/stats/prometheus"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let has = |line: &str| prom.lines().any(|l| l == line);
    for line in [
        format!("azure_llm_tokens{{workload=\"anonymous\",model=\"gpt-4o\",backend=\"aoai\",kind=\"prompt\"}} {prompt}"),
        format!("azure_llm_tokens{{workload=\"anonymous\",model=\"gpt-4o\",backend=\"aoai\",kind=\"completion\"}} {completion}"),
        "azure_llm_requests{outcome=\"routed\"} 1".to_string(),
        "azure_llm_requests{outcome=\"model_not_found\"} 1".to_string(),
        "azure_llm_token_fetches{credential=\"main\",result=\"ok\"} 1".to_string(),
        "azure_llm_ratelimit{decision=\"allowed\"} 1".to_string(),
    ] {
        assert!(has(&line), "missing `{line}` in:\n{prom}");
    }
    let expires = prom
        .lines()
        .find_map(|l| l.strip_prefix("azure_llm_token_expires_in_seconds{credential=\"main\"} "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .expect("token expiry gauge");
    assert!(expires > 3000 && expires < 3600, "{expires}");
    // No secret or token value leaks into the stats.
    assert!(!prom.contains("standin-secret"));
    assert!(!prom.contains("eyJ"));

    let logs = envoy.logs();
    let routed_line = logs
        .lines()
        .find(|l| l.contains("workload=anonymous"))
        .unwrap_or_else(|| panic!("access log line: {logs}"));
    assert!(
        routed_line.contains("model=gpt-4o backend=aoai deployment=gpt-4o-prod"),
        "{routed_line}"
    );
    assert!(
        routed_line.contains(&format!(
            "prompt_tokens={prompt} completion_tokens={completion}"
        )),
        "{routed_line}"
    );
    assert!(routed_line.contains("ratelimit=allowed"), "{routed_line}");
}

#[tokio::test]
async fn access_log_properties_can_be_turned_off() {
    let standin = StandIn::start(StandInConfig::default()).await.unwrap();
    let envoy = start(&standin, json!({"access_log_properties": false})).await;
    let resp = chat(&envoy, "hi").await;
    assert_eq!(resp.status(), 200);
    // Routing, the token limit and its headers work as before.
    assert!(
        common::header_u64(&resp, "x-ratelimit-remaining-tokens").is_some(),
        "{resp:?}"
    );
    let _ = resp.bytes().await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    let line = loop {
        let logs = envoy.logs();
        if let Some(l) = logs.lines().find(|l| l.contains("/chat/completions")) {
            break l.to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no access log line:\n{logs}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        line.contains(
            "workload=- model=- backend=- deployment=- prompt_tokens=- completion_tokens=- ratelimit=-"
        ),
        "{line}"
    );
}
