//! Tests of the assembled configuration, and the fixtures the domains' configuration tests
//! share (`base()`: one credential, backend and model; helpers to swap in other credentials).

use super::*;
use crate::entra::assertion::tests::{CERT, KEY_PKCS8};
use crate::entra::credential::{DEFAULT_AUTHORITY_HOST, DEFAULT_SCOPE};
use serde_json::json;

pub(crate) fn base() -> serde_json::Value {
    json!({
        "credentials": {"main": {"kind": "client_secret", "tenant_id": "t1", "client_id": "c1",
                                 "client_secret": "s", "token_cluster": "entra"}},
        "backends": {"aoai": {"kind": "azure_openai", "host": "r.openai.azure.com",
                              "api_version": "2024-10-21", "credential": "main"}},
        "models": {"gpt-4o": {"backend": "aoai", "deployment": "gpt-4o-prod"}}
    })
}

pub(crate) fn parse(v: serde_json::Value) -> Result<Config, ConfigError> {
    Config::parse(v.to_string().as_bytes())
}

/// `base()` with its credential replaced by `creds` (the backend uses the first).
pub(crate) fn with_credentials(creds: serde_json::Value) -> serde_json::Value {
    let mut v = base();
    let first = creds.as_object().unwrap().keys().next().unwrap().clone();
    v["credentials"] = creds;
    v["backends"]["aoai"]["credential"] = json!(first);
    v
}

pub(crate) fn cert_cred() -> serde_json::Value {
    json!({"kind": "client_certificate", "tenant_id": "t1", "client_id": "c1",
           "private_key_pem": KEY_PKCS8, "certificate_pem": CERT, "token_cluster": "entra"})
}

pub(crate) fn mi_cred() -> serde_json::Value {
    json!({"kind": "managed_identity", "token_cluster": "imds"})
}

pub(crate) fn federated(assertion: serde_json::Value) -> serde_json::Value {
    json!({"kind": "federated", "tenant_id": "customer", "client_id": "mt-app",
           "token_cluster": "entra", "assertion": assertion})
}

pub(crate) fn err_field(v: serde_json::Value) -> String {
    let e = parse(v).unwrap_err();
    assert!(!e.to_string().contains("MII"), "key material in {e}");
    e.field
}

#[test]
fn valid_config_gets_defaults() {
    let c = parse(base()).unwrap();
    assert_eq!(c.routing_header, DEFAULT_ROUTING_HEADER);
    assert_eq!(c.credentials[0].scope, DEFAULT_SCOPE);
    assert_eq!(c.credentials[0].authority_host, DEFAULT_AUTHORITY_HOST);
    assert_eq!(c.models["gpt-4o"].deployment, "gpt-4o-prod");
    assert_eq!(c.backends[0].credential, 0);
    assert!(c.access_log_properties);
}

#[test]
fn access_log_properties_switch() {
    let mut v = base();
    v["access_log_properties"] = json!(false);
    assert!(!parse(v.clone()).unwrap().access_log_properties);
    v["access_log_properties"] = json!("off");
    assert_eq!(parse(v).unwrap_err().field, "access_log_properties");
}

#[test]
fn unknown_field_is_named() {
    let mut v = base();
    v["credentials"]["main"]["client_sekret"] = json!("x");
    let e = parse(v).unwrap_err();
    assert_eq!(e.field, "credentials.main");
    assert!(e.reason.contains("client_sekret"), "{e}");
}

#[test]
fn wrong_type_is_named() {
    let mut v = base();
    v["token_wait_timeout_ms"] = json!("soon");
    let e = parse(v).unwrap_err();
    assert_eq!(e.field, "token_wait_timeout_ms");
}

#[test]
fn dangling_references_are_named() {
    let mut v = base();
    v["models"]["gpt-4o"]["backend"] = json!("nope");
    assert_eq!(parse(v).unwrap_err().field, "models.gpt-4o.backend");
    let mut v = base();
    v["backends"]["aoai"]["credential"] = json!("nope");
    assert_eq!(parse(v).unwrap_err().field, "backends.aoai.credential");
}

