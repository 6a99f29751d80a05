//! Issue 15, end to end through the *shipped* Envoy configuration (envoy/envoy.yaml, with the
//! ports moved and the stand-in in place of Azure): what leaves the proxy, and callers that
//! stall.
//!
//! - The internal routing header `x-azure-llm-backend` picks the route and never reaches
//!   Azure (the route's `request_headers_to_remove`), nor do the caller's `Cookie`,
//!   `Proxy-Authorization` and `Ocp-Apim-Subscription-Key` (the filter's default
//!   `request_headers_to_remove`).
//! - A body that trickles in is answered by Envoy's `request_timeout` (408), and headers that
//!   never finish by `request_headers_timeout`: the shipped values are 60 s and 10 s; the test
//!   shortens them (and checks they are there to shorten).

mod common;

use azure_standin::{EndpointKind, StandIn, StandInConfig};
use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Envoy running envoy/envoy.yaml.
struct ShippedEnvoy {
    child: Child,
    port: u16,
    log: std::path::PathBuf,
}

impl Drop for ShippedEnvoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Replaces `from` by `to` in `text`, insisting that `from` is there.
fn replaced(text: &str, from: &str, to: &str) -> String {
    assert!(
        text.contains(from),
        "envoy/envoy.yaml no longer has `{from}`"
    );
    text.replace(from, to)
}

async fn start_shipped(standin: &StandIn, shorten: &[(&str, &str)]) -> ShippedEnvoy {
    let root = common::workspace_root();
    let mut yaml = std::fs::read_to_string(root.join("envoy/envoy.yaml")).unwrap();
    let (port, admin) = (common::free_port(), common::free_port());
    for (from, to) in [
        ("port_value: 10000", format!("port_value: {port}")),
        ("port_value: 9901", format!("port_value: {admin}")),
        (
            "port_value: 8089",
            format!("port_value: {}", standin.port()),
        ),
        (
            "filename: target/wasm32-wasip1/release/azure_llm_filter.wasm",
            format!("filename: {}", common::wasm_path().display()),
        ),
    ] {
        yaml = replaced(&yaml, from, &to);
    }
    for (from, to) in shorten {
        yaml = replaced(&yaml, from, to);
    }
    let dir = root
        .join("target/e2e/e2e_request_hygiene")
        .join(format!("{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("envoy.yaml");
    std::fs::write(&config, yaml).unwrap();
    let log = dir.join("envoy.log");
    let out = std::fs::File::create(&log).unwrap();
    let mut cmd = Command::new(common::envoy_binary());
    cmd.arg("-c")
        .arg(&config)
        .args(["--concurrency", "1", "-l", "info", "--disable-hot-restart"])
        .current_dir(&root)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out.try_clone().unwrap()))
        .stderr(Stdio::from(out));
    let child = common::spawn_child(cmd).unwrap();
    let envoy = ShippedEnvoy { child, port, log };
    let deadline = Instant::now() + Duration::from_secs(20);
    let http = common::client();
    loop {
        let ready = http
            .get(format!("http://127.0.0.1:{admin}/ready"))
            .send()
            .await
            .ok()
            .filter(|r| r.status().as_u16() == 200);
        if ready.is_some() && TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return envoy;
        }
        assert!(
            Instant::now() < deadline,
            "shipped Envoy did not start: {}",
            std::fs::read_to_string(&envoy.log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn chat_body() -> String {
    json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hygiene check"}]})
        .to_string()
}

/// Sends `head` then `body` in pieces `gap` apart (stopping at the first write error), and
/// reads the answer's status line; 0 when the connection closed without one.
fn raw_exchange(port: u16, head: &str, body: &[&[u8]], gap: Duration) -> (u16, Duration) {
    let started = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let _ = s.write_all(head.as_bytes());
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    // Between pieces, look for an early answer (the one a timeout gives).
    s.set_read_timeout(Some(gap.max(Duration::from_millis(1))))
        .unwrap();
    for piece in body {
        if let Ok(n) = s.read(&mut buf) {
            answer.extend_from_slice(&buf[..n]);
            break;
        }
        if s.write_all(piece).is_err() {
            break;
        }
    }
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
        if answer.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, started.elapsed())
}

#[tokio::test]
async fn shipped_config_keeps_internal_and_foreign_headers_from_azure() {
    let standin = StandIn::start(StandInConfig::default()).await.unwrap();
    let envoy = start_shipped(&standin, &[]).await;
    // A caller's own routing header too: the filter replaces it, the route drops it.
    let resp = common::client()
        .post(format!(
            "http://127.0.0.1:{}/v1/chat/completions",
            envoy.port
        ))
        .header("content-type", "application/json")
        .header("x-azure-llm-backend", "somewhere-else")
        // Credentials and session state for other systems (request_headers_to_remove's default).
        .header("cookie", "session=browser-secret")
        .header("proxy-authorization", "Basic cHJveHk6c2VjcmV0")
        .header("ocp-apim-subscription-key", "apim-secret-key")
        .header("x-caller-trace", "kept")
        .body(chat_body())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let seen = standin.requests_of(EndpointKind::DataPlane);
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].path,
        "/openai/deployments/gpt-4o-prod/chat/completions"
    );
    for name in [
        "x-azure-llm-backend",
        "cookie",
        "proxy-authorization",
        "ocp-apim-subscription-key",
    ] {
        assert_eq!(
            seen[0].header_count(name),
            0,
            "{name}: {:?}",
            seen[0].headers
        );
    }
    assert_eq!(seen[0].header("x-caller-trace"), Some("kept"));
}

