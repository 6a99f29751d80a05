//! What the benchmarks share (tests/bench_filter.rs, tests/bench_phases.rs): the fast local
//! upstream, the caller token and the Envoys compared (bare, the filter with parts of its path
//! left out, a failover pool, a Wasm filter that does nothing, Envoy's native filters).
#![allow(dead_code)]

use crate::common::{self, Cluster, Envoy, EnvoyOptions};
use azure_standin::StandIn;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use serde_json::{json, Value};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const AUDIENCE: &str = "api://llm-gateway";
pub const STREAM_EVENTS: usize = 20;
pub const STREAM_GAP: Duration = Duration::from_millis(10);
pub const CHAT_BODY: &str = r#"{"model":"gpt-4o","max_tokens":16,"messages":[{"role":"user","content":"Say hello to the benchmark."}]}"#;
pub const CHAT_PATH: &str = "/v1/chat/completions";
pub const AZURE_PATH: &str =
    "/openai/deployments/gpt-4o-prod/chat/completions?api-version=2024-10-21";

// ---------------------------------------------------------------------------------------------
// A fast upstream: a fixed chat completion with usage, or an SSE stream whose events carry the
// time they were sent (microseconds since EPOCH, shared with the client in this process).

pub static EPOCH: OnceLock<Instant> = OnceLock::new();

pub fn micros_since_epoch() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64
}

pub type UpBody = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

/// The fast upstream answers its next request 500 (then clears this): a target that fails
/// once (bench_phases' recovered pool).
pub static FAIL_NEXT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub async fn upstream(
    req: Request<Incoming>,
) -> Result<Response<UpBody>, std::convert::Infallible> {
    if FAIL_NEXT.swap(false, std::sync::atomic::Ordering::SeqCst) {
        return Ok(Response::builder()
            .status(500)
            .header("content-type", "application/json")
            .body(
                Full::new(Bytes::from_static(
                    br#"{"error":{"code":"InternalServerError"}}"#,
                ))
                .boxed(),
            )
            .unwrap_or_default());
    }
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let streamed = body.windows(13).any(|w| w == b"\"stream\":true");
    if !streamed {
        let answer = json!({
            "id": "chatcmpl-bench", "object": "chat.completion", "created": 1, "model": "gpt-4o",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "Hello, benchmark."}}],
            "usage": {"prompt_tokens": 14, "completion_tokens": 4, "total_tokens": 18}
        });
        return Ok(Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(answer.to_string())).boxed())
            .unwrap_or_default());
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(4);
    tokio::spawn(async move {
        for i in 0..STREAM_EVENTS {
            if i > 0 {
                tokio::time::sleep(STREAM_GAP).await;
            }
            let event = format!(
                "data: {{\"object\":\"chat.completion.chunk\",\"t\":{},\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"w{i} \"}}}}],\"usage\":null}}\n\n",
                micros_since_epoch()
            );
            if tx.send(Ok(Frame::data(Bytes::from(event)))).await.is_err() {
                return;
            }
        }
        let tail = "data: {\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":14,\"completion_tokens\":20,\"total_tokens\":34}}\n\ndata: [DONE]\n\n";
        let _ = tx.send(Ok(Frame::data(Bytes::from(tail)))).await;
    });
    let stream = tokio_stream_from(rx);
    Ok(Response::builder()
        .header("content-type", "text/event-stream")
        .body(StreamBody::new(stream).boxed())
        .unwrap_or_default())
}

pub fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Starts the upstream on its own thread and runtime; returns its port.
pub fn start_upstream() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(
                            hyper_util::rt::TokioIo::new(stream),
                            hyper::service::service_fn(upstream),
                        )
                        .await;
                });
            }
        });
    });
    port
}

// ---------------------------------------------------------------------------------------------
// Scenarios: the Envoys compared.

pub struct Fixture {
    pub standin: StandIn,
    pub upstream_port: u16,
    pub caller_token: String,
}

pub fn caller_claims(standin: &StandIn, azp: &str, jti: &str) -> Value {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    json!({
        "iss": format!("https://login.microsoftonline.com/{}/v2.0", standin.tenant_id()),
        "aud": AUDIENCE, "azp": azp, "tid": standin.tenant_id(),
        "iat": t, "nbf": t - 5, "exp": t + 3600, "jti": jti
    })
}

