//! What the guardrail tests share (tests/e2e_guardrails.rs, tests/e2e_guardrails_attacks.rs):
//! a gateway with guarded, exempt, lenient and fail-open workloads in front of the stand-in
//! (Azure OpenAI, Foundry Anthropic, an audio deployment, Content Safety), the SDK cases of
//! tests/sdk/guardrails.py, and what reached the stand-in.

use super::{Cluster, Envoy, EnvoyOptions};
use azure_llm_filter::metrics;
use azure_standin::{Deployment, EndpointKind, RecordedRequest, StandIn, StandInConfig};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::HashMap;

pub const KEY: &str = "guarded-key-0123456789";
pub const EXEMPT_KEY: &str = "exempt-key-0123456789";
pub const LENIENT_KEY: &str = "lenient-key-0123456789";
pub const OPEN_KEY: &str = "open-key-0123456789";
/// The stand-in's Content Safety resource key (`ContentSafetyConfig::default`).
pub const CS_KEY: &str = "standin-content-safety-key";
pub const EMAIL: &str = "jane.doe@example.com";
pub const CARD: &str = "4111 1111 1111 1111";
pub const SSN: &str = "123-45-6789";
/// The stand-in's answer (12 words).
pub const ANSWER: &str = "This is a deterministic answer from the Azure stand-in for your tests.";

pub struct Gateway {
    pub standin: StandIn,
    pub envoy: Envoy,
}

pub fn api_key(key: &str, workload: &str) -> Value {
    json!({"sha256": super::hex(&Sha256::digest(key.as_bytes())), "workload": workload})
}

pub fn plugin_config(standin: &StandIn, guardrails: Value) -> Value {
    json!({
        "credentials": super::standin_credentials(&standin.tenant_id()),
        "backends": {
            "aoai": {"kind": "azure_openai", "host": "eastus-res.openai.azure.com", "api_version": "2025-04-01-preview", "credential": "main"},
            "claude": {"kind": "foundry_anthropic", "host": "contoso.services.ai.azure.com", "credential": "main"},
            "aoai-v1": {"kind": "azure_openai_v1", "host": "v1.openai.azure.com", "credential": "main"}
        },
        "models": {
            "gpt-4o": {"backend": "aoai", "deployment": "gpt-4o-prod"},
            "embeddings": {"backend": "aoai", "deployment": "text-embedding-3-small"},
            "claude-opus-4-5": {"backend": "claude", "deployment": "claude-opus-4-5"},
            "whisper": {"backend": "aoai-v1", "deployment": "whisper"},
            "instruct": {"backend": "aoai", "deployment": "gpt-35-turbo-instruct"}
        },
        "auth": {"api_keys": [api_key(KEY, "guarded"), api_key(EXEMPT_KEY, "exempt"),
                              api_key(LENIENT_KEY, "lenient"), api_key(OPEN_KEY, "open")]},
        "rate_limits": {"default": {"tokens_per_minute": 1_000_000}},
        "guardrails": guardrails
    })
}

pub async fn gateway(guardrails: Value) -> Gateway {
    gateway_with(guardrails, Vec::new()).await
}

/// `host_env`: the Envoy process's environment passed to the VM (`host_env_keys`).
pub async fn gateway_with(guardrails: Value, host_env: Vec<(String, String)>) -> Gateway {
    gateway_of(StandInConfig::default(), guardrails, host_env).await
}

pub async fn gateway_of(
    mut cfg: StandInConfig,
    guardrails: Value,
    host_env: Vec<(String, String)>,
) -> Gateway {
    cfg.deployments
        .push(Deployment::new("whisper", "whisper", "OpenAI"));
    cfg.deployments.push(Deployment::new(
        "gpt-35-turbo-instruct",
        "gpt-35-turbo-instruct",
        "OpenAI",
    ));
    let standin = StandIn::start(cfg).await.unwrap();
    let mut o = EnvoyOptions::new(plugin_config(&standin, guardrails));
    o.host_env = host_env;
    o.clusters.push(Cluster::new("entra", standin.port()));
    // The stand-in serves Content Safety too (under /contentsafety/).
    o.clusters
        .push(Cluster::new("content_safety", standin.port()));
    for name in ["aoai", "claude", "aoai-v1"] {
        o.clusters.push(Cluster::new(name, standin.port()));
        o.backend_routes.push(name.into());
    }
    let envoy = Envoy::start(o).await;
    Gateway { standin, envoy }
}

pub async fn run(gw: &Gateway, cases: &[&str]) -> HashMap<String, Value> {
    let script = super::workspace_root().join("tests/sdk/guardrails.py");
    let env = [
        (
            "GATEWAY",
            gw.envoy.url("").trim_end_matches('/').to_string(),
        ),
        ("GATEWAY_API_KEY", KEY.to_string()),
        ("GATEWAY_EXEMPT_KEY", EXEMPT_KEY.to_string()),
        ("GATEWAY_LENIENT_KEY", LENIENT_KEY.to_string()),
        ("GATEWAY_OPEN_KEY", OPEN_KEY.to_string()),
    ];
    super::sdk::run(&script, cases, &env).await
}

/// A gateway's answer sent as raw HTTP: (status, its JSON body, or the text when not JSON).
pub async fn status_and_body(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// The data-plane requests whose body names the case (its prompt's first word).
pub fn upstream_of(gw: &Gateway, case: &str) -> Vec<RecordedRequest> {
    let needle = format!("{case} ");
    gw.standin
        .requests_of(EndpointKind::DataPlane)
        .into_iter()
        .filter(|r| String::from_utf8_lossy(&r.body).contains(&needle))
        .collect()
}

pub fn one_upstream(gw: &Gateway, case: &str) -> String {
    let found = upstream_of(gw, case);
    assert_eq!(found.len(), 1, "{case}: upstream requests {found:#?}");
    String::from_utf8_lossy(&found[0].body).into_owned()
}

/// A filter stat (a name of `azure_llm_filter::metrics`).
pub async fn stat(gw: &Gateway, name: &str) -> u64 {
    gw.envoy
        .stat(&format!("wasmcustom.{name}"))
        .await
        .unwrap_or(0)
}

pub fn guardrail(check: &str, category: &str, action: &str) -> String {
    metrics::guardrail("prompt", check, category, action)
}

pub fn content_safety(auth: Value) -> Value {
    let mut cs =
        json!({"cluster": "content_safety", "host": "contoso-safety.cognitiveservices.azure.com"});
    for (k, v) in auth.as_object().unwrap() {
        cs[k] = v.clone();
    }
    cs
}

/// The Content Safety requests that carried the case's text.
pub fn safety_calls(gw: &Gateway, case: &str) -> Vec<RecordedRequest> {
    gw.standin
        .requests_of(EndpointKind::ContentSafety)
        .into_iter()
        .filter(|r| String::from_utf8_lossy(&r.body).contains(case))
        .collect()
}

/// The Content Safety credential's token is fetched when Envoy starts; a guarded request
/// does not wait for it, so the tests start once it is there.
pub async fn token_ready(gw: &Gateway) {
    let name = format!("wasmcustom.{}", metrics::token_expires_in("main"));
    for _ in 0..200 {
        if gw.envoy.stat(&name).await.is_some_and(|s| s > 0) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("no token for credential main");
}