#[test]
fn secrets_are_redacted_in_debug() {
    let c = parse(base()).unwrap();
    let text = format!("{c:?}");
    assert!(!text.contains("\"s\""), "{text}");
    assert!(text.contains("redacted"));
}

#[test]
fn response_headers_to_remove_are_checked_and_include_the_routing_header() {
    let mut v = base();
    v["response_headers_to_remove"] = json!(["x-ms-region", "apim-request-id"]);
    let c = parse(v.clone()).unwrap();
    assert_eq!(
        c.response_headers_to_remove,
        vec![DEFAULT_ROUTING_HEADER, "x-ms-region", "apim-request-id"]
    );
    v["response_headers_to_remove"] = json!(["ok", "Bad Header"]);
    assert_eq!(parse(v).unwrap_err().field, "response_headers_to_remove[1]");
}

#[test]
fn request_headers_to_remove_default_replace_and_checks() {
    let c = parse(base()).unwrap();
    assert_eq!(
        c.request_headers_to_remove,
        vec!["cookie", "proxy-authorization", "ocp-apim-subscription-key"]
    );
    let mut v = base();
    v["request_headers_to_remove"] = json!(["x-internal", "cookie", "x-internal"]);
    assert_eq!(
        parse(v.clone()).unwrap().request_headers_to_remove,
        vec!["x-internal", "cookie"]
    );
    v["request_headers_to_remove"] = json!([]);
    assert!(parse(v.clone())
        .unwrap()
        .request_headers_to_remove
        .is_empty());
    v["request_headers_to_remove"] = json!(["ok", "Cookie"]);
    assert_eq!(
        parse(v.clone()).unwrap_err().field,
        "request_headers_to_remove[1]"
    );
    v["request_headers_to_remove"] = json!(["content-length"]);
    let e = parse(v).unwrap_err();
    assert_eq!(e.field, "request_headers_to_remove[0]");
    assert!(e.reason.contains("needed"), "{e}");
}

#[test]
fn envoy_headers_are_recognised_in_any_case() {
    for name in [
        "x-envoy-retry-on",
        "X-Envoy-Max-Retries",
        "x-envoy-upstream-rq-timeout-ms",
        "x-envoy-internal",
    ] {
        assert!(super::is_envoy_header(name), "{name}");
    }
    for name in [
        "x-envoy-",
        "x-envoy",
        "envoy-retry-on",
        "x-envoyx",
        "x-azure-llm-backend",
        "",
    ] {
        assert!(!super::is_envoy_header(name), "{name}");
    }
}

#[test]
fn bad_hosts_and_ranges() {
    let mut v = base();
    v["backends"]["aoai"]["host"] = json!("evil.com/path");
    assert_eq!(parse(v).unwrap_err().field, "backends.aoai.host");
    let mut v = base();
    v["max_body_bytes"] = json!(0);
    assert_eq!(parse(v).unwrap_err().field, "max_body_bytes");
    let mut v = base();
    v["routing_header"] = json!("X-Upper");
    assert_eq!(parse(v).unwrap_err().field, "routing_header");
    let mut v = base();
    v["backends"]["aoai"]["kind"] = json!("bogus");
    assert_eq!(parse(v).unwrap_err().field, "backends.aoai.kind");
}

#[test]
fn not_json_and_missing_sections() {
    assert!(Config::parse(b"{not json").is_err());
    assert!(Config::parse(b"").is_err());
    let e = Config::parse(b"{}").unwrap_err();
    assert!(e.reason.contains("credentials"), "{e}");
}

