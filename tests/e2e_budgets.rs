//! Issue 14, end to end through Envoy with 2 workers: the five ways a caller could escape a
//! token budget are closed (a cancelled stream is charged; a caller asking for gzip is charged;
//! a 20 MB embeddings answer is charged exactly; an ambiguous multipart body is refused and an
//! unambiguous one routes the model Azure reads; concurrent requests at the edge consume at most
//! the budget plus the estimates' error), `x-ratelimit-*` tell the workload's figures and Azure's
//! own 429 reaches the caller untouched.
//!
//! How the tests see a counter: `x-ratelimit-remaining-tokens` of an admitted request is the
//! limit minus what is used, its own reservation included; the reservation is its estimate,
//! ceil(body bytes / 4) + `max_tokens` (src/estimate.rs), which the test computes from the exact
//! bytes it sends.

mod common;

use azure_standin::{Deployment, EndpointKind, Fault, StandIn, StandInConfig};
use common::{client, Cluster, Envoy, EnvoyOptions};
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::time::Duration;

fn plugin_config(standin: &StandIn, rate_limits: Value) -> Value {
    json!({
        "credentials": common::standin_credentials(&standin.tenant_id()),
        "backends": {
            "aoai": {"kind": "azure_openai", "host": "r.openai.azure.com", "api_version": "2024-10-21", "credential": "main"},
            "aoai-v1": {"kind": "azure_openai_v1", "host": "v1.openai.azure.com", "credential": "main"}
        },
        "models": {
            "gpt-4o": {"backend": "aoai", "deployment": "gpt-4o-prod"},
            "embeddings": {"backend": "aoai", "deployment": "text-embedding-3-small"},
            "whisper": {"backend": "aoai-v1", "deployment": "whisper"},
            "gpt-4o-transcribe": {"backend": "aoai-v1", "deployment": "gpt-4o-transcribe"}
        },
        "model_header": "x-model",
        "rate_limits": rate_limits
    })
}

async fn setup_with(rate_limits: Value, mut cfg: StandInConfig) -> (StandIn, Envoy) {
    cfg.deployments
        .push(Deployment::new("whisper", "whisper", "OpenAI"));
    cfg.deployments.push(Deployment::new(
        "gpt-4o-transcribe",
        "gpt-4o-transcribe",
        "OpenAI",
    ));
    let standin = StandIn::start(cfg).await.unwrap();
    let mut o = EnvoyOptions::new(plugin_config(&standin, rate_limits));
    o.clusters = ["entra", "aoai", "aoai-v1"]
        .iter()
        .map(|n| Cluster::new(*n, standin.port()))
        .collect();
    o.backend_routes = vec!["aoai".into(), "aoai-v1".into()];
    o.concurrency = 2;
    let envoy = Envoy::start(o).await;
    (standin, envoy)
}

async fn setup(rate_limits: Value) -> (StandIn, Envoy) {
    setup_with(rate_limits, StandInConfig::default()).await
}

fn chat(words: &str, max_tokens: u64) -> Value {
    json!({"model": "gpt-4o", "max_tokens": max_tokens, "messages": [{"role": "user", "content": words}]})
}

/// The filter's estimate of a JSON request: ceil(bytes / 4) + its `max_tokens`.
fn estimate(body: &Value) -> u64 {
    let bytes = serde_json::to_vec(body).unwrap().len() as u64;
    bytes.div_ceil(4) + body["max_tokens"].as_u64().unwrap_or(0)
}

async fn post(envoy: &Envoy, body: &Value) -> reqwest::Response {
    client()
        .post(envoy.url("/v1/chat/completions"))
        .json(body)
        .send()
        .await
        .unwrap()
}

/// Tokens used in the counter before a probe request, and the probe's own real usage (charged
/// once it ends). `limit` is the counter's.
async fn used_before_probe(envoy: &Envoy, limit: u64) -> (u64, u64) {
    let probe = chat("probe", 1);
    let resp = post(envoy, &probe).await;
    assert_eq!(resp.status(), 200, "the probe is admitted");
    let remaining = common::header_u64(&resp, "x-ratelimit-remaining-tokens").unwrap();
    let body: Value = resp.json().await.unwrap();
    let used = limit - remaining - estimate(&probe);
    (used, body["usage"]["total_tokens"].as_u64().unwrap())
}