#[tokio::test]
async fn shipped_timeouts_answer_callers_that_stall() {
    let standin = StandIn::start(StandInConfig::default()).await.unwrap();
    let envoy = start_shipped(
        &standin,
        &[
            ("request_timeout: 60s", "request_timeout: 2s"),
            (
                "request_headers_timeout: 10s",
                "request_headers_timeout: 1s",
            ),
        ],
    )
    .await;
    let body = chat_body();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    // A body trickling in, a byte every 300 ms: no idle timeout fires, request_timeout does.
    let bytes: Vec<&[u8]> = body.as_bytes().chunks(1).take(30).collect();
    let (status, took) = raw_exchange(envoy.port, &head, &bytes, Duration::from_millis(300));
    assert_eq!(status, 408, "after {took:?}");
    assert!(took < Duration::from_secs(15), "{took:?}");
    // Headers that never finish.
    let (status, took) = raw_exchange(
        envoy.port,
        "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\n",
        &[],
        Duration::ZERO,
    );
    assert!(
        status == 408 || status == 0,
        "headers timeout: status {status} after {took:?}"
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert_eq!(
        standin.count(EndpointKind::DataPlane),
        0,
        "nothing reached Azure"
    );
}

/// The filter's own watch on bodies it waits for (body routing): with
/// `allow_on_headers_stop_iteration: true` (bodies are seen to flow), a body that stops
/// half-way or never comes is the caller's fault: 408 `request_body_timeout`, in the dialect
/// of the route, after `body_wait_timeout_ms` — not 500 `filter_misconfigured` (that one is
/// only for a proxy that never delivers bodies, e2e_routing.rs).
#[tokio::test]
async fn a_stalled_body_is_answered_408_not_blamed_on_the_operator() {
    let standin = StandIn::start(StandInConfig::default()).await.unwrap();
    let mut o = common::EnvoyOptions::new(json!({
        "credentials": common::standin_credentials(&standin.tenant_id()),
        "backends": {
            "aoai": {"kind": "azure_openai", "host": "r.openai.azure.com", "api_version": "2024-10-21", "credential": "main"},
            "claude": {"kind": "foundry_anthropic", "host": "f.services.ai.azure.com", "credential": "main"}
        },
        "models": {
            "gpt-4o": {"backend": "aoai", "deployment": "gpt-4o-prod"},
            "claude-opus-4-5": {"backend": "claude", "deployment": "claude-opus-4-5"}
        },
        "body_wait_timeout_ms": 700
    }));
    o.clusters = vec![
        common::Cluster::new("entra", standin.port()),
        common::Cluster::new("aoai", standin.port()),
        common::Cluster::new("claude", standin.port()),
    ];
    o.backend_routes = vec!["aoai".into(), "claude".into()];
    let envoy = common::Envoy::start(o).await;
    let port: u16 = envoy
        .url("")
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .unwrap();
    let body = chat_body();
    let head = |path: &str, len: usize| {
        format!("POST {path} HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: {len}\r\n\r\n")
    };
    // Bodies are delivered (the option is set): this worker has seen one.
    let (status, _) = raw_exchange(
        port,
        &head("/v1/chat/completions", body.len()),
        &[body.as_bytes()],
        Duration::ZERO,
    );
    assert_eq!(status, 200);
    // Half a body, then nothing.
    let (status, took) = raw_exchange_keep_open(
        port,
        &head("/v1/chat/completions", body.len()),
        &body.as_bytes()[..body.len() / 2],
    );
    assert_eq!(status.0, 408, "{}", status.1);
    assert!(status.1.contains("request_body_timeout"), "{}", status.1);
    assert!(took < Duration::from_secs(5), "{took:?}");
    // No body at all, on an Anthropic route: 408 in Anthropic's shape.
    let (status, _) = raw_exchange_keep_open(port, &head("/v1/messages", 50), b"");
    assert_eq!(status.0, 408, "{}", status.1);
    assert!(status.1.contains("\"type\":\"error\""), "{}", status.1);
    assert!(status.1.contains("timeout_error"), "{}", status.1);
    assert_eq!(
        standin.count(EndpointKind::DataPlane),
        1,
        "only the complete request reached Azure"
    );
}

/// Sends `head` and `partial`, keeps the connection open, and reads the whole answer:
/// ((status, text), elapsed).
fn raw_exchange_keep_open(port: u16, head: &str, partial: &[u8]) -> ((u16, String), Duration) {
    let started = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(partial).unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&answer);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_string())
                })
                .and_then(|v| v.parse::<usize>().ok());
            if len.is_some_and(|l| body.len() >= l) {
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    ((status, text), started.elapsed())
}

