//! Issue 15, end to end: the official Python SDKs (`openai`, `anthropic`, `azure-ai-inference`,
//! pinned in tests/sdk/requirements.txt, installed into .venv by `make sdk`) call the gateway
//! unchanged — base URL, key or token, nothing else — through a real Envoy and the filter, to
//! the stand-in Azure. Each case (tests/sdk/cases.py) reports what the SDK returned; the test
//! checks that and the request that reached the stand-in (path, host, Entra token instead of
//! the caller's credential, body rewrites).
//!
//! One Envoy per group of cases, one Python process per group (each process costs ~0.5-1 s).

mod common;

use azure_standin::{Deployment, EndpointKind, Fault, RecordedRequest, StandIn, StandInConfig};
use common::{Cluster, Envoy, EnvoyOptions};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const AUDIENCE: &str = "api://llm-gateway";
const GATEWAY_KEY: &str = "sdk-gateway-key-0123456789";
const KEY_WORKLOAD: &str = "sdk-key-workload";
const JWT_WORKLOAD: &str = "sdk-jwt-app";
/// Every workload's daily token budget in these tests.
const DAY_BUDGET: u64 = 100_000_000;
/// The stand-in's answer; C = 12 words unless `max_tokens` is smaller.
const ANSWER: &str = "This is a deterministic answer from the Azure stand-in for your tests.";

/// The Python of the project's venv, with the SDKs (`make sdk`); `SDK_PYTHON` overrides.
fn python() -> PathBuf {
    let p = std::env::var_os("SDK_PYTHON")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| common::workspace_root().join(".venv/bin/python"));
    assert!(
        p.is_file(),
        "no Python with the SDKs at {}: run `make sdk` (or `make test`), or set SDK_PYTHON",
        p.display()
    );
    p
}

