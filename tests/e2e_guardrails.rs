//! Issue 26, end to end: guardrails through a real Envoy, called by the official OpenAI and
//! Anthropic SDKs (tests/sdk/guardrails.py). Local rules: PII masked before the prompt leaves
//! (the stand-in Azure never sees the value), deny patterns and blocking detectors refused with
//! Azure's content-filter 400 (the SDKs' `BadRequestError`), nothing reserved or sent for a
//! refused prompt, exempt workloads untouched, metrics and the usage record naming the rule.

mod common;

use azure_llm_filter::metrics;
use azure_standin::{EndpointKind, RecordedRequest, StandIn, StandInConfig};
use common::sdk::{ok, raised};
use common::{Cluster, Envoy, EnvoyOptions};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::HashMap;

const KEY: &str = "guarded-key-0123456789";
const EXEMPT_KEY: &str = "exempt-key-0123456789";
const EMAIL: &str = "jane.doe@example.com";
const CARD: &str = "4111 1111 1111 1111";
const SSN: &str = "123-45-6789";
/// The stand-in's answer (12 words).
const ANSWER: &str = "This is a deterministic answer from the Azure stand-in for your tests.";

struct Gateway {
    standin: StandIn,
    envoy: Envoy,
}

fn api_key(key: &str, workload: &str) -> Value {
    json!({"sha256": common::hex(&Sha256::digest(key.as_bytes())), "workload": workload})
}

fn plugin_config(standin: &StandIn, guardrails: Value) -> Value {
    json!({
        "credentials": common::standin_credentials(&standin.tenant_id()),
        "backends": {
            "aoai": {"kind": "azure_openai", "host": "eastus-res.openai.azure.com", "api_version": "2025-04-01-preview", "credential": "main"},
            "claude": {"kind": "foundry_anthropic", "host": "contoso.services.ai.azure.com", "credential": "main"}
        },
        "models": {
            "gpt-4o": {"backend": "aoai", "deployment": "gpt-4o-prod"},
            "embeddings": {"backend": "aoai", "deployment": "text-embedding-3-small"},
            "claude-opus-4-5": {"backend": "claude", "deployment": "claude-opus-4-5"}
        },
        "auth": {"api_keys": [api_key(KEY, "guarded"), api_key(EXEMPT_KEY, "exempt")]},
        "rate_limits": {"default": {"tokens_per_minute": 1_000_000}},
        "guardrails": guardrails
    })
}

async fn gateway(guardrails: Value) -> Gateway {
    let standin = StandIn::start(StandInConfig::default()).await.unwrap();
    let mut o = EnvoyOptions::new(plugin_config(&standin, guardrails));
    o.clusters.push(Cluster::new("entra", standin.port()));
    for name in ["aoai", "claude"] {
        o.clusters.push(Cluster::new(name, standin.port()));
        o.backend_routes.push(name.into());
    }
    let envoy = Envoy::start(o).await;
    Gateway { standin, envoy }
}

async fn run(gw: &Gateway, cases: &[&str]) -> HashMap<String, Value> {
    let script = common::workspace_root().join("tests/sdk/guardrails.py");
    let env = [
        (
            "GATEWAY",
            gw.envoy.url("").trim_end_matches('/').to_string(),
        ),
        ("GATEWAY_API_KEY", KEY.to_string()),
        ("GATEWAY_EXEMPT_KEY", EXEMPT_KEY.to_string()),
    ];
    common::sdk::run(&script, cases, &env).await
}

/// The data-plane requests whose body names the case (its prompt's first word).
fn upstream_of(gw: &Gateway, case: &str) -> Vec<RecordedRequest> {
    let needle = format!("{case} ");
    gw.standin
        .requests_of(EndpointKind::DataPlane)
        .into_iter()
        .filter(|r| String::from_utf8_lossy(&r.body).contains(&needle))
        .collect()
}

fn one_upstream(gw: &Gateway, case: &str) -> String {
    let found = upstream_of(gw, case);
    assert_eq!(found.len(), 1, "{case}: upstream requests {found:#?}");
    String::from_utf8_lossy(&found[0].body).into_owned()
}

/// A filter stat (a name of `azure_llm_filter::metrics`).
async fn stat(gw: &Gateway, name: &str) -> u64 {
    gw.envoy
        .stat(&format!("wasmcustom.{name}"))
        .await
        .unwrap_or(0)
}

fn guardrail(check: &str, category: &str, action: &str) -> String {
    metrics::guardrail("prompt", check, category, action)
}

fn local_rules() -> Value {
    json!({
        "default": {
            "pii": {"email": "mask", "payment_card": "mask", "us_ssn": "block"},
            "deny": [{"name": "project-falcon", "pattern": "(?i)project\\s+falcon"}]
        },
        "workloads": {"exempt": {}}
    })
}