/// Errors the root context sends (here: the Entra token does not come within
/// `token_wait_timeout_ms`) keep the dialect of the route the request came in on.
#[tokio::test]
async fn root_context_errors_keep_the_callers_dialect() {
    let standin = StandIn::start(StandInConfig::default()).await.unwrap();
    let mut o = common::EnvoyOptions::new(json!({
        "credentials": common::standin_credentials(&standin.tenant_id()),
        "backends": {
            "claude": {"kind": "foundry_anthropic", "host": "f.services.ai.azure.com", "credential": "main"}
        },
        "models": {"claude-opus-4-5": {"backend": "claude", "deployment": "claude-opus-4-5"}},
        "token_wait_timeout_ms": 300
    }));
    o.clusters = vec![
        common::Cluster::new("entra", standin.port()),
        common::Cluster::new("claude", standin.port()),
    ];
    o.backend_routes = vec!["claude".into()];
    let envoy = common::Envoy::start(o).await;
    standin.push_fault(
        EndpointKind::Token,
        azure_standin::Fault::Delay(Duration::from_millis(2500)),
        1,
    );
    let resp = common::client()
        .post(envoy.url("/v1/messages"))
        .json(&json!({"model": "claude-opus-4-5", "max_tokens": 5,
                      "messages": [{"role": "user", "content": "hello"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["error"]["type"], "api_error", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("backend_token_timeout: "),
        "{v}"
    );
    assert_eq!(standin.count(EndpointKind::DataPlane), 0);
}

/// Sends a raw HTTP/1.1 request (head bytes as given, then `body`) and returns the answer's
/// status (0 when the connection closed without one).
fn raw_status(port: u16, head: &[u8], body: &[u8]) -> u16 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(head).unwrap();
    s.write_all(body).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
        if answer.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    String::from_utf8_lossy(&answer)
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Envoy passes header values with any byte but NUL, CR and LF (obs-text). The proxy-wasm SDK's
/// string readers panic on a value that is not UTF-8, which aborts the VM: every later request
/// on that worker failed (503). The filter reads header maps as bytes (src/header_map.rs).
#[tokio::test]
async fn a_header_value_that_is_not_utf8_stops_nothing() {
    let standin = StandIn::start(StandInConfig::default()).await.unwrap();
    let envoy = start_shipped(&standin, &[]).await;
    let body = chat_body();
    let request = |extra: &[u8]| -> Vec<u8> {
        let mut head = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
            body.len()
        )
        .into_bytes();
        head.extend_from_slice(extra);
        head.extend_from_slice(b"connection: close\r\n\r\n");
        head
    };
    // Latin-1 in a header the filter does not read, in the caller's credential (removed) and
    // in one it reads for every request (the content type).
    for extra in [
        &b"x-caller-note: caf\xe9\r\n"[..],
        b"authorization: Bearer caf\xe9.\xff.x\r\n",
        b"api-key: \xff\xfe\r\n",
    ] {
        assert_eq!(
            raw_status(envoy.port, &request(extra), body.as_bytes()),
            200,
            "{}",
            String::from_utf8_lossy(extra)
        );
    }
    // The worker still serves.
    for _ in 0..3 {
        assert_eq!(raw_status(envoy.port, &request(b""), body.as_bytes()), 200);
    }
    let log = std::fs::read_to_string(&envoy.log).unwrap_or_default();
    assert!(!log.contains("panicked"), "{log}");
    let seen = standin.requests_of(EndpointKind::DataPlane);
    assert_eq!(seen.len(), 6);
    assert!(seen.iter().all(|r| r.header_count("api-key") == 0));
}