struct Gateway {
    standin: StandIn,
    envoy: Envoy,
    jwt: String,
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn standin_config() -> StandInConfig {
    let mut cfg = StandInConfig {
        // Azure's front door may hold a stream's end a moment after its last event; the
        // OpenAI SDK stops reading at `data: [DONE]` and closes before it arrives (the race
        // that had its streams charged their estimate, issue 23).
        end_of_body_delay_ms: 150,
        ..StandInConfig::default()
    };
    for (name, model, format) in [
        ("gpt-35-turbo-instruct", "gpt-35-turbo-instruct", "OpenAI"),
        ("dall-e-3", "dall-e-3", "OpenAI"),
        ("tts", "tts", "OpenAI"),
        ("whisper", "whisper", "OpenAI"),
        ("mistral-large", "mistral-large", "NonOpenAI"),
    ] {
        cfg.deployments.push(Deployment::new(name, model, format));
    }
    cfg
}

fn plugin_config(standin: &StandIn) -> Value {
    let tenant = standin.tenant_id();
    json!({
        "credentials": common::standin_credentials(&tenant),
        "backends": {
            // A preview api-version: the dated Responses API needs 2025-03-01-preview or later.
            "aoai": {"kind": "azure_openai", "host": "eastus-res.openai.azure.com", "api_version": "2025-04-01-preview", "credential": "main"},
            "aoai-v1": {"kind": "azure_openai_v1", "host": "westeu-res.openai.azure.com", "credential": "main"},
            "foundry": {"kind": "foundry_models", "host": "contoso.services.ai.azure.com", "credential": "main"},
            "claude": {"kind": "foundry_anthropic", "host": "contoso.services.ai.azure.com", "credential": "main"}
        },
        "models": {
            "gpt-4o": {"backend": "aoai", "deployment": "gpt-4o-prod", "version": "2024-11-20"},
            "gpt-4o-v1": {"backend": "aoai-v1", "deployment": "gpt-4o-prod"},
            "embeddings": {"backend": "aoai", "deployment": "text-embedding-3-small"},
            "instruct": {"backend": "aoai", "deployment": "gpt-35-turbo-instruct"},
            "images": {"backend": "aoai", "deployment": "dall-e-3"},
            "speech": {"backend": "aoai", "deployment": "tts"},
            "whisper": {"backend": "aoai", "deployment": "whisper"},
            "mistral": {"backend": "foundry", "deployment": "mistral-large"},
            "claude-opus-4-5": {"backend": "claude", "deployment": "claude-opus-4-5"}
        },
        "auth": {
            "jwt_providers": {"entra": {
                "issuers": [azure_standin::v2_issuer(&tenant)],
                "audiences": [AUDIENCE],
                "jwks": {"inline": standin.jwks_json()}
            }},
            "api_keys": [{"sha256": common::hex(&Sha256::digest(GATEWAY_KEY.as_bytes())), "workload": KEY_WORKLOAD}]
        },
        // A budget far from its edge: every routed request is reserved and settled, so the
        // tests can see how each was charged (access log `charge=`) and the counter after it.
        "rate_limits": {"default": {"tokens_per_day": DAY_BUDGET}}
    })
}

async fn gateway() -> Gateway {
    let standin = StandIn::start(standin_config()).await.unwrap();
    let mut o = EnvoyOptions::new(plugin_config(&standin));
    for name in ["entra", "aoai", "aoai-v1", "foundry", "claude"] {
        o.clusters.push(Cluster::new(name, standin.port()));
    }
    o.backend_routes = vec![
        "aoai".into(),
        "aoai-v1".into(),
        "foundry".into(),
        "claude".into(),
    ];
    let envoy = Envoy::start(o).await;
    let t = now_s();
    let jwt = standin.sign_token(json!({
        "iss": azure_standin::v2_issuer(&standin.tenant_id()),
        "aud": AUDIENCE,
        "azp": JWT_WORKLOAD,
        "tid": standin.tenant_id(),
        "sub": "sp-sdk",
        "iat": t, "nbf": t - 5, "exp": t + 3600,
        "ver": "2.0"
    }));
    Gateway {
        standin,
        envoy,
        jwt,
    }
}

/// How the SDK cases run: over HTTP/2 (openai, anthropic), with the counters probed after
/// each case (`assert_charges`).
#[derive(Clone, Copy, Default)]
struct Run {
    http2: bool,
    counters: bool,
}

/// Runs SDK cases in one Python process; their JSON lines by case name.
async fn run_cases(gw: &Gateway, cases: &[&str]) -> HashMap<String, Value> {
    run_cases_as(gw, cases, Run::default()).await
}

async fn run_cases_as(gw: &Gateway, cases: &[&str], run: Run) -> HashMap<String, Value> {
    let script = common::workspace_root().join("tests/sdk/cases.py");
    let mut cmd = tokio::process::Command::new(python());
    cmd.arg(&script)
        .args(cases)
        .env("SDK_HTTP2", if run.http2 { "1" } else { "0" })
        .env("SDK_COUNTERS", if run.counters { "1" } else { "0" })
        .env("GATEWAY", gw.envoy.url("").trim_end_matches('/'))
        .env("GATEWAY_API_KEY", GATEWAY_KEY)
        .env("GATEWAY_JWT", &gw.jwt)
        // The SDKs read these; none may point the callers elsewhere.
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_BASE_URL")
        .env_remove("ANTHROPIC_API_KEY")
        .env_remove("ANTHROPIC_BASE_URL")
        .env_remove("AZURE_OPENAI_ENDPOINT")
        .env_remove("AZURE_OPENAI_API_KEY")
        .env("NO_PROXY", "*")
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .kill_on_drop(true);
    let started = Instant::now();
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("SDK cases did not finish in 120 s")
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "sdk cases {cases:?}: {:.1} s\n{stdout}{stderr}",
        started.elapsed().as_secs_f64()
    );
    assert!(out.status.success(), "cases.py failed: {stderr}");
    let results: HashMap<String, Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|v| (v["case"].as_str().unwrap_or_default().to_string(), v))
        .collect();
    for c in cases {
        assert!(
            results.contains_key(*c),
            "no result for {c}: {stdout}{stderr}"
        );
    }
    results
}

/// The case's result, or a failure showing what the SDK raised.
fn ok<'a>(results: &'a HashMap<String, Value>, case: &str) -> &'a Value {
    let line = &results[case];
    assert!(line.get("result").is_some(), "{case} raised: {line:#}");
    &line["result"]
}

/// The case's exception: (class, status, body).
fn raised<'a>(results: &'a HashMap<String, Value>, case: &str) -> (&'a str, u64, &'a Value) {
    let line = &results[case];
    assert!(
        line.get("exception").is_some(),
        "{case} did not raise: {line:#}"
    );
    (
        line["exception"].as_str().unwrap_or_default(),
        line["status"].as_u64().unwrap_or(0),
        &line["body"],
    )
}

