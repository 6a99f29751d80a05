//! Issue 28, end to end: the native build (`make native`, src/native) loaded into the real
//! Envoy 1.40 as a dynamic module, with the same plugin configuration and the same stand-ins
//! as the Wasm build: routing and Entra token injection (one fetch for two workers), JWT and
//! API key refusals, a budget's 429, a stream whose usage is charged, a panic answered 500
//! without taking Envoy down, and what the native build refuses at load.
//!
//! Every Envoy here loads `target/release/libazure_llm_filter.so` (or
//! `$AZURE_LLM_FILTER_NATIVE`); the other suites run either build
//! (`AZURE_LLM_FILTER_BUILD=native`, README "Choosing a build").

mod common;

use azure_standin::{EndpointKind, StandIn, StandInConfig};
use common::{client, Cluster, Envoy, EnvoyOptions};
use futures_util::StreamExt;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const HOST: &str = "myresource.openai.azure.com";
const AUDIENCE: &str = "api://llm-gateway";
const KEY: &str = "native-gateway-key-1";

fn plugin_config(standin: &StandIn, rate_limits: Value) -> Value {
    let tenant = standin.tenant_id();
    json!({
        "credentials": common::standin_credentials(&tenant),
        "backends": {"aoai": {"kind": "azure_openai", "host": HOST, "api_version": "2024-10-21", "credential": "main"}},
        "models": {"gpt-4o": {"backend": "aoai", "deployment": "gpt-4o-prod"}},
        "auth": {
            "jwt_providers": {"entra": {
                "issuers": [format!("https://login.microsoftonline.com/{tenant}/v2.0")],
                "audiences": [AUDIENCE],
                "jwks": {"cluster": "entra", "authority": "login.microsoftonline.com",
                         "path": format!("/{tenant}/discovery/v2.0/keys")},
                "tenants": [tenant]
            }},
            "api_keys": [{"sha256": common::hex(&Sha256::digest(KEY.as_bytes())), "workload": "agents"}]
        },
        "rate_limits": rate_limits
    })
}

fn options(standin: &StandIn, plugin: Value) -> EnvoyOptions {
    common::use_native_build();
    let mut o = EnvoyOptions::new(plugin);
    o.clusters = vec![
        Cluster::new("entra", standin.port()),
        Cluster::new("aoai", standin.port()),
    ];
    o.backend_routes = vec!["aoai".into()];
    o
}

fn caller_token(standin: &StandIn, app: &str) -> String {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    standin.sign_token(json!({
        "iss": format!("https://login.microsoftonline.com/{}/v2.0", standin.tenant_id()),
        "aud": AUDIENCE, "azp": app, "tid": standin.tenant_id(), "sub": format!("sp-{app}"),
        "iat": t, "nbf": t - 5, "exp": t + 600, "ver": "2.0"
    }))
}

async fn chat(envoy: &Envoy, headers: &[(&str, String)], body: Value) -> reqwest::Response {
    let mut req = client().post(envoy.url("/v1/chat/completions")).json(&body);
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    req.send().await.expect("request reaches Envoy")
}