#[test]
fn no_secret_in_any_debug_output() {
    let v = with_credentials(json!({
        "sec": {"kind": "client_secret", "tenant_id": "t", "client_id": "c",
                "client_secret": "TOPSECRET-VALUE", "token_cluster": "e"},
        "cert": cert_cred(),
        "app": {"kind": "managed_identity", "endpoint": "app_service", "token_cluster": "id",
                "authority": "localhost:1"},
        "fed": federated(json!({"source": "http", "cluster": "c", "authority": "a", "path": "/", "header_env": "AUTH"})),
    }));
    let c = parse(v.clone()).unwrap();
    let secrets = resolve_secrets(&c, |k| match k {
        "IDENTITY_HEADER" => Some("IDHEADER-VALUE".into()),
        "AUTH" => Some("Bearer ENDPOINT-KEY".into()),
        _ => None,
    })
    .unwrap();
    let key_body: String = KEY_PKCS8.lines().nth(3).unwrap().to_string();
    for text in [
        format!("{c:?}"),
        format!("{secrets:?}"),
        format!("{c:#?}{secrets:#?}"),
    ] {
        for secret in [
            "TOPSECRET",
            "IDHEADER-VALUE",
            "ENDPOINT-KEY",
            "BEGIN PRIVATE",
            &key_body,
        ] {
            assert!(!text.contains(secret), "{secret} in Debug output");
        }
        assert!(text.contains("redacted"));
    }
    let raw: RawConfig = serde_json::from_value(v).unwrap();
    let text = format!("{raw:?}");
    assert!(
        !text.contains("TOPSECRET") && !text.contains("BEGIN PRIVATE"),
        "{text}"
    );
}

#[test]
fn pricing_and_capture_sections() {
    let mut v = base();
    v["models"]["gpt-4o"]["aliases"] = json!(["gpt4"]);
    v["pricing"] = json!({"models": {"gpt-4o": {"input": 2.5, "output": 10}}});
    v["capture"] = json!({"prompt": true, "drop_content_of_roles": ["system"]});
    let c = parse(v.clone()).unwrap();
    let pricing = c.pricing.as_ref().unwrap();
    assert_eq!(pricing.currency, "USD");
    assert_eq!(pricing.price("gpt-4o").map(|p| p.output), Some(10_000_000));
    assert!(c.capture.prompt && !c.capture.answer);
    // Off by default; a price for an alias or an unknown model names the field.
    let plain = parse(base()).unwrap();
    assert!(plain.pricing.is_none() && !plain.capture.prompt && !plain.capture.answer);
    assert!(plain.gen_ai_histograms);
    let mut off = base();
    off["gen_ai_histograms"] = json!(false);
    assert!(!parse(off).unwrap().gen_ai_histograms);
    assert!(!plain.gen_ai_histograms_per_workload);
    assert_eq!(plain.max_workload_series, 200);
    let mut series = base();
    series["gen_ai_histograms_per_workload"] = json!(true);
    series["max_workload_series"] = json!(5000);
    let c = parse(series.clone()).unwrap();
    assert!(c.gen_ai_histograms_per_workload && c.max_workload_series == 5000);
    for bad in [0, 10_001] {
        series["max_workload_series"] = json!(bad);
        assert_eq!(err_field(series.clone()), "max_workload_series");
    }
    v["pricing"] = json!({"models": {"gpt4": {"input": 1, "output": 1}}});
    assert_eq!(err_field(v.clone()), "pricing.models.gpt4");
    v["pricing"] = json!({"models": {"gpt-5": {"input": 1, "output": 1}}});
    assert_eq!(err_field(v.clone()), "pricing.models.gpt-5");
    v["pricing"] = json!({"models": {}, "cost": 1});
    assert!(
        err_field(v.clone()).starts_with("pricing"),
        "{}",
        err_field(v.clone())
    );
    v["pricing"] = json!(null);
    v["capture"] = json!({"max_bytes": 0});
    assert_eq!(err_field(v), "capture.max_bytes");
}