/// The data-plane requests that carried the case's prompt (its name is the first word).
fn upstream_all(gw: &Gateway, case: &str) -> Vec<RecordedRequest> {
    let needles = [format!("\"{case} "), format!("\"{case}.wav")];
    gw.standin
        .requests_of(EndpointKind::DataPlane)
        .into_iter()
        .filter(|r| {
            let body = String::from_utf8_lossy(&r.body);
            needles.iter().any(|n| body.contains(n.as_str()))
        })
        .collect()
}

/// The one data-plane request of a case, checked for what must hold on every request that
/// leaves the gateway: the stand-in accepted the filter's Entra token, and no caller
/// credential went along.
fn upstream(gw: &Gateway, case: &str) -> RecordedRequest {
    let mut found = upstream_all(gw, case);
    assert_eq!(found.len(), 1, "{case}: upstream requests {found:#?}");
    let r = found.remove(0);
    assert_left_clean(gw, case, &r);
    r
}

fn assert_left_clean(gw: &Gateway, case: &str, r: &RecordedRequest) {
    let auth = r.header("authorization").unwrap_or_default();
    let token = auth.strip_prefix("Bearer ").unwrap_or_default();
    assert!(
        gw.standin.verify_access_token(token).is_ok(),
        "{case}: upstream authorization is not the stand-in's Entra token"
    );
    assert_ne!(token, gw.jwt, "{case}: the caller's JWT was forwarded");
    for name in ["api-key", "x-api-key"] {
        assert_eq!(r.header(name), None, "{case}: {name} reached Azure");
    }
    let all = format!("{:?}", r.headers);
    assert!(
        !all.contains(GATEWAY_KEY),
        "{case}: the gateway key reached Azure"
    );
}

fn usage(v: &Value) -> (u64, u64, u64) {
    let n = |k: &[&str]| {
        k.iter()
            .find_map(|k| v.get(*k).and_then(Value::as_u64))
            .unwrap_or(u64::MAX)
    };
    (
        n(&["prompt_tokens", "input_tokens"]),
        n(&["completion_tokens", "output_tokens"]),
        n(&["total_tokens"]),
    )
}

/// Chat answers: the stand-in's text and usage for a two-word prompt (P = 3 + 2, C = 12).
fn assert_full_chat(case: &str, v: &Value) {
    assert_eq!(v["content"], ANSWER, "{case}: {v}");
    assert_eq!(usage(&v["usage"]), (5, 12, 17), "{case}: {v}");
}