/// PII is masked before the prompt leaves, for every API and both SDKs; the stream and the
/// answers are what Azure returned; blocking rules refuse with Azure's content-filter shape
/// and nothing reaches Azure; exempt workloads are untouched.
#[tokio::test]
async fn local_rules_mask_and_block_through_the_sdks() {
    let gw = gateway(local_rules()).await;
    let cases = [
        "oai_pii_masked",
        "oai_pii_stream",
        "oai_deny_blocked",
        "oai_ssn_blocked",
        "oai_ssn_in_tool_result",
        "resp_pii_masked",
        "emb_pii_masked",
        "claude_pii_masked",
        "claude_ssn_blocked",
        "exempt_pii_passes",
    ];
    let r = run(&gw, &cases).await;

    // Masked: the SDK gets Azure's answer; Azure never saw the values.
    assert_eq!(ok(&r, "oai_pii_masked")["content"], ANSWER);
    assert_eq!(ok(&r, "oai_pii_stream")["content"], ANSWER);
    assert!(ok(&r, "resp_pii_masked")["text"]
        .as_str()
        .unwrap()
        .starts_with("This is"));
    assert_eq!(ok(&r, "emb_pii_masked")["count"], 1);
    assert_eq!(ok(&r, "claude_pii_masked")["stop_reason"], "end_turn");
    for case in [
        "oai_pii_masked",
        "oai_pii_stream",
        "resp_pii_masked",
        "emb_pii_masked",
        "claude_pii_masked",
    ] {
        let body = one_upstream(&gw, case);
        assert!(
            !body.contains(EMAIL) && !body.contains("jane.doe"),
            "{case}: {body}"
        );
        assert!(
            !body.contains(CARD) && !body.contains("4111"),
            "{case}: {body}"
        );
        assert!(body.contains("[REDACTED:"), "{case}: {body}");
    }
    let masked = one_upstream(&gw, "oai_pii_masked");
    assert!(
        masked.contains("mail [REDACTED:email] about card [REDACTED:payment_card]"),
        "{masked}"
    );
    let claude = one_upstream(&gw, "claude_pii_masked");
    assert!(
        claude.contains("operator [REDACTED:email]"),
        "system prompt: {claude}"
    );

    // Blocked: Azure's content-filter 400, the rule named, nothing sent.
    let (class, status, body) = raised(&r, "oai_deny_blocked");
    assert_eq!((class, status), ("BadRequestError", 400), "{body}");
    assert_eq!(body["code"], "content_filter", "{body}");
    assert_eq!(body["param"], "prompt", "{body}");
    assert_eq!(body["innererror"]["code"], "ResponsibleAIPolicyViolation");
    let details = &body["innererror"]["content_filter_result"]["custom_blocklists"];
    assert_eq!(details["filtered"], true, "{body}");
    assert_eq!(details["details"][0]["id"], "deny.project-falcon", "{body}");
    assert!(
        !body.to_string().contains("FALCON"),
        "the matched text is never echoed: {body}"
    );
    for case in ["oai_ssn_blocked", "oai_ssn_in_tool_result"] {
        let (class, status, body) = raised(&r, case);
        assert_eq!((class, status), ("BadRequestError", 400), "{case}: {body}");
        let details = &body["innererror"]["content_filter_result"]["custom_blocklists"];
        assert_eq!(details["details"][0]["id"], "pii.us_ssn", "{case}: {body}");
        assert!(!body.to_string().contains(SSN), "{case}: {body}");
    }
    let (class, status, body) = raised(&r, "claude_ssn_blocked");
    assert_eq!((class, status), ("BadRequestError", 400), "{body}");
    assert_eq!(body["type"], "error", "Anthropic's shape: {body}");
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("content_filter: ") && message.contains("pii us_ssn"),
        "{message}"
    );
    for case in [
        "oai_deny_blocked",
        "oai_ssn_blocked",
        "oai_ssn_in_tool_result",
        "claude_ssn_blocked",
    ] {
        assert!(upstream_of(&gw, case).is_empty(), "{case} reached Azure");
    }

    // The exempt workload's prompt passes as sent.
    assert_eq!(ok(&r, "exempt_pii_passes")["content"], ANSWER);
    assert!(one_upstream(&gw, "exempt_pii_passes").contains(EMAIL));

    // A refused prompt reserves nothing: every admitted request went to Azure.
    let sent = gw.standin.count(EndpointKind::DataPlane) as u64;
    assert_eq!(stat(&gw, &metrics::ratelimit("allowed")).await, sent);
    assert_eq!(sent, 6);

    // Metrics name the rule and the action.
    for (name, n) in [
        (guardrail("pii", "email", "masked"), 5),
        (guardrail("pii", "payment_card", "masked"), 2),
        (guardrail("pii", "us_ssn", "blocked"), 3),
        (guardrail("deny", "project-falcon", "blocked"), 1),
    ] {
        assert_eq!(stat(&gw, &name).await, n, "{name}");
    }
    // The access log's usage record names rules, never values.
    let logs = gw.envoy.logs();
    assert!(
        !logs.contains(EMAIL) && !logs.contains(SSN),
        "a value reached Envoy's log"
    );
    assert!(
        logs.contains(" guardrail=prompt.pii.email.masked,prompt.pii.payment_card.masked\n"),
        "{logs}"
    );
    assert!(
        logs.contains("guardrail=prompt.deny.project-falcon.blocked\n"),
        "{logs}"
    );
}