pub fn clusters(fx: &Fixture) -> Vec<Cluster> {
    vec![
        Cluster::new("entra", fx.standin.port()),
        Cluster::new("aoai", fx.upstream_port),
    ]
}

/// The filter on its full path: JWT validation (JWKS through a cluster), Entra token injection,
/// a local token limit that never refuses, rewrite, usage accounting.
pub fn filter_options(fx: &Fixture, auth: Value) -> EnvoyOptions {
    filter_options_with(fx, Some(auth), true)
}

/// The filter with parts of the full path left out, to show where its cost goes.
pub fn filter_options_with(fx: &Fixture, auth: Option<Value>, limits: bool) -> EnvoyOptions {
    let tenant = fx.standin.tenant_id();
    let mut plugin = json!({
        "credentials": {"main": {"kind": "client_secret", "tenant_id": tenant,
                                 "client_id": "22222222-2222-2222-2222-222222222222",
                                 "client_secret": "standin-secret", "token_cluster": "entra"}},
        "backends": {"aoai": {"kind": "azure_openai", "host": "r.openai.azure.com",
                              "api_version": "2024-10-21", "credential": "main"}},
        "models": {"gpt-4o": {"backend": "aoai", "deployment": "gpt-4o-prod"}},
    });
    if let Some(auth) = auth {
        plugin["auth"] = auth;
    }
    if limits {
        plugin["rate_limits"] = json!({"default": {"tokens_per_minute": 1_000_000_000_000u64}});
        // The full path counts what each answer costs too.
        plugin["pricing"] =
            json!({"models": {"gpt-4o": {"input": 2.5, "cached_input": 1.25, "output": 10}}});
    }
    let mut o = EnvoyOptions::new(plugin);
    o.clusters = clusters(fx);
    o.backend_routes = vec!["aoai".into()];
    o.log_level = "warning".into();
    o.access_log = false;
    o
}

/// The full path through a failover pool of two targets (both the fast upstream): the
/// listener filter chooses where the pool starts and hands over, the pool's aggregate cluster
/// runs the filter once more as upstream filter for the one attempt. What the per-attempt
/// design costs when nothing fails over.
pub fn pool_options(fx: &Fixture) -> EnvoyOptions {
    pool_options_named(fx, "ptu", "payg")
}

/// [`pool_options`] with targets (backends and their clusters) of other names: their health
/// in shared data is their own, so pools with different histories share one Envoy.
pub fn pool_options_named(fx: &Fixture, first: &str, second: &str) -> EnvoyOptions {
    let mut o = filter_options(fx, jwt_auth(fx));
    let backend = o.plugin_config["backends"]["aoai"].clone();
    o.plugin_config["backends"][first] = backend.clone();
    o.plugin_config["backends"][second] = backend;
    o.plugin_config["models"]["gpt-4o"] = json!({"targets": [
        {"backend": first, "deployment": "gpt-4o-prod"},
        {"backend": second, "deployment": "gpt-4o-prod"}
    ]});
    let (clusters, routes) = common::failover_pool_yaml(
        &o.plugin_config,
        common::DEFAULT_ROUTING_HEADER,
        &[(first, fx.upstream_port), (second, fx.upstream_port)],
    );
    o.extra_clusters_yaml = Some(clusters);
    o.extra_routes_yaml = Some(routes);
    o.backend_routes.push(second.into());
    o
}

/// What runs as the pool's upstream filter in [`pool_options_upstream`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolUpstream {
    /// No upstream filter (the listener filter rewrote the request for the first target, so
    /// an attempt there needs nothing): Envoy's own cost of the aggregate cluster and its
    /// retry policy.
    None,
    /// A Wasm filter that does nothing: what any upstream Wasm filter costs per attempt.
    Nothing,
}