fn hello() -> Value {
    json!({"model": "gpt-4o", "max_tokens": 10, "messages": [{"role": "user", "content": "hello"}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_module_loads_routes_and_injects_one_token_for_two_workers() {
    let standin = StandIn::start(StandInConfig::default()).await.unwrap();
    let mut o = options(&standin, plugin_config(&standin, json!({})));
    o.concurrency = 2;
    let envoy = Envoy::start(o).await;
    assert!(
        envoy
            .logs()
            .contains("Dynamic module ABI version v0.2.0 matched."),
        "Envoy accepted the module's ABI version: {}",
        envoy.logs()
    );
    assert!(!envoy.config_yaml().contains("envoy.filters.http.wasm"));

    // A burst over both workers: every request waits for the same first token.
    let mut calls = Vec::new();
    for _ in 0..40 {
        let envoy_url = envoy.url("/v1/chat/completions");
        calls.push(tokio::spawn(async move {
            client()
                .post(envoy_url)
                .header("api-key", KEY)
                .header("x-azure-llm-backend", "somewhere-else")
                .json(&hello())
                .send()
                .await
                .map(|r| r.status().as_u16())
        }));
    }
    for c in calls {
        assert_eq!(c.await.unwrap().unwrap(), 200, "{}", envoy.logs());
    }
    assert_eq!(
        standin.count(EndpointKind::Token),
        1,
        "one Entra fetch serves both workers (shared token slot, single flight)"
    );
    let seen = standin.requests_of(EndpointKind::DataPlane);
    assert_eq!(seen.len(), 40);
    let first = &seen[0];
    assert_eq!(
        first.path,
        "/openai/deployments/gpt-4o-prod/chat/completions"
    );
    assert!(first.query.contains("api-version=2024-10-21"));
    // The stand-in only answered because the token verified; the caller's credentials never
    // left Envoy.
    let auth = first.header("authorization").unwrap_or_default();
    assert!(auth.starts_with("Bearer ey"), "{auth}");
    assert!(first.header("api-key").is_none());
}

#[tokio::test]
async fn jwt_and_api_key_callers_are_checked_and_refusals_reach_nothing() {
    let standin = StandIn::start(StandInConfig::default()).await.unwrap();
    let envoy = Envoy::start(options(&standin, plugin_config(&standin, json!({})))).await;
    // The JWKS comes through a main-thread callout right after start.
    let token = caller_token(&standin, "app-a");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = chat(
            &envoy,
            &[("authorization", format!("Bearer {token}"))],
            hello(),
        )
        .await
        .status();
        if status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "JWKS never loaded: {}",
            envoy.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let resp = chat(&envoy, &[("api-key", KEY.into())], hello()).await;
    assert_eq!(resp.status(), 200);
    standin.clear_requests();

    let forged = {
        let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
        parts[2] = "AAAA".into();
        parts.join(".")
    };
    for headers in [
        vec![],
        vec![("api-key", "not-the-key".to_string())],
        vec![("authorization", format!("Bearer {forged}"))],
        vec![("authorization", "Bearer not.a.jwt".to_string())],
    ] {
        let resp = chat(&envoy, &headers, hello()).await;
        assert_eq!(resp.status(), 401, "{headers:?}");
        let body: Value = resp.json().await.unwrap();
        assert!(body["error"]["message"].is_string(), "{body}");
    }
    assert_eq!(
        standin.count(EndpointKind::DataPlane),
        0,
        "refusals reach nothing"
    );
}

#[tokio::test]
async fn a_budget_runs_out_with_a_429() {
    let standin = StandIn::start(StandInConfig::default()).await.unwrap();
    let envoy = Envoy::start(options(
        &standin,
        plugin_config(
            &standin,
            json!({"workloads": {"agents": {"requests_per_minute": 2}}}),
        ),
    ))
    .await;
    for _ in 0..2 {
        assert_eq!(
            chat(&envoy, &[("api-key", KEY.into())], hello())
                .await
                .status(),
            200
        );
    }
    let refused = chat(&envoy, &[("api-key", KEY.into())], hello()).await;
    assert_eq!(refused.status(), 429);
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after));
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded", "{body}");
    assert_eq!(standin.count(EndpointKind::DataPlane), 2);
}

#[tokio::test]
async fn a_stream_passes_whole_and_its_usage_is_charged() {
    let standin = StandIn::start(StandInConfig::default()).await.unwrap();
    // Room for the first stream's estimate; what it used is charged, so the budget runs out
    // on usage, not on request count.
    let envoy = Envoy::start(options(
        &standin,
        plugin_config(
            &standin,
            json!({"workloads": {"agents": {"tokens_per_minute": 200}}}),
        ),
    ))
    .await;
    let body = json!({"model": "gpt-4o", "stream": true, "max_tokens": 20,
                      "messages": [{"role": "user", "content": "stream please"}]});
    let mut streams = 0;
    let mut refused = false;
    for _ in 0..40 {
        let resp = chat(&envoy, &[("api-key", KEY.into())], body.clone()).await;
        if resp.status() == 429 {
            refused = true;
            break;
        }
        assert_eq!(resp.status(), 200);
        assert!(resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"));
        let mut text = Vec::new();
        let mut chunks = resp.bytes_stream();
        while let Some(chunk) = chunks.next().await {
            text.extend_from_slice(&chunk.unwrap());
        }
        let text = String::from_utf8(text).unwrap();
        assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
        assert!(
            !text.contains("\"usage\":{"),
            "the usage chunk the filter asked for is not the caller's: {text}"
        );
        streams += 1;
    }
    assert!(refused, "the streams' usage used up the budget");
    assert!(streams >= 1);
    let sent = standin.requests_of(EndpointKind::DataPlane);
    assert_eq!(sent.len(), streams);
    assert_eq!(
        sent[0].body_json().unwrap()["stream_options"]["include_usage"],
        true
    );
}

#[tokio::test]
async fn a_panic_is_a_500_for_its_request_and_envoy_serves_on() {
    let standin = StandIn::start(StandInConfig::default()).await.unwrap();
    let mut o = options(&standin, plugin_config(&standin, json!({})));
    o.host_env = vec![("AZURE_LLM_FILTER_NATIVE_PANIC_PROBE".into(), "1".into())];
    let envoy = Envoy::start(o).await;
    let pid = envoy.pid();
    let resp = chat(
        &envoy,
        &[
            ("api-key", KEY.into()),
            ("x-azure-llm-panic-probe", "1".into()),
        ],
        hello(),
    )
    .await;
    assert_eq!(resp.status(), 500);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "internal_error", "{body}");
    assert!(envoy.logs().contains("panic probe"), "the panic is logged");
    // The same Envoy, the same worker: the next requests are served.
    for _ in 0..3 {
        assert_eq!(
            chat(&envoy, &[("api-key", KEY.into())], hello())
                .await
                .status(),
            200
        );
    }
    assert_eq!(envoy.pid(), pid);
    assert_eq!(standin.count(EndpointKind::DataPlane), 3);
}

#[tokio::test]
async fn what_the_native_build_cannot_do_is_refused_at_load_naming_the_field() {
    let standin = StandIn::start(StandInConfig::default()).await.unwrap();
    let mut plugin = plugin_config(&standin, json!({}));
    plugin["rate_limits"] =
        json!({"global": {"cluster": "ratelimit", "domain": "llm", "timeout_ms": 200}});
    let mut o = options(&standin, plugin);
    o.clusters.push(Cluster::grpc("ratelimit", standin.port()));
    let logs = Envoy::start_expect_failure(o).await;
    assert!(logs.contains("rate_limits.global"), "{logs}");

    let mut plugin = plugin_config(&standin, json!({}));
    plugin["models"]["gpt-4o"]["deployment"] = json!(42);
    let logs = Envoy::start_expect_failure(options(&standin, plugin)).await;
    assert!(logs.contains("models.gpt-4o"), "{logs}");
}

/// The line of a Prometheus scrape for `metric` whose labels include every one of `labels`.
fn prometheus_value(scrape: &str, metric: &str, labels: &[&str]) -> Option<f64> {
    scrape.lines().find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let (name, rest) = series.split_once('{').unwrap_or((series, ""));
        (name == metric && labels.iter().all(|p| rest.contains(p)))
            .then(|| value.parse().ok())
            .flatten()
    })
}