#[test]
fn a_cost_budget_over_a_model_without_a_price_is_refused_naming_it() {
    let mut v = base();
    v["models"]["gpt-4o"]["aliases"] = json!(["gpt4"]);
    v["models"]["mistral"] = json!({"backend": "aoai", "deployment": "mistral-large"});
    v["pricing"] = json!({"models": {"gpt-4o": {"input": 2.5, "output": 10}}});
    v["rate_limits"] = json!({"workloads": {"team-a": {"cost_per_month": 100}}});
    let e = parse(v.clone()).unwrap_err();
    assert_eq!(e.field, "rate_limits.workloads.team-a.cost_per_month");
    assert!(e.to_string().contains("`mistral`"), "{e}");
    // A model's own budget needs only its price; no table at all prices nothing. Limits
    // name models, not aliases (requests are limited under their model's name).
    v["rate_limits"] = json!({"models": {"gpt-4o": {"cost_per_day": 1}}});
    assert!(parse(v.clone()).is_ok());
    v["rate_limits"] = json!({"models": {"gpt4": {"cost_per_day": 1}}});
    assert_eq!(err_field(v.clone()), "rate_limits.models.gpt4");
    v["rate_limits"] = json!({"models": {"mistral": {"cost_per_day": 1}}});
    assert_eq!(
        err_field(v.clone()),
        "rate_limits.models.mistral.cost_per_day"
    );
    v["pricing"]["models"]["mistral"] = json!({"input": 1, "output": 3});
    v["rate_limits"] = json!({"default": {"cost_per_day": 1.5, "cost_per_month": 20}});
    assert!(parse(v.clone()).is_ok());
    v["pricing"] = json!(null);
    assert_eq!(err_field(v.clone()), "rate_limits.default.cost_per_day");
    // The rate limit service's cost budgets need every model's price.
    v["rate_limits"] = json!({"global": {"cluster": "rls", "domain": "t", "cost_domain": "c"}});
    assert_eq!(err_field(v.clone()), "rate_limits.global.cost_domain");
    v["pricing"] = json!({"models": {"gpt-4o": {"input": 2.5, "output": 10}, "mistral": {"input": 1, "output": 3}}});
    assert!(parse(v).is_ok());
}

#[test]
fn guardrails_cross_checks() {
    let cs = json!({"cluster": "content_safety", "host": "cs.cognitiveservices.azure.com", "credential": "main"});
    let mut v = base();
    v["guardrails"] =
        json!({"content_safety": cs, "default": {"prompt": {"prompt_shields": "block"}}});
    let c = parse(v.clone()).unwrap();
    assert!(c.guardrails.unwrap().policy("w").is_some());
    // Prompt checks read the body.
    let mut header = v.clone();
    header["routing_mode"] = json!("header");
    assert_eq!(parse(header).unwrap_err().field, "guardrails");
    // A token for another audience would be refused by Content Safety.
    let mut foundry = v.clone();
    foundry["credentials"]["main"]["scope"] = json!("https://ai.azure.com/.default");
    let e = parse(foundry).unwrap_err();
    assert_eq!(e.field, "guardrails.content_safety.credential");
    assert!(
        e.reason
            .contains("https://cognitiveservices.azure.com/.default"),
        "{e}"
    );
    let mut gov = v.clone();
    gov["credentials"]["main"]["scope"] = json!("https://cognitiveservices.azure.us/.default");
    assert!(parse(gov).is_ok());
    // The key is read from the VM's environment at load.
    let mut keyed = base();
    keyed["guardrails"] = json!({"content_safety": {"cluster": "c", "host": "h.cognitiveservices.azure.com",
                                                     "api_key_env": "CS_KEY"},
                                 "default": {"answer": {"protected_material": "log"}}});
    let g = parse(keyed).unwrap().guardrails.unwrap();
    assert_eq!(
        g.resolve_key(|_| Some(" k ".into())).unwrap(),
        Some("k".into())
    );
    let e = g.resolve_key(|_| None).unwrap_err();
    assert_eq!(e.field, "guardrails.content_safety.api_key_env");
    assert!(g.resolve_key(|_| Some("a\nb".into())).is_err());
}