/// [`pool_options`] with another upstream filter, on aggregate clusters of their own name
/// (suffix `~<variant>`), so that the variants can share one Envoy (bench_phases).
pub fn pool_options_upstream(fx: &Fixture, upstream: PoolUpstream) -> EnvoyOptions {
    let mut o = pool_options(fx);
    let suffix = match upstream {
        PoolUpstream::None => "~none",
        PoolUpstream::Nothing => "~nothing",
    };
    let trivial = std::env::temp_dir().join(format!(
        "azure-llm-bench-trivial-upstream-{}.wasm",
        std::process::id()
    ));
    std::fs::write(
        &trivial,
        wat::parse_str(TRIVIAL_FILTER_WAT).expect("valid WAT"),
    )
    .unwrap();
    let mut clusters = String::new();
    for line in o.extra_clusters_yaml.as_deref().unwrap_or_default().lines() {
        let Some(mut c) = line
            .strip_prefix("- ")
            .and_then(|j| serde_json::from_str::<Value>(j).ok())
            .filter(|c| c["cluster_type"]["name"] == "envoy.clusters.aggregate")
        else {
            clusters.push_str(line);
            clusters.push('\n');
            continue;
        };
        c["name"] = json!(format!(
            "{}{suffix}",
            c["name"].as_str().unwrap_or_default()
        ));
        let filters = &mut c["typed_extension_protocol_options"]
            ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]["http_filters"];
        if let Some(list) = filters.as_array_mut() {
            match upstream {
                PoolUpstream::None => list.retain(|f| f["name"] != "envoy.filters.http.wasm"),
                PoolUpstream::Nothing => {
                    for f in list
                        .iter_mut()
                        .filter(|f| f["name"] == "envoy.filters.http.wasm")
                    {
                        let config = &mut f["typed_config"]["config"];
                        config["name"] = json!("trivial");
                        config["root_id"] = json!("trivial");
                        config["vm_config"]["vm_id"] = json!("trivial_upstream");
                        config["vm_config"]["code"] =
                            json!({"local": {"filename": trivial.to_string_lossy()}});
                        if let Some(m) = config.as_object_mut() {
                            m.remove("configuration");
                        }
                    }
                }
            }
        }
        clusters.push_str(&format!("- {c}\n"));
    }
    o.extra_clusters_yaml = Some(clusters);
    let mut routes = String::new();
    for line in o.extra_routes_yaml.as_deref().unwrap_or_default().lines() {
        let renamed = line
            .strip_prefix("- ")
            .and_then(|j| serde_json::from_str::<Value>(j).ok())
            .filter(|r| {
                r["route"]["cluster"]
                    .as_str()
                    .is_some_and(|c| c.contains('+'))
            });
        match renamed {
            Some(mut r) => {
                let name = format!(
                    "{}{suffix}",
                    r["route"]["cluster"].as_str().unwrap_or_default()
                );
                r["route"]["cluster"] = json!(name);
                routes.push_str(&format!("- {r}\n"));
            }
            None => {
                routes.push_str(line);
                routes.push('\n');
            }
        }
    }
    o.extra_routes_yaml = Some(routes);
    o
}

pub fn jwt_auth(fx: &Fixture) -> Value {
    let tenant = fx.standin.tenant_id();
    json!({"jwt_providers": {"entra": {
        "issuer": format!("https://login.microsoftonline.com/{tenant}/v2.0"),
        "audiences": [AUDIENCE],
        "jwks": {"cluster": "entra", "authority": "login.microsoftonline.com",
                 "path": format!("/{tenant}/discovery/v2.0/keys")}
    }}})
}

/// Bare Envoy: the same listener and upstream, one route, no filter.
pub fn bare_options(fx: &Fixture) -> EnvoyOptions {
    let mut o = EnvoyOptions::new(Value::Null);
    o.with_filter = false;
    o.clusters = clusters(fx);
    o.log_level = "warning".into();
    o.access_log = false;
    o.extra_routes_yaml =
        Some("- match: { prefix: \"/\" }\n  route: { cluster: aoai, timeout: 30s }\n".to_string());
    o
}

/// The smallest proxy-wasm filter there is: every callback returns at once, it never calls
/// Envoy. What any Wasm filter costs before it does anything (VM entry on every phase).
const TRIVIAL_FILTER_WAT: &str = r#"
(module
  (memory (export "memory") 1)
  (func (export "proxy_abi_version_0_2_1"))
  ;; Envoy allocates in the VM only to hand it data, which this module never asks for.
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 1024))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (i32.const 0))
  (func (export "proxy_on_request_body") (param i32 i32 i32) (result i32) (i32.const 0))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32) (i32.const 0))
  (func (export "proxy_on_response_body") (param i32 i32 i32) (result i32) (i32.const 0))
  (func (export "proxy_on_log") (param i32))
  (func (export "proxy_on_done") (param i32) (result i32) (i32.const 1))
  (func (export "proxy_on_delete") (param i32)))
"#;