/// The native build's metrics are the Wasm build's: the same labels and values (counters, the
/// token-expiry gauge, the GenAI histograms with the convention's buckets); in /stats the same
/// names less the space that ends each label value; in Prometheus the names carry Envoy's
/// `envoy_wasmcustom_` prefix (only a Wasm filter registers `wasmcustom` as a namespace Envoy
/// strips; README "Choosing a build" gives the relabel rule). Stats are defined
/// as labelled families when the configuration loads (src/native/metrics.rs); before that the
/// native build exported none, and this test failed at its first read.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_filters_counters_gauge_and_histograms_are_envoy_stats() {
    let standin = StandIn::start(StandInConfig::default()).await.unwrap();
    let mut o = options(&standin, plugin_config(&standin, json!({})));
    o.concurrency = 2;
    let envoy = Envoy::start(o).await;
    for _ in 0..3 {
        let r = chat(&envoy, &[("api-key", KEY.into())], hello()).await;
        assert_eq!(r.status(), 200, "{}", envoy.logs());
        r.bytes().await.unwrap();
    }
    let r = chat(&envoy, &[("api-key", "wrong".into())], hello()).await;
    assert_eq!(r.status(), 401);

    // /stats, through the harness's reader (the Wasm names, spaces dropped for this build).
    let deadline = Instant::now() + Duration::from_secs(5);
    let routed = loop {
        let routed = envoy
            .stat(&format!(
                "wasmcustom.{}",
                azure_llm_filter::metrics::requests("routed")
            ))
            .await;
        if routed == Some(3) || Instant::now() > deadline {
            break routed;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(routed, Some(3), "{}", envoy.logs());
    assert_eq!(
        envoy
            .stat("wasmcustom.azure_llm.token_fetches.credential.main .result.ok ")
            .await,
        Some(1),
        "a root context's counter (its token fetch) is counted too"
    );
    let expires = envoy
        .stat("wasmcustom.azure_llm.token_expires_in_seconds.credential.main ")
        .await
        .expect("the token-expiry gauge");
    assert!(expires > 60, "{expires}");

    // Prometheus: the Wasm build's names and labels, histograms with their buckets.
    let scrape = client()
        .get(envoy.admin_url("/stats/prometheus"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let v = |metric: &str, labels: &[&str]| {
        let metric = format!("envoy_wasmcustom_{metric}");
        prometheus_value(&scrape, &metric, labels)
            .unwrap_or_else(|| panic!("no {metric} {labels:?} in\n{scrape}"))
    };
    assert_eq!(v("azure_llm_requests", &[r#"outcome="routed""#]), 3.0);
    assert_eq!(
        v(
            "azure_llm_auth_rejections",
            &[r#"reason="invalid_api_key""#]
        ),
        1.0
    );
    let prompt = v(
        "azure_llm_tokens",
        &[
            r#"workload="agents""#,
            r#"model="gpt-4o""#,
            r#"backend="aoai""#,
            r#"kind="prompt""#,
        ],
    );
    assert!(prompt > 0.0, "{prompt}");
    let input = [
        r#"gen_ai_operation_name="chat""#,
        r#"gen_ai_provider_name="azure.ai.openai""#,
        r#"gen_ai_request_model="gpt-4o""#,
        r#"backend="aoai""#,
        r#"gen_ai_token_type="input""#,
    ];
    assert_eq!(v("gen_ai_client_token_usage_count", &input), 3.0);
    let mut le_64 = input.to_vec();
    le_64.push(r#"le="64""#);
    assert_eq!(
        v("gen_ai_client_token_usage_bucket", &le_64),
        3.0,
        "the convention's boundaries (histogram_bucket_settings match the native names)"
    );
    assert_eq!(
        v(
            "gen_ai_server_request_duration_milliseconds_count",
            &input[..4]
        ),
        3.0
    );
}