/// What the filter charged shows up once the request's stream is torn down in Envoy.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancelled_or_reset_stream_is_charged_its_reservation() {
    const BUDGET: u64 = 1000;
    let cfg = StandInConfig {
        chunk_delay_ms: 300,
        ..StandInConfig::default()
    };
    let (standin, envoy) = setup_with(json!({"default": {"tokens_per_day": BUDGET}}), cfg).await;
    let body = json!({"model": "gpt-4o", "stream": true, "max_tokens": 400,
        "messages": [{"role": "user", "content": "tell me a long story"}]});
    let each = estimate(&body);
    let mut cancelled = 0u64;
    let mut refused = None;
    for _ in 0..8 {
        let resp = post(&envoy, &body).await;
        if resp.status() != 200 {
            refused = Some(resp);
            break;
        }
        // Read the first content event, then hang up before the usage event.
        let mut stream = resp.bytes_stream();
        let first = stream.next().await.unwrap().unwrap();
        assert!(!first.is_empty());
        drop(stream);
        cancelled += 1;
        settle().await;
    }
    let refused = refused.expect("cancelled streams spend the budget");
    assert_eq!(refused.status(), 403, "a daily quota");
    assert_eq!(
        cancelled,
        BUDGET / each,
        "each cancelled stream kept its reservation of {each}"
    );
    let served = standin.count(EndpointKind::DataPlane) as u64;
    assert_eq!(served, cancelled, "the refused one never reached Azure");
    assert_eq!(
        envoy
            .stat(&format!(
                "wasmcustom.{}",
                azure_llm_filter::metrics::ratelimit("charged_estimate")
            ))
            .await,
        Some(cancelled),
        "the fail-safe charges are counted"
    );

    // A stream that Azure's side resets after its first events is charged the same way.
    let (standin, envoy) = setup(json!({"default": {"tokens_per_minute": 100_000}})).await;
    common::early_in_a_minute().await;
    standin.push_fault(
        EndpointKind::DataPlane,
        Fault::ResetMidStream { after_chunks: 2 },
        1,
    );
    let resp = post(&envoy, &body).await;
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    while let Some(Ok(_)) = stream.next().await {}
    settle().await;
    let (used, _) = used_before_probe(&envoy, 100_000).await;
    assert_eq!(used, each, "the reset stream is charged its reservation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_caller_asking_for_gzip_is_charged_exactly() {
    let (standin, envoy) = setup(json!({"default": {"tokens_per_minute": 100_000}})).await;
    common::early_in_a_minute().await;
    let body = chat("compress my answer please", 10);
    let resp = client()
        .post(envoy.url("/v1/chat/completions"))
        .header("accept-encoding", "gzip, deflate, br")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers().get("content-encoding"), None);
    let answer: Value = resp.json().await.unwrap();
    let real = answer["usage"]["total_tokens"].as_u64().unwrap();
    let seen = standin.requests_of(EndpointKind::DataPlane);
    assert_eq!(
        seen[0].header("accept-encoding"),
        None,
        "the filter does not let Azure compress what it must read"
    );
    settle().await;
    let (used, _) = used_before_probe(&envoy, 100_000).await;
    assert_eq!(used, real, "charged the real usage, not the estimate");
    assert_ne!(real, estimate(&body));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_20_mb_embeddings_answer_is_charged_exactly() {
    let (_standin, envoy) = setup(json!({"default": {"tokens_per_minute": 1_000_000}})).await;
    common::early_in_a_minute().await;
    let inputs: Vec<String> = (0..400).map(|i| format!("input number {i} here")).collect();
    let body = json!({"model": "embeddings", "input": inputs, "dimensions": 3072});
    let resp = client()
        .post(envoy.url("/v1/embeddings"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let bytes = resp.bytes().await.unwrap();
    assert!(
        bytes.len() > 20 * 1024 * 1024,
        "an answer of {} bytes",
        bytes.len()
    );
    let answer: Value = serde_json::from_slice(&bytes).unwrap();
    let real = answer["usage"]["total_tokens"].as_u64().unwrap();
    assert_eq!(real, 400 * 4);
    settle().await;
    let (used, _) = used_before_probe(&envoy, 1_000_000).await;
    assert_eq!(used, real);
}

fn form(parts: &[(&str, &str)]) -> Vec<u8> {
    let mut b = Vec::new();
    for (head, value) in parts {
        b.extend_from_slice(b"--XyZ\r\n");
        b.extend_from_slice(head.as_bytes());
        b.extend_from_slice(b"\r\n\r\n");
        b.extend_from_slice(value.as_bytes());
        b.extend_from_slice(b"\r\n");
    }
    b.extend_from_slice(b"--XyZ--\r\n");
    b
}

async fn transcribe(envoy: &Envoy, body: Vec<u8>, model_header: Option<&str>) -> reqwest::Response {
    let mut req = client()
        .post(envoy.url("/v1/audio/transcriptions"))
        .header("content-type", "multipart/form-data; boundary=XyZ")
        .body(body);
    if let Some(m) = model_header {
        req = req.header("x-model", m);
    }
    req.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_ambiguous_multipart_body_is_refused_and_an_unambiguous_one_routes_what_azure_reads() {
    // gpt-4o-transcribe has a budget of 1 request a minute; whisper none.
    let (standin, envoy) = setup(json!({
        "models": {"gpt-4o-transcribe": {"requests_per_minute": 1}}
    }))
    .await;
    common::early_in_a_minute().await;
    const FILE: &str = "Content-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav";
    let ok = |name: &str| format!("Content-Disposition: form-data; name={name}");

    // Unambiguous, with an unquoted name: routed to the model Azure reads.
    for (model, quoted) in [("whisper", false), ("gpt-4o-transcribe", true)] {
        let name = if quoted { "\"model\"" } else { "model" };
        let resp = transcribe(
            &envoy,
            form(&[(FILE, "RIFF...."), (&ok(name), model)]),
            None,
        )
        .await;
        assert_eq!(resp.status(), 200, "{model}");
        assert_eq!(
            resp.headers()["x-standin-deployment"].to_str().unwrap(),
            model
        );
    }
    let served = standin.count(EndpointKind::DataPlane);
    // The budget of gpt-4o-transcribe is spent; whisper's is not limited.
    let smuggled = [
        // A `--XyZ` inside the file part: the stand-in (like lenient servers) reads the
        // last model, gpt-4o-transcribe; the filter would have read whisper.
        form(&[
            (
                FILE,
                "RIFF--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper",
            ),
            (&ok("model"), "gpt-4o-transcribe"),
        ]),
        // Two model fields.
        form(&[
            (&ok("model"), "whisper"),
            (&ok("\"model\""), "gpt-4o-transcribe"),
        ]),
        // A look-alike name.
        form(&[
            (&ok("\"Model\""), "gpt-4o-transcribe"),
            (&ok("model"), "whisper"),
        ]),
    ];
    for body in smuggled {
        let resp = transcribe(&envoy, body.clone(), None).await;
        assert_eq!(resp.status(), 400, "{}", String::from_utf8_lossy(&body));
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["code"], "invalid_multipart_body");
    }
    // The model header names whisper, the body another model the backend would read.
    let resp = transcribe(
        &envoy,
        form(&[(FILE, "RIFF"), (&ok("model"), "gpt-4o-transcribe")]),
        Some("whisper"),
    )
    .await;
    assert_eq!(resp.status(), 400);
    assert_eq!(
        standin.count(EndpointKind::DataPlane),
        served,
        "nothing reached Azure"
    );
    // And the spent budget really is gpt-4o-transcribe's.
    let resp = transcribe(&envoy, form(&[(&ok("model"), "gpt-4o-transcribe")]), None).await;
    assert_eq!(resp.status(), 429);
}

/// 20 requests at once against a budget that fits only a few of them, as in the issue: answers
/// of 400 tokens, which cost more than their estimate (two-letter words: 1 token per 3 bytes
/// where the estimate counts 4), so the estimate error is what the budget can be exceeded by,
/// and nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_at_the_edge_consume_at_most_the_budget_plus_the_estimate_error() {
    const BUDGET: u64 = 1000;
    const CALLERS: usize = 20;
    const WORDS: u64 = 385;
    // The stand-in's usage: 3 + words for the message, 12 completion tokens.
    const REAL: u64 = 3 + WORDS + 12;
    for already_spent in [0u64, 900] {
        let (standin, envoy) = setup(json!({"default": {"tokens_per_minute": BUDGET}})).await;
        common::early_in_a_minute().await;
        let body = chat(&"ab ".repeat(WORDS as usize), 12);
        let each_estimate = estimate(&body);
        if already_spent > 0 {
            let filler =
                json!({"model": "embeddings", "input": "x ".repeat(already_spent as usize)});
            let resp = client()
                .post(envoy.url("/v1/embeddings"))
                .json(&filler)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            settle().await;
        }
        let served_before = standin.count(EndpointKind::DataPlane);
        let mut tasks = Vec::new();
        for _ in 0..CALLERS {
            let url = envoy.url("/v1/chat/completions");
            let body = body.clone();
            // A client (connection) each, so that Envoy spreads them over both workers.
            tasks.push(tokio::spawn(async move {
                let resp = client().post(url).json(&body).send().await.unwrap();
                let status = resp.status().as_u16();
                let v: Value = resp.json().await.unwrap_or(Value::Null);
                (status, v["usage"]["total_tokens"].as_u64().unwrap_or(0))
            }));
        }
        let mut admitted = 0u64;
        let mut consumed = 0u64;
        for t in tasks {
            let (status, tokens) = t.await.unwrap();
            match status {
                200 => {
                    admitted += 1;
                    consumed += tokens;
                    assert_eq!(tokens, REAL);
                }
                429 => {}
                other => panic!("unexpected status {other}"),
            }
        }
        assert_eq!(
            standin.count(EndpointKind::DataPlane) - served_before,
            admitted as usize
        );
        let left = BUDGET - already_spent;
        let error_per_request = REAL.saturating_sub(each_estimate);
        println!(
            "budget {BUDGET}, {already_spent} already spent: {CALLERS} concurrent requests of \
             estimate {each_estimate} and real usage {REAL}: {admitted} admitted, {consumed} tokens \
             consumed (bound: {left} + {admitted} x {error_per_request})"
        );
        assert!(
            error_per_request > 0,
            "the test's answers exceed their estimates"
        );
        assert_eq!(
            admitted,
            left / each_estimate,
            "exactly the reservations that fit"
        );
        assert!(
            consumed <= left + admitted * error_per_request,
            "{consumed} tokens for the {left} left"
        );
        assert!(
            CALLERS as u64 * REAL > left,
            "all {CALLERS} would overshoot the budget if they were admitted"
        );
        // The counter holds exactly what was consumed.
        settle().await;
        if admitted > 0 {
            let resp = post(&envoy, &chat("probe", 1)).await;
            assert_eq!(resp.status(), 429, "the budget is spent");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ratelimit_headers_are_the_workloads_and_azures_429_passes_untouched() {
    let (standin, envoy) = setup(json!({"default": {"tokens_per_minute": 50_000}})).await;
    common::early_in_a_minute().await;
    let body = chat("headers please", 5);
    let resp = post(&envoy, &body).await;
    assert_eq!(resp.status(), 200);
    // The stand-in sends x-ratelimit-remaining-tokens/-requests of its own (Azure's figures).
    // The workload has a token limit only: its token figures replace Azure's, and Azure's
    // request figures are removed rather than left to look like the workload's.
    assert_eq!(
        common::header_u64(&resp, "x-ratelimit-remaining-tokens"),
        Some(50_000 - estimate(&body)),
        "the reservation at admission"
    );
    assert_eq!(
        common::header_u64(&resp, "x-ratelimit-limit-tokens"),
        Some(50_000)
    );
    assert!(resp
        .headers()
        .get("x-ratelimit-remaining-requests")
        .is_none());
    let real = resp.json::<Value>().await.unwrap()["usage"]["total_tokens"]
        .as_u64()
        .unwrap();
    settle().await;

    // Azure's own 429: status, retry-after, retry-after-ms and x-ratelimit-* as Azure sent them,
    // and the reservation given back (Azure does not bill a 429).
    standin.push_fault(
        EndpointKind::DataPlane,
        Fault::RateLimited {
            retry_after_secs: 7,
        },
        1,
    );
    let resp = post(&envoy, &body).await;
    assert_eq!(resp.status(), 429);
    let h = resp.headers();
    assert_eq!(h["retry-after"], "7");
    assert_eq!(h["retry-after-ms"], "7000");
    assert_eq!(h["x-ratelimit-remaining-tokens"], "0");
    assert_eq!(h["x-ratelimit-remaining-requests"], "0");
    assert!(h.get("x-ratelimit-limit-tokens").is_none());
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "429");
    settle().await;
    let (used, _) = used_before_probe(&envoy, 50_000).await;
    assert_eq!(used, real, "only the first request is charged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reserve_false_keeps_charging_after_the_answer() {
    let (_standin, envoy) =
        setup(json!({"default": {"tokens_per_minute": 50_000}, "reserve": false})).await;
    common::early_in_a_minute().await;
    let resp = post(&envoy, &chat("no reservation", 5)).await;
    assert_eq!(
        common::header_u64(&resp, "x-ratelimit-remaining-tokens"),
        Some(50_000),
        "nothing reserved at admission"
    );
    let real = resp.json::<Value>().await.unwrap()["usage"]["total_tokens"]
        .as_u64()
        .unwrap();
    settle().await;
    let resp = post(&envoy, &chat("no reservation", 5)).await;
    assert_eq!(
        common::header_u64(&resp, "x-ratelimit-remaining-tokens"),
        Some(50_000 - real)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_caller_gone_before_the_answer_pays_its_reservation_unless_nothing_was_sent() {
    let (standin, envoy) = setup(json!({"default": {"tokens_per_minute": 100_000}})).await;
    common::early_in_a_minute().await;
    let body = chat("think about it for a while", 50);
    let impatient = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();

    // Still waiting for its Entra token when the caller leaves: it never reached Azure.
    standin.push_fault(
        EndpointKind::Token,
        Fault::Delay(Duration::from_millis(1500)),
        1,
    );
    let gone = impatient
        .post(envoy.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await;
    assert!(gone.is_err(), "the caller gave up");
    tokio::time::sleep(Duration::from_millis(1700)).await;
    assert_eq!(standin.count(EndpointKind::DataPlane), 0);
    let (used, probe) = used_before_probe(&envoy, 100_000).await;
    assert_eq!(used, 0, "nothing sent, nothing charged");
    settle().await;

    // Sent, and Azure is still working on it when the caller leaves: Azure may bill it.
    standin.push_fault(
        EndpointKind::DataPlane,
        Fault::Delay(Duration::from_millis(1000)),
        1,
    );
    let gone = impatient
        .post(envoy.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await;
    assert!(gone.is_err(), "the caller gave up");
    settle().await;
    let (used, _) = used_before_probe(&envoy, 100_000).await;
    assert_eq!(used, probe + estimate(&body), "charged its reservation");

    // Azure compresses an answer anyway (the filter asked it not to): unreadable, so charged
    // its reservation rather than nothing.
    let (standin, envoy) = setup(json!({"default": {"tokens_per_minute": 100_000}})).await;
    common::early_in_a_minute().await;
    standin.push_fault(
        EndpointKind::DataPlane,
        Fault::ExtraHeaders(vec![("content-encoding".into(), "gzip".into())]),
        1,
    );
    let resp = post(&envoy, &body).await;
    assert_eq!(resp.status(), 200);
    let _ = resp.bytes().await.unwrap();
    settle().await;
    let (used, _) = used_before_probe(&envoy, 100_000).await;
    assert_eq!(used, estimate(&body));
}