/// Bare Envoy's listener and route with the trivial Wasm filter in front.
pub fn trivial_wasm_options(fx: &Fixture) -> EnvoyOptions {
    wat_filter_options(fx, "trivial", TRIVIAL_FILTER_WAT, "trivial", None)
}

/// Bare Envoy's listener and route with a filter written in WebAssembly text in front: VM
/// `name`, plugin (`root_id`) `plugin`, with `configuration` as its StringValue.
pub fn wat_filter_options(
    fx: &Fixture,
    name: &str,
    wat: &str,
    plugin: &str,
    configuration: Option<&str>,
) -> EnvoyOptions {
    let wasm =
        wat::parse_str(wat).unwrap_or_else(|e| panic!("{name}: invalid WebAssembly text: {e}"));
    let path = std::env::temp_dir().join(format!(
        "azure-llm-bench-{name}-{}.wasm",
        std::process::id()
    ));
    std::fs::write(&path, wasm).unwrap();
    let mut o = bare_options(fx);
    o.extra_http_filters_yaml = Some(format!(
        "- name: envoy.filters.http.wasm
  typed_config:
    \"@type\": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
    config:
      name: {plugin}
      root_id: {plugin}
      vm_config:
        vm_id: {name}
        runtime: envoy.wasm.runtime.v8
        code: {{ local: {{ filename: {} }} }}
{}",
        serde_json::to_string(&path.to_string_lossy()).unwrap(),
        configuration.map_or(String::new(), |c| format!(
            "      configuration: {{ \"@type\": type.googleapis.com/google.protobuf.StringValue, value: {} }}\n",
            serde_json::to_string(c).unwrap()
        ))
    ));
    o
}

/// What a user would build from Envoy's own filters for the non-LLM part: `jwt_authn`
/// (inline JWKS, the caller's token not forwarded), `header_mutation` setting a (static)
/// Entra token, and a route rewriting path and host.
pub fn native_options(fx: &Fixture, jwt_cache: bool) -> EnvoyOptions {
    let tenant = fx.standin.tenant_id();
    let jwks = fx.standin.jwks_json().to_string();
    let entra_token = fx
        .standin
        .issue_access_token("22222222-2222-2222-2222-222222222222", 3600);
    let cache = if jwt_cache {
        "        jwt_cache_config: { jwt_cache_size: 1000 }\n"
    } else {
        ""
    };
    let q = |s: &str| serde_json::to_string(s).unwrap();
    let filters = format!(
        "- name: envoy.filters.http.jwt_authn
  typed_config:
    \"@type\": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
    providers:
      entra:
        issuer: {iss}
        audiences: [{aud}]
        forward: false
        claim_to_headers: [{{ header_name: x-workload, claim_name: azp }}]
        local_jwks: {{ inline_string: {jwks} }}
{cache}    rules:
      - match: {{ prefix: \"/\" }}
        requires: {{ provider_name: entra }}
- name: envoy.filters.http.header_mutation
  typed_config:
    \"@type\": type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation
    mutations:
      request_mutations:
        - append:
            header: {{ key: authorization, value: {bearer} }}
            append_action: OVERWRITE_IF_EXISTS_OR_ADD
        - remove: api-key
",
        iss = q(&format!("https://login.microsoftonline.com/{tenant}/v2.0")),
        aud = q(AUDIENCE),
        jwks = q(&jwks),
        bearer = q(&format!("Bearer {entra_token}")),
    );
    let mut o = EnvoyOptions::new(Value::Null);
    o.with_filter = false;
    o.clusters = clusters(fx);
    o.log_level = "warning".into();
    o.access_log = false;
    o.extra_http_filters_yaml = Some(filters);
    o.extra_routes_yaml = Some(format!(
        "- match: {{ prefix: \"/v1/chat/completions\" }}\n  route: {{ cluster: aoai, timeout: 30s, prefix_rewrite: {}, host_rewrite_literal: r.openai.azure.com }}\n",
        q(AZURE_PATH)
    ));
    o
}

/// Waits until a chat completion goes through (the filter has its JWKS and Entra token).
pub async fn wait_serving(envoy: &Envoy, token: &str) {
    let http = common::client();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let status = http
            .post(envoy.url("/v1/chat/completions"))
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(CHAT_BODY)
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0);
        if status == 200 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not serving (last status {status})\n{}",
            envoy.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