/// A stream the caller did not ask usage for: Azure's own prompt-filter chunk (no choices,
/// Azure OpenAI only), then only chunks with choices; no usage anywhere, although the filter
/// asked Azure for it (and counted it).
fn assert_stream_without_usage(case: &str, v: &Value, azure_filter_chunk: bool) {
    let chunks: Vec<&str> = v["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    let skip = usize::from(azure_filter_chunk);
    if azure_filter_chunk {
        assert_eq!(chunks.first(), Some(&"empty"), "{case}: {chunks:?}");
    }
    assert!(chunks.len() > skip, "{case}: {chunks:?}");
    assert!(
        chunks[skip..].iter().all(|c| *c == "choice"),
        "{case}: a chunk the caller did not ask for: {chunks:?}"
    );
    assert!(v["usage"].is_null(), "{case}: {v}");
}

fn include_usage_sent(r: &RecordedRequest) -> bool {
    r.body_json().unwrap()["stream_options"]["include_usage"] == json!(true)
}

/// The tokens the filter charged, per workload, from its metrics.
async fn charged_completion_tokens(gw: &Gateway, workload: &str) -> u64 {
    let stats = common::client()
        .get(gw.envoy.admin_url("/stats?filter=azure_llm"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    stats
        .lines()
        // Label values end with a space in stat names (src/metrics.rs).
        .filter(|l| {
            l.contains(&format!(".workload.{workload} ")) && l.contains(".kind.completion ")
        })
        .filter_map(|l| l.rsplit(": ").next()?.trim().parse::<u64>().ok())
        .sum()
}

/// The workload a case calls as (the cases that send an Entra token name it).
fn workload_of(case: &str) -> &'static str {
    if case.contains("jwt") {
        "jwt"
    } else {
        "key"
    }
}

/// What the workload's counter held before the probe that followed a case (probes are
/// charged their own usage: `probe_total`).
fn used_before_probe(line: &Value, workload: &str) -> (u64, u64) {
    let c = &line["counters"][workload];
    assert_eq!(c["status"], 200, "probe: {line}");
    let remaining = c["remaining"].as_u64().unwrap();
    let probe_estimate = c["probe_bytes"].as_u64().unwrap().div_ceil(4) + 1;
    (
        DAY_BUDGET - remaining - probe_estimate,
        c["probe_total"].as_u64().unwrap(),
    )
}

/// The access-log fields of the request Envoy sent upstream with this `x-request-id`.
fn access_log_of(logs: &str, request_id: &str) -> HashMap<String, String> {
    let needle = format!("request_id={request_id}");
    let line = logs
        .lines()
        .find(|l| l.split_whitespace().any(|w| w == needle))
        .unwrap_or_else(|| panic!("no access log line with {needle}"));
    line.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// For every case run with `Run { counters: true }`: how its request was charged (the access
/// log's `charge`) and what its workload's counter holds afterwards. An answer with usage is
/// charged exactly its usage, however the SDK closed the connection after its end (the
/// OpenAI SDK closes at `data: [DONE]`, before the end of the body reaches Envoy); an answer
/// without usage (audio, images) its estimate; a request the gateway refused or answered
/// itself nothing.
async fn assert_charges(gw: &Gateway, results: &HashMap<String, Value>, cases: &[&str]) {
    // Envoy flushes its access log within a second: wait for the last request's line.
    let ids: Vec<String> = cases
        .iter()
        .flat_map(|c| upstream_all(gw, c))
        .filter_map(|u| u.header("x-request-id").map(str::to_string))
        .collect();
    let mut logs = gw.envoy.logs();
    for _ in 0..50 {
        if ids
            .iter()
            .all(|id| logs.contains(&format!("request_id={id}")))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        logs = gw.envoy.logs();
    }
    let mut before = &results["_before"];
    let mut charged_usage = 0;
    for case in cases {
        let line = &results[*case];
        let mut charged = HashMap::new();
        for w in ["key", "jwt"] {
            let (prev, probe) = used_before_probe(before, w);
            let (now, _) = used_before_probe(line, w);
            charged.insert(w, now - prev - probe);
        }
        let upstream = upstream_all(gw, case);
        let other = if workload_of(case) == "key" {
            "jwt"
        } else {
            "key"
        };
        assert_eq!(charged[other], 0, "{case}: charged to the other workload");
        let mine = charged[workload_of(case)];
        match upstream.as_slice() {
            [] => assert_eq!(mine, 0, "{case}: nothing sent, nothing charged"),
            [u] => {
                let id = u.header("x-request-id").expect("x-request-id");
                let log = access_log_of(&logs, id);
                let tokens = |k: &str| log.get(k).and_then(|v| v.parse::<u64>().ok());
                // An embeddings answer reports no completion tokens: its usage is its prompt.
                let prompt = tokens("prompt_tokens");
                let completion = prompt.map(|_| tokens("completion_tokens").unwrap_or(0));
                match (prompt, completion) {
                    (Some(p), Some(c)) => {
                        assert_eq!(
                            (log["charge"].as_str(), mine),
                            ("usage", p + c),
                            "{case}: charged its usage ({p} + {c}), the counter holds it; access log {log:?}"
                        );
                        charged_usage += 1;
                    }
                    _ => {
                        assert_eq!(log["charge"], "estimate", "{case}: {log:?}");
                        assert!(
                            mine > 0,
                            "{case}: an answer without usage is charged its estimate"
                        );
                    }
                }
            }
            more => panic!("{case}: {} upstream requests", more.len()),
        }
        before = line;
    }
    assert!(charged_usage > 0, "no case was charged its usage");
}

const OPENAI_CASES: &[&str] = &[
    "oai_chat",
    "oai_chat_v1",
    "oai_chat_stream",
    "oai_chat_stream_usage",
    "oai_chat_stream_no_usage",
    "oai_completions",
    "oai_completions_stream",
    "oai_embeddings",
    "oai_responses",
    "oai_responses_stream",
    "oai_images",
    "oai_speech",
    "oai_transcription",
    "oai_translation",
    "oai_openai_v1_base",
    "oai_models",
    "oai_model_unknown",
    "oai_unknown_model",
    "oai_jwt_chat",
    "oai_bad_key",
    "oai_stored_response",
    "oai_stored_chat",
    "oai_files",
    "conn_deployment_in_path",
    "conn_model_in_body",
    "conn_deployments",
    "az_chat",
    "az_chat_stream",
    "az_embeddings",
    "az_responses",
    "az_responses_stream",
    "az_models",
    "az_jwt_chat",
];

/// `openai`: `OpenAI(base_url=...)` on every OpenAI API of the inbound table, JSON and
/// streamed, with the gateway key (sent as `Authorization: Bearer`) and with an Entra token;
/// `AzureOpenAI(azure_endpoint=..., api_version=...)` likewise, Responses included; discovery;
/// the Foundry gateway-connection forms; refusals as the SDK's own exceptions.
#[tokio::test]
async fn openai_sdk_every_api() {
    openai_every_api(false).await;
}

/// The same over HTTP/2 (`DefaultHttpxClient(http2=True)`): the SDK then resets the stream
/// at `data: [DONE]` instead of closing the connection.
#[tokio::test]
async fn openai_sdk_every_api_http2() {
    openai_every_api(true).await;
}

/// The probes' own completion tokens (1 each, one per workload before and after each case).
fn probe_completions(cases: &[&str]) -> u64 {
    cases.len() as u64 + 1
}

async fn openai_every_api(http2: bool) {
    let gw = gateway().await;
    let run = Run {
        http2,
        counters: true,
    };
    let r = run_cases_as(&gw, OPENAI_CASES, run).await;
    assert_charges(&gw, &r, OPENAI_CASES).await;
    let dated = |case: &str, deployment: &str, op: &str| {
        let u = upstream(&gw, case);
        assert_eq!(
            u.path,
            format!("/openai/deployments/{deployment}/{op}"),
            "{case}"
        );
        assert_eq!(
            u.header("host"),
            Some("eastus-res.openai.azure.com"),
            "{case}"
        );
        assert_eq!(u.query, "api-version=2025-04-01-preview", "{case}");
        u
    };

    // Chat completions, JSON: dated backend, and v1 (deployment into the body).
    assert_full_chat("oai_chat", ok(&r, "oai_chat"));
    dated("oai_chat", "gpt-4o-prod", "chat/completions");
    assert_full_chat("oai_chat_v1", ok(&r, "oai_chat_v1"));
    let u = upstream(&gw, "oai_chat_v1");
    assert_eq!(u.path, "/openai/v1/chat/completions");
    assert_eq!(u.header("host"), Some("westeu-res.openai.azure.com"));
    assert_eq!(u.body_json().unwrap()["model"], "gpt-4o-prod");

    // Streams: usage asked of Azure always, shown only to callers who asked.
    let v = ok(&r, "oai_chat_stream");
    assert_eq!(v["content"], ANSWER);
    assert_stream_without_usage("oai_chat_stream", v, true);
    assert!(include_usage_sent(&dated(
        "oai_chat_stream",
        "gpt-4o-prod",
        "chat/completions"
    )));
    let v = ok(&r, "oai_chat_stream_usage");
    assert_eq!(usage(&v["usage"]), (5, 12, 17));
    assert_eq!(
        v["chunks"].as_array().unwrap().last().unwrap(),
        "empty+usage"
    );
    let v = ok(&r, "oai_chat_stream_no_usage");
    assert_eq!(v["content"], ANSWER);
    assert_stream_without_usage("oai_chat_stream_no_usage", v, true);
    assert!(include_usage_sent(&upstream(
        &gw,
        "oai_chat_stream_no_usage"
    )));

    // Legacy completions, JSON and streamed.
    let v = ok(&r, "oai_completions");
    assert_eq!(v["text"], "This is a");
    assert_eq!(usage(&v["usage"]), (5, 3, 8));
    dated("oai_completions", "gpt-35-turbo-instruct", "completions");
    let v = ok(&r, "oai_completions_stream");
    assert_eq!(v["text"], "This is a");
    assert!(
        v["chunks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c == "choice"),
        "{v}"
    );
    assert!(include_usage_sent(&dated(
        "oai_completions_stream",
        "gpt-35-turbo-instruct",
        "completions"
    )));

    // Embeddings, Responses (dated: model in the body; v1 streamed), images, audio.
    let v = ok(&r, "oai_embeddings");
    assert_eq!((v["count"].as_u64(), usage(&v["usage"]).0), (Some(1), 3));
    dated("oai_embeddings", "text-embedding-3-small", "embeddings");
    let v = ok(&r, "oai_responses");
    assert_eq!(v["output_text"], ANSWER);
    assert_eq!(usage(&v["usage"]), (5, 12, 17));
    let u = upstream(&gw, "oai_responses");
    assert_eq!(
        (u.path.as_str(), u.query.as_str()),
        ("/openai/responses", "api-version=2025-04-01-preview")
    );
    assert_eq!(u.body_json().unwrap()["model"], "gpt-4o-prod");
    let v = ok(&r, "oai_responses_stream");
    assert_eq!(v["text"], ANSWER);
    assert_eq!(usage(&v["usage"]), (5, 12, 17));
    assert_eq!(
        v["events"].as_array().unwrap().last().unwrap(),
        "response.completed"
    );
    assert_eq!(
        upstream(&gw, "oai_responses_stream").path,
        "/openai/v1/responses"
    );
    assert_eq!(ok(&r, "oai_images")["count"], 1);
    dated("oai_images", "dall-e-3", "images/generations");
    assert!(ok(&r, "oai_speech")["bytes"].as_u64().unwrap() > 0);
    dated("oai_speech", "tts", "audio/speech");
    assert!(!ok(&r, "oai_transcription")["text"]
        .as_str()
        .unwrap()
        .is_empty());
    dated("oai_transcription", "whisper", "audio/transcriptions");
    assert!(!ok(&r, "oai_translation")["text"]
        .as_str()
        .unwrap()
        .is_empty());
    dated("oai_translation", "whisper", "audio/translations");
    assert_full_chat("oai_openai_v1_base", ok(&r, "oai_openai_v1_base"));
    let u = upstream(&gw, "oai_openai_v1_base");
    assert_eq!(u.path, "/openai/v1/chat/completions");
    assert_eq!(u.body_json().unwrap()["model"], "gpt-4o-prod");

    // Discovery, answered by the gateway itself.
    let v = ok(&r, "oai_models");
    let ids: Vec<&str> = v["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "claude-opus-4-5",
            "embeddings",
            "gpt-4o",
            "gpt-4o-v1",
            "images",
            "instruct",
            "mistral",
            "speech",
            "whisper"
        ]
    );
    assert_eq!(v["retrieved"], "gpt-4o");
    assert_eq!(ok(&r, "az_models")["ids"], v["ids"]);
    let (class, status, body) = raised(&r, "oai_model_unknown");
    assert_eq!(
        (class, status, &body["code"]),
        ("NotFoundError", 404, &json!("model_not_found"))
    );
    let v = ok(&r, "conn_deployments");
    assert!(
        v["names"].as_array().unwrap().contains(&json!("gpt-4o")),
        "{v}"
    );
    assert_eq!(v["one"]["properties"]["model"]["name"], "gpt-4o");

    // Refusals, as the SDK's own exceptions, and nothing reached Azure.
    let (class, status, body) = raised(&r, "oai_unknown_model");
    assert_eq!(
        (class, status, &body["code"]),
        ("NotFoundError", 404, &json!("model_not_found"))
    );
    let (class, status, body) = raised(&r, "oai_bad_key");
    assert_eq!(
        (class, status, &body["code"]),
        ("AuthenticationError", 401, &json!("invalid_api_key"))
    );
    for case in ["oai_stored_chat", "oai_files"] {
        let (class, status, body) = raised(&r, case);
        assert_eq!(
            (class, status, &body["code"]),
            ("BadRequestError", 400, &json!("model_required")),
            "{case}"
        );
    }
    let (class, status, body) = raised(&r, "oai_stored_response");
    assert_eq!(
        (class, status, &body["code"]),
        ("BadRequestError", 400, &json!("model_required"))
    );
    for case in ["oai_unknown_model", "oai_bad_key"] {
        assert!(upstream_all(&gw, case).is_empty(), "{case} reached Azure");
    }

    // An Entra token as OpenAI(api_key=...) and AzureOpenAI(azure_ad_token=...).
    assert_full_chat("oai_jwt_chat", ok(&r, "oai_jwt_chat"));
    dated("oai_jwt_chat", "gpt-4o-prod", "chat/completions");
    assert_full_chat("az_jwt_chat", ok(&r, "az_jwt_chat"));
    dated("az_jwt_chat", "gpt-4o-prod", "chat/completions");

    // Foundry Agent Service gateway connections.
    for case in ["conn_deployment_in_path", "conn_model_in_body"] {
        assert_full_chat(case, ok(&r, case));
        dated(case, "gpt-4o-prod", "chat/completions");
    }

    // AzureOpenAI: dated paths, the caller's api-version replaced by the backend's.
    assert_full_chat("az_chat", ok(&r, "az_chat"));
    dated("az_chat", "gpt-4o-prod", "chat/completions");
    let v = ok(&r, "az_chat_stream");
    assert_eq!(v["content"], ANSWER);
    assert_stream_without_usage("az_chat_stream", v, true);
    assert_eq!(ok(&r, "az_embeddings")["count"], 1);
    dated("az_embeddings", "text-embedding-3-small", "embeddings");
    let v = ok(&r, "az_responses");
    assert_eq!(v["output_text"], ANSWER);
    let u = upstream(&gw, "az_responses");
    assert_eq!(
        (u.path.as_str(), u.query.as_str()),
        ("/openai/responses", "api-version=2025-04-01-preview")
    );
    assert_eq!(u.body_json().unwrap()["model"], "gpt-4o-prod");
    assert_eq!(ok(&r, "az_responses_stream")["text"], ANSWER);
    upstream(&gw, "az_responses_stream");

    // The streams' hidden usage was still charged: every routed answer's completion tokens.
    let probes = probe_completions(OPENAI_CASES);
    let key_tokens = charged_completion_tokens(&gw, KEY_WORKLOAD).await - probes;
    let jwt_tokens = charged_completion_tokens(&gw, JWT_WORKLOAD).await - probes;
    assert_eq!(jwt_tokens, 24, "two JWT chats of 12");
    // 12 per full chat / responses answer (JSON and streamed), 3 per legacy completion.
    let full = [
        "oai_chat",
        "oai_chat_v1",
        "oai_openai_v1_base",
        "oai_chat_stream",
        "oai_chat_stream_usage",
        "oai_chat_stream_no_usage",
        "oai_responses",
        "oai_responses_stream",
        "conn_deployment_in_path",
        "conn_model_in_body",
        "az_chat",
        "az_chat_stream",
        "az_responses",
        "az_responses_stream",
    ];
    assert_eq!(
        key_tokens,
        12 * full.len() as u64 + 3 + 3,
        "completion tokens charged"
    );
}

/// `anthropic`: `Anthropic(base_url=...)` (key as `Authorization: Bearer`, or `auth_token`)
/// and `AnthropicFoundry(base_url=...)` (the key as `x-api-key` and `api-key`, or an Entra
/// token provider), JSON and streamed; errors in Anthropic's shape.
#[tokio::test]
async fn anthropic_sdks_messages() {
    anthropic_messages(false).await;
}

/// The same over HTTP/2.
#[tokio::test]
async fn anthropic_sdks_messages_http2() {
    anthropic_messages(true).await;
}

async fn anthropic_messages(http2: bool) {
    let gw = gateway().await;
    let cases = [
        "an_messages",
        "an_messages_stream",
        "an_jwt_messages",
        "an_unknown_model",
        "an_bad_key",
        "af_messages",
        "af_messages_stream",
        "af_jwt_messages",
    ];
    let run = Run {
        http2,
        counters: true,
    };
    let r = run_cases_as(&gw, &cases, run).await;
    assert_charges(&gw, &r, &cases).await;
    for case in [
        "an_messages",
        "an_messages_stream",
        "an_jwt_messages",
        "af_messages",
        "af_messages_stream",
        "af_jwt_messages",
    ] {
        let v = ok(&r, case);
        assert_eq!(v["type"], "message", "{case}");
        assert_eq!(v["text"], "This is a deterministic", "{case}");
        assert_eq!(v["stop_reason"], "max_tokens", "{case}");
        assert_eq!(
            (
                v["usage"]["input_tokens"].as_u64(),
                v["usage"]["output_tokens"].as_u64()
            ),
            (Some(5), Some(4)),
            "{case}"
        );
        let u = upstream(&gw, case);
        assert_eq!(u.path, "/anthropic/v1/messages", "{case}");
        assert_eq!(
            u.header("host"),
            Some("contoso.services.ai.azure.com"),
            "{case}"
        );
        assert!(u.header("anthropic-version").is_some(), "{case}");
        assert_eq!(u.body_json().unwrap()["model"], "claude-opus-4-5", "{case}");
    }
    for case in ["an_messages_stream", "af_messages_stream"] {
        let events = ok(&r, case)["events"].as_array().unwrap().clone();
        assert!(
            events.contains(&json!("message_start")) && events.contains(&json!("message_stop")),
            "{case}: {events:?}"
        );
    }
    // Refusals in Anthropic's shape, so the SDK raises its own exceptions with the message.
    let (class, status, body) = raised(&r, "an_unknown_model");
    assert_eq!((class, status), ("NotFoundError", 404));
    assert_eq!(body["type"], "error", "{body}");
    assert_eq!(body["error"]["type"], "not_found_error", "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("no-such-model"));
    let (class, status, body) = raised(&r, "an_bad_key");
    assert_eq!((class, status), ("AuthenticationError", 401));
    assert_eq!(body["error"]["type"], "authentication_error", "{body}");
    for case in ["an_unknown_model", "an_bad_key"] {
        assert!(upstream_all(&gw, case).is_empty(), "{case} reached Azure");
    }
    let probes = probe_completions(&cases);
    assert_eq!(
        charged_completion_tokens(&gw, KEY_WORKLOAD).await - probes,
        4 * 4
    );
    assert_eq!(
        charged_completion_tokens(&gw, JWT_WORKLOAD).await - probes,
        2 * 4
    );
}

/// `azure-ai-inference`: `ChatCompletionsClient` / `EmbeddingsClient` on Foundry model
/// inference, with `AzureKeyCredential` (the key as both `Authorization: Bearer` and
/// `api-key`) and with a token credential; streamed usage is Foundry's own last chunk, and the
/// filter sends no `stream_options` that this API does not list.
#[tokio::test]
async fn azure_ai_inference_sdk() {
    let gw = gateway().await;
    // HTTP/1.1 only: azure-core's transports (requests, aiohttp) speak no HTTP/2.
    let cases = ["ai_chat", "ai_chat_stream", "ai_embeddings", "ai_jwt_chat"];
    let run = Run {
        counters: true,
        ..Run::default()
    };
    let r = run_cases_as(&gw, &cases, run).await;
    assert_charges(&gw, &r, &cases).await;
    for case in ["ai_chat", "ai_jwt_chat"] {
        let v = ok(&r, case);
        assert_full_chat(case, v);
    }
    for case in ["ai_chat", "ai_chat_stream", "ai_jwt_chat"] {
        let u = upstream(&gw, case);
        assert_eq!(u.path, "/models/chat/completions", "{case}");
        assert_eq!(u.query, "api-version=2024-05-01-preview", "{case}");
        assert_eq!(
            u.header("host"),
            Some("contoso.services.ai.azure.com"),
            "{case}"
        );
        assert_eq!(u.body_json().unwrap()["model"], "mistral-large", "{case}");
        assert!(
            u.body_json().unwrap().get("stream_options").is_none(),
            "{case}"
        );
    }
    let v = ok(&r, "ai_chat_stream");
    assert_eq!(v["content"], ANSWER);
    assert_eq!(usage(&v["usage"]), (5, 12, 17));
    let v = ok(&r, "ai_embeddings");
    assert_eq!((v["count"].as_u64(), usage(&v["usage"]).0), (Some(1), 3));
    assert_eq!(
        upstream(&gw, "ai_embeddings").path,
        "/openai/deployments/text-embedding-3-small/embeddings"
    );
    let probes = probe_completions(&cases);
    assert_eq!(
        charged_completion_tokens(&gw, KEY_WORKLOAD).await - probes,
        24
    );
    assert_eq!(
        charged_completion_tokens(&gw, JWT_WORKLOAD).await - probes,
        12
    );
}

/// Each SDK's own retry: the stand-in Azure answers 429 with `retry-after` once, the SDK waits
/// and tries again, the second attempt succeeds (and both went through the gateway).
#[tokio::test]
async fn sdks_retry_on_429() {
    let gw = gateway().await;
    for case in ["oai_retry", "an_retry", "ai_retry"] {
        gw.standin.push_fault(
            EndpointKind::DataPlane,
            Fault::RateLimited {
                retry_after_secs: 1,
            },
            1,
        );
        let started = Instant::now();
        let r = run_cases(&gw, &[case]).await;
        let v = ok(&r, case);
        assert!(
            v["content"] == ANSWER || v["text"] == "This is a deterministic",
            "{case}: {v}"
        );
        let attempts = upstream_all(&gw, case);
        let statuses: Vec<u16> = attempts.iter().map(|a| a.outcome_status).collect();
        assert_eq!(statuses, [429, 200], "{case}");
        for a in &attempts {
            assert_left_clean(&gw, case, a);
        }
        assert!(
            started.elapsed() >= Duration::from_millis(900),
            "{case}: no wait before the retry"
        );
    }
}
