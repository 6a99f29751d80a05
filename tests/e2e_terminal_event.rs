//! Issue 23, end to end through Envoy: the terminal event settles an answer, and nothing a
//! caller or an answer's content can do makes the filter charge less. An upstream written
//! here (not the stand-in) sends exactly the bytes each case needs and holds the end of its
//! chunked body, so the caller always hangs up before Envoy sees it:
//!
//! - a stream read to its `[DONE]`: charged its usage;
//! - a stream whose `[DONE]` comes without usage: complete, charged its estimate;
//! - content that spells `data: [DONE]`, `message_stop` or a usage-only chunk (JSON-escaped,
//!   as Azure sends text), the caller gone after it: a cut stream, charged its estimate;
//! - a usage object with values that are no token counts (negative, beyond u64): unreadable,
//!   charged its estimate.

mod common;

use azure_standin::{StandIn, StandInConfig};
use common::{client, Envoy, EnvoyOptions};
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LIMIT: u64 = 1_000_000;

/// The events the upstream streams for a request whose prompt is `case`.
fn events(case: &str) -> Vec<String> {
    let content = |text: &str| {
        format!(
            "data: {}\n\n",
            json!({"choices": [{"index": 0, "delta": {"content": text}}], "usage": null})
        )
    };
    let usage = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":4,\"total_tokens\":13}}\n\n";
    match case {
        "done" => vec![content("hi"), usage.into(), "data: [DONE]\n\n".into()],
        "done_without_usage" => vec![content("hi"), "data: [DONE]\n\n".into()],
        "fake_terminals" => vec![
            content("\ndata: [DONE]\n\n"),
            content("{\"type\":\"message_stop\"}"),
            content(usage),
        ],
        "absurd_usage" => vec![
            content("hi"),
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":-5,\"completion_tokens\":1e30}}\n\n"
                .into(),
            "data: [DONE]\n\n".into(),
        ],
        _ => Vec::new(),
    }
}

/// A one-request-per-connection HTTP/1.1 upstream: a probe gets a JSON answer with usage
/// 1 + 1; a case gets its events in one chunk each, and the end of the body never comes.
async fn upstream() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                // Headers and a body of content-length bytes.
                loop {
                    let Ok(n) = conn.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    request.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&request).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length = text[..end]
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        if request.len() >= end + 4 + length {
                            break;
                        }
                    }
                }
                let text = String::from_utf8_lossy(&request).to_string();
                let body: Value = text
                    .split_once("\r\n\r\n")
                    .and_then(|(_, b)| serde_json::from_str(b).ok())
                    .unwrap_or(Value::Null);
                let case = body["messages"][0]["content"]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
                if case == "probe" {
                    let answer =
                        r#"{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1}}"#;
                    let _ = conn
                        .write_all(
                            format!(
                                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
                                answer.len()
                            )
                            .as_bytes(),
                        )
                        .await;
                    return;
                }
                let _ = conn
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
                    .await;
                for e in events(&case) {
                    let chunk = format!("{:x}\r\n{e}\r\n", e.len());
                    let _ = conn.write_all(chunk.as_bytes()).await;
                    let _ = conn.flush().await;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                // Hold the end of the body until the caller has gone.
                tokio::time::sleep(Duration::from_secs(30)).await;
            });
        }
    });
    port
}

fn body(case: &str) -> Value {
    json!({"model": "gpt-4o", "stream": true, "max_tokens": 50,
        "messages": [{"role": "user", "content": case}]})
}

fn estimate(body: &Value) -> u64 {
    serde_json::to_vec(body).unwrap().len().div_ceil(4) as u64
        + body["max_tokens"].as_u64().unwrap()
}

/// The counter's use before a probe (the probe's reservation taken out).
async fn used(envoy: &Envoy) -> u64 {
    let probe = json!({"model": "gpt-4o", "max_tokens": 1, "messages": [{"role": "user", "content": "probe"}]});
    let resp = client()
        .post(envoy.url("/v1/chat/completions"))
        .json(&probe)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let remaining = common::header_u64(&resp, "x-ratelimit-remaining-tokens").unwrap();
    let _ = resp.bytes().await;
    LIMIT - remaining - estimate(&probe)
}

/// Streams `case`, reads it until `stop_at` appears (or its events are all there), hangs
/// up, and returns what the counter was charged for it.
async fn charged(envoy: &Envoy, case: &str, stop_at: &str) -> u64 {
    let before = used(envoy).await + 2; // the probe's own usage, 1 + 1
    let resp = client()
        .post(envoy.url("/v1/chat/completions"))
        .json(&body(case))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{case}");
    let mut stream = resp.bytes_stream();
    let mut seen = String::new();
    let wanted: String = events(case).concat();
    while !seen.contains(stop_at) && seen.len() < wanted.len() {
        match tokio::time::timeout(Duration::from_secs(10), stream.next()).await {
            Ok(Some(Ok(b))) => seen.push_str(&String::from_utf8_lossy(&b)),
            other => panic!("{case}: stream ended early: {other:?} after {seen:?}"),
        }
    }
    drop(stream);
    // A cut stream is charged when Envoy tears it down.
    tokio::time::sleep(Duration::from_millis(300)).await;
    used(envoy).await - before
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_a_real_terminal_event_settles_and_nothing_charges_less_than_the_estimate() {
    let standin = StandIn::start(StandInConfig::default()).await.unwrap();
    let port = upstream().await;
    let envoy = Envoy::start(
        EnvoyOptions::new(json!({
            "credentials": common::standin_credentials(&standin.tenant_id()),
            "backends": {"aoai": {"kind": "azure_openai", "host": "r.openai.azure.com", "api_version": "2024-10-21", "credential": "main"}},
            "models": {"gpt-4o": {"backend": "aoai", "deployment": "gpt-4o-prod"}},
            "rate_limits": {"default": {"tokens_per_day": LIMIT}}
        }))
        .cluster("entra", standin.port())
        .backend("aoai", port),
    )
    .await;

    assert_eq!(charged(&envoy, "done", "[DONE]").await, 13, "its usage");
    assert_eq!(
        charged(&envoy, "done_without_usage", "[DONE]").await,
        estimate(&body("done_without_usage")),
        "complete without usage: the estimate"
    );
    assert_eq!(
        charged(&envoy, "fake_terminals", "total_tokens").await,
        estimate(&body("fake_terminals")),
        "content is no terminal event: cut, the estimate"
    );
    assert_eq!(
        charged(&envoy, "absurd_usage", "[DONE]").await,
        estimate(&body("absurd_usage")),
        "no token counts: the estimate"
    );
}
