//! Issue 18, end to end through a real Envoy: the OpenTelemetry GenAI histograms in
//! `/stats/prometheus` with the right bucket counts for known JSON and streamed answers (time
//! to first token against a stand-in that holds back its first event), cached and reasoning
//! tokens counted by type, the cost of the price table, and the per-request usage record over
//! OTLP/gRPC (one record per request, the prompt only when capture is on).

mod common;

use azure_otlp::OtlpReceiver;
use azure_standin::{Deployment, EndpointKind, StandIn, StandInConfig};
use common::{client, Cluster, Envoy, EnvoyOptions};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The stand-in's time to first token and inter-event delay for streams. Like Azure, it sends
/// the token-less events at once (Azure OpenAI's `prompt_filter_results` and role chunks,
/// Anthropic's `message_start`, `content_block_start` and `ping`, the Responses API's
/// `response.created` ...) and holds back the first event that carries output.
const FIRST_TOKEN_DELAY_MS: u64 = 300;
const CHUNK_DELAY_MS: u64 = 45;

async fn standin() -> StandIn {
    let mut cfg = StandInConfig {
        first_token_delay_ms: FIRST_TOKEN_DELAY_MS,
        chunk_delay_ms: CHUNK_DELAY_MS,
        ..StandInConfig::default()
    };
    cfg.deployments
        .push(Deployment::new("o3-mini", "o3-mini", "OpenAI"));
    StandIn::start(cfg).await.unwrap()
}

/// gpt-4o and o3-mini on one Azure OpenAI backend, priced; `extra` merges into the config.
fn plugin(standin: &StandIn, extra: Value) -> Value {
    let mut plugin = json!({
        "credentials": common::standin_credentials(&standin.tenant_id()),
        "backends": {
            "aoai": {"kind": "azure_openai", "host": "r.openai.azure.com", "api_version": "2024-10-21", "credential": "main"},
            "aoai-v1": {"kind": "azure_openai_v1", "host": "r.openai.azure.com", "credential": "main"},
            "claude": {"kind": "foundry_anthropic", "host": "f.services.ai.azure.com", "credential": "main"}
        },
        "models": {
            "gpt-4o": {"backend": "aoai", "deployment": "gpt-4o-prod"},
            "o3-mini": {"backend": "aoai", "deployment": "o3-mini"},
            "gpt-4o-v1": {"backend": "aoai-v1", "deployment": "gpt-4o-prod"},
            "embeddings": {"backend": "aoai", "deployment": "text-embedding-3-small"},
            "claude-opus-4-5": {"backend": "claude", "deployment": "claude-opus-4-5"}
        },
        "rate_limits": {"default": {"tokens_per_minute": 10000000}},
        "pricing": {"currency": "USD", "models": {
            "gpt-4o": {"input": 2.5, "cached_input": 1.25, "output": 10},
            "o3-mini": {"input": 1.1, "cached_input": 0.55, "output": 4.4},
            "claude-opus-4-5": {"input": 5, "cached_input": 0.5, "output": 25}
        }}
    });
    if let (Some(p), Some(e)) = (plugin.as_object_mut(), extra.as_object()) {
        p.extend(e.clone());
    }
    plugin
}

async fn start(standin: &StandIn, extra: Value, otlp: Option<&OtlpReceiver>) -> Envoy {
    let mut o = EnvoyOptions::new(plugin(standin, extra));
    o.clusters = vec![
        Cluster::new("entra", standin.port()),
        Cluster::new("aoai", standin.port()),
        Cluster::new("aoai-v1", standin.port()),
        Cluster::new("claude", standin.port()),
    ];
    o.backend_routes = vec!["aoai".into(), "aoai-v1".into(), "claude".into()];
    o.otlp_port = otlp.map(OtlpReceiver::port);
    Envoy::start(o).await
}

async fn chat(envoy: &Envoy, body: Value) -> (u16, String) {
    let resp = client()
        .post(envoy.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}

/// The usage of a JSON answer or of the usage chunk of a stream.
fn usage_of(answer: &str) -> Value {
    if let Ok(v) = serde_json::from_str::<Value>(answer) {
        return v["usage"].clone();
    }
    answer
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .map(|v| v["usage"].clone())
        .find(|u| u.is_object())
        .unwrap_or(Value::Null)
}

/// One sample of a Prometheus text exposition: name, labels, value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn parse_prometheus(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let labels = labels
            .split("\",")
            .filter(|p| !p.is_empty())
            .filter_map(|p| {
                let (k, v) = p.split_once("=\"")?;
                Some((k.to_string(), v.trim_end_matches('"').to_string()))
            })
            .collect();
        out.push(Sample {
            name: name.to_string(),
            labels,
            value: value.parse().unwrap_or(f64::NAN),
        });
    }
    out
}

struct Scrape(Vec<Sample>);

impl Scrape {
    /// The value of the one series `name` whose labels include `want`.
    fn value(&self, name: &str, want: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<&Sample> = self
            .0
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                want.iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect();
        assert!(matching.len() <= 1, "{name} {want:?}: {matching:?}");
        matching.first().map(|s| s.value)
    }

    /// Cumulative bucket counts of a histogram series at the given boundaries.
    fn buckets(&self, metric: &str, want: &[(&str, &str)], les: &[&str]) -> Vec<u64> {
        les.iter()
            .map(|le| {
                let mut w = want.to_vec();
                w.push(("le", le));
                self.value(&format!("{metric}_bucket"), &w)
                    .unwrap_or_else(|| panic!("no {metric}_bucket {w:?}")) as u64
            })
            .collect()
    }
}

/// Scrapes until `ready` holds (the workers' histograms reach the admin after a flush, which
/// each scrape asks for) or 10 s passed; returns the last scrape.
async fn scrape_until(envoy: &Envoy, ready: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = client()
            .get(envoy.admin_url("/stats/prometheus"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let s = Scrape(parse_prometheus(&text));
        if ready(&s) || Instant::now() >= deadline {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The GenAI labels of gpt-4o chat requests (no workload: histograms are per workload only
/// with `gen_ai_histograms_per_workload`), the provider as the convention spells it.
const CHAT: [(&str, &str); 4] = [
    ("backend", "aoai"),
    ("gen_ai_operation_name", "chat"),
    ("gen_ai_provider_name", "azure.ai.openai"),
    ("gen_ai_request_model", "gpt-4o"),
];

fn with<'a>(base: &[(&'a str, &'a str)], more: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    base.iter().chain(more).copied().collect()
}

#[tokio::test]
async fn histograms_of_json_and_streamed_answers() {
    let standin = standin().await;
    let envoy = start(&standin, json!({}), None).await;

    // JSON: 3 + 4 prompt tokens, 5 completion tokens.
    let (status, body) = chat(
        &envoy,
        json!({"model": "gpt-4o", "max_tokens": 5, "messages": [{"role": "user", "content": "count these four words"}]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(usage_of(&body)["prompt_tokens"], 7);
    assert_eq!(usage_of(&body)["completion_tokens"], 5);

    // Stream: 3 + 20 prompt tokens, 3 completion tokens. Azure's order: the prompt-filter
    // chunk at once, the role chunk 45 ms later, the first token 300 ms after it, then the
    // other events 45 ms apart: TTFT ~345 ms (to the first token, not to the first chunk),
    // duration ~525 ms to the usage chunk, (525 - 345) / (3 - 1) = ~90 ms per output token
    // after the first.
    let words = vec!["w"; 20].join(" ");
    let started = Instant::now();
    let (status, body) = chat(
        &envoy,
        json!({"model": "gpt-4o", "max_tokens": 3, "stream": true, "stream_options": {"include_usage": true}, "messages": [{"role": "user", "content": words}]}),
    )
    .await;
    let client_duration = started.elapsed();
    assert_eq!(status, 200, "{body}");
    assert_eq!(usage_of(&body)["prompt_tokens"], 23, "{body}");
    assert_eq!(usage_of(&body)["completion_tokens"], 3, "{body}");
    assert!(client_duration >= Duration::from_millis(FIRST_TOKEN_DELAY_MS + 6 * CHUNK_DELAY_MS));

    let scrape = scrape_until(&envoy, |s| {
        s.value(
            "gen_ai_server_time_to_first_token_milliseconds_count",
            &CHAT,
        ) == Some(1.0)
            && s.value("gen_ai_server_request_duration_milliseconds_count", &CHAT) == Some(2.0)
    })
    .await;
    let input = with(&CHAT, &[("gen_ai_token_type", "input")]);
    let output = with(&CHAT, &[("gen_ai_token_type", "output")]);
    let cached = with(&CHAT, &[("gen_ai_token_type", "cached_input")]);
    // Input 7 and 23: one in (4, 16], one in (16, 64].
    assert_eq!(
        scrape.buckets(
            "gen_ai_client_token_usage",
            &input,
            &["4", "16", "64", "+Inf"]
        ),
        vec![0, 1, 2, 2]
    );
    // Output 5 and 3: one in (1, 4], one in (4, 16].
    assert_eq!(
        scrape.buckets(
            "gen_ai_client_token_usage",
            &output,
            &["1", "4", "16", "+Inf"]
        ),
        vec![0, 1, 2, 2]
    );
    // Azure reports `cached_tokens: 0` for both: two observations of 0.
    assert_eq!(
        scrape.buckets("gen_ai_client_token_usage", &cached, &["1", "+Inf"]),
        vec![2, 2]
    );
    // Only the stream has a time to first token, ~345 ms: in (250, 500] (the first chunk
    // came at ~0 ms, which the histogram must not show).
    assert_eq!(
        scrape.buckets(
            "gen_ai_server_time_to_first_token_milliseconds",
            &CHAT,
            &["250", "500", "+Inf"]
        ),
        vec![0, 1, 1]
    );
    // ~90 ms per token after the first (the answer ends at its usage chunk: 4 x 45 ms over 2
    // tokens; ~112 ms if it ended at `[DONE]`): in (75, 150]. (The stand-in's timers only ever
    // wait longer, so the lower bound is safe; the upper one allows 120 ms of delay. Timed from
    // the first chunk, it read ~260 ms.)
    assert_eq!(
        scrape.buckets(
            "gen_ai_server_time_per_output_token_milliseconds",
            &CHAT,
            &["75", "150", "+Inf"]
        ),
        vec![0, 1, 1]
    );
    // Durations: the JSON answer well under 320 ms, the stream ~525 ms in (320, 640].
    assert_eq!(
        scrape.buckets(
            "gen_ai_server_request_duration_milliseconds",
            &CHAT,
            &["320", "640", "+Inf"]
        ),
        vec![1, 2, 2]
    );
}

#[tokio::test]
async fn cached_and_reasoning_tokens_by_type_and_their_cost() {
    let standin = standin().await;
    let envoy = start(&standin, json!({}), None).await;
    // A 1100-word system prompt, sent twice: the second request reads 1024 tokens from
    // Azure's prompt cache.
    let system = vec!["policy"; 1100].join(" ");
    let ask = |q: &str| {
        json!({"model": "gpt-4o", "max_tokens": 2, "messages": [
            {"role": "system", "content": system}, {"role": "user", "content": q}]})
    };
    let mut usages = Vec::new();
    for q in ["first question", "second question here"] {
        let (status, body) = chat(&envoy, ask(q)).await;
        assert_eq!(status, 200, "{body}");
        usages.push(usage_of(&body));
    }
    assert_eq!(usages[0]["prompt_tokens_details"]["cached_tokens"], 0);
    assert_eq!(usages[1]["prompt_tokens_details"]["cached_tokens"], 1024);
    // A reasoning model, streamed: 3 visible output tokens and 12 reasoning ones.
    let (status, body) = chat(
        &envoy,
        json!({"model": "o3-mini", "max_completion_tokens": 3, "stream": true, "stream_options": {"include_usage": true}, "messages": [{"role": "user", "content": "think"}]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let reasoning_usage = usage_of(&body);
    assert_eq!(reasoning_usage["completion_tokens"], 15, "{body}");
    assert_eq!(
        reasoning_usage["completion_tokens_details"]["reasoning_tokens"],
        12
    );

    let o3 = [
        ("workload", "anonymous"),
        ("model", "o3-mini"),
        ("backend", "aoai"),
    ];
    let scrape = scrape_until(&envoy, |s| {
        s.value(
            "gen_ai_client_token_usage_count",
            &[
                ("gen_ai_request_model", "o3-mini"),
                ("gen_ai_token_type", "reasoning_output"),
            ],
        ) == Some(1.0)
            && s.value("azure_llm_tokens", &with(&o3, &[("kind", "reasoning")])) == Some(12.0)
    })
    .await;
    let g4 = [
        ("workload", "anonymous"),
        ("model", "gpt-4o"),
        ("backend", "aoai"),
    ];
    let prompt_total: u64 = usages
        .iter()
        .map(|u| u["prompt_tokens"].as_u64().unwrap())
        .sum();
    for (kind, want) in [
        ("prompt", prompt_total),
        ("completion", 4),
        ("cached_prompt", 1024),
        ("reasoning", 0),
    ] {
        assert_eq!(
            scrape.value("azure_llm_tokens", &with(&g4, &[("kind", kind)])),
            Some(want as f64),
            "gpt-4o {kind}"
        );
    }
    assert_eq!(
        scrape.value("azure_llm_tokens", &with(&o3, &[("kind", "completion")])),
        Some(15.0)
    );
    // The cached histogram: one request with 0 cached, one with 1024 (in (256, 4096]; not on a
    // boundary: Envoy's histograms bin values to two significant digits).
    let g4_hist = with(&CHAT, &[("gen_ai_token_type", "cached_input")]);
    assert_eq!(
        scrape.buckets(
            "gen_ai_client_token_usage",
            &g4_hist,
            &["1", "256", "4096", "+Inf"]
        ),
        vec![1, 1, 2, 2]
    );
    // Cost, exactly, in micro-dollars: uncached input at 2.5, cached at 1.25, output at 10
    // per million tokens (pico-units summed, then cut to micro-units).
    let pico_g4: u64 = usages
        .iter()
        .map(|u| {
            let p = u["prompt_tokens"].as_u64().unwrap();
            let c = u["prompt_tokens_details"]["cached_tokens"]
                .as_u64()
                .unwrap();
            let out = u["completion_tokens"].as_u64().unwrap();
            (p - c) * 2_500_000 + c * 1_250_000 + out * 10_000_000
        })
        .sum();
    assert_eq!(
        scrape.value(
            "azure_llm_cost_micros",
            &[
                ("workload", "anonymous"),
                ("model", "gpt-4o"),
                ("currency", "USD")
            ]
        ),
        Some((pico_g4 / 1_000_000) as f64)
    );
    // o3-mini: 3 input tokens... (3 + 1 word) at 1.1, 15 output at 4.4.
    let pico_o3 = reasoning_usage["prompt_tokens"].as_u64().unwrap() * 1_100_000 + 15 * 4_400_000;
    assert_eq!(
        scrape.value(
            "azure_llm_cost_micros",
            &[
                ("workload", "anonymous"),
                ("model", "o3-mini"),
                ("currency", "USD")
            ]
        ),
        Some((pico_o3 / 1_000_000) as f64)
    );
    // The access log carries the details and the request's cost.
    let logs = envoy.logs();
    let second = logs
        .lines()
        .filter(|l| l.contains("model=gpt-4o"))
        .nth(1)
        .unwrap_or_else(|| panic!("{logs}"));
    assert!(second.contains("cached_prompt_tokens=1024"), "{second}");
    assert!(second.contains("reasoning_tokens=0"), "{second}");
}

/// What the usage record of a routed chat request says.
fn assert_routed_record(r: &azure_otlp::ReceivedLog, prompt_tokens: u64) {
    for (k, v) in [
        ("gen_ai.operation.name", "chat"),
        ("gen_ai.provider.name", "azure.ai.openai"),
        ("gen_ai.request.model", "gpt-4o"),
        ("azure_llm.workload", "anonymous"),
        ("azure_llm.backend", "aoai"),
        ("azure_llm.deployment", "gpt-4o-prod"),
        ("azure_llm.ratelimit", "allowed"),
        ("azure_llm.currency", "USD"),
        ("http.request.method", "POST"),
        (
            "azure_llm.upstream_path",
            "/openai/deployments/gpt-4o-prod/chat/completions?api-version=2024-10-21",
        ),
        ("http.response.status_code", "200"),
    ] {
        assert_eq!(r.attr(k), Some(v), "{k} in {r:?}");
    }
    assert_eq!(
        r.attr("gen_ai.usage.input_tokens"),
        Some(prompt_tokens.to_string().as_str())
    );
    assert!(r
        .attr("azure_llm.cost_micros")
        .is_some_and(|c| c.parse::<u64>().is_ok()));
    assert_eq!(
        r.body,
        "POST /openai/deployments/gpt-4o-prod/chat/completions?api-version=2024-10-21 200"
    );
}

#[tokio::test]
async fn usage_record_one_per_request_over_otlp() {
    let standin = standin().await;
    let otlp = OtlpReceiver::start().unwrap();
    let envoy = start(&standin, json!({}), Some(&otlp)).await;
    let (status, body) = chat(
        &envoy,
        json!({"model": "gpt-4o", "max_tokens": 2, "messages": [
            {"role": "system", "content": "internal rules"}, {"role": "user", "content": "hello record"}]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = chat(&envoy, json!({"model": "gpt-4o", "max_tokens": 2, "stream": true, "messages": [{"role": "user", "content": "stream it"}]})).await;
    assert_eq!(status, 200);
    let (status, _) = chat(
        &envoy,
        json!({"model": "nope", "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(status, 404);

    let logs = otlp.wait_for(3, Duration::from_secs(10)).await;
    // No more than one per request arrives later either.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let logs_after = otlp.logs();
    assert_eq!(logs.len(), 3, "{logs:#?}");
    assert_eq!(logs_after.len(), 3, "{logs_after:#?}");
    let json_record = &logs[0];
    assert_routed_record(json_record, 3 + 2 + 3 + 2);
    assert_eq!(json_record.attr("gen_ai.usage.output_tokens"), Some("2"));
    assert_eq!(
        json_record.attr("gen_ai.usage.cache_read.input_tokens"),
        Some("0")
    );
    // Off by default: no prompt, no answer, and no time to first token for a JSON answer.
    for k in [
        "azure_llm.prompt",
        "azure_llm.answer",
        "azure_llm.time_to_first_token_ms",
    ] {
        assert!(
            json_record.attr(k).is_none_or(|v| v == "-"),
            "{k} in {json_record:?}"
        );
    }
    assert_eq!(
        json_record.resource.get("log_name").map(String::as_str),
        Some("azure_llm_usage")
    );
    // The caller did not ask for stream usage: the filter asked Azure for it (and took the
    // usage chunk out of the answer), so the record still has it.
    let stream_record = &logs[1];
    assert_routed_record(stream_record, 3 + 2);
    let ttft: u64 = stream_record
        .attr("azure_llm.time_to_first_token_ms")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{stream_record:?}"));
    assert!(ttft >= FIRST_TOKEN_DELAY_MS, "{ttft}");
    let refused = &logs[2];
    assert_eq!(refused.attr("http.response.status_code"), Some("404"));
    assert_eq!(refused.attr("azure_llm.workload"), Some("anonymous"));
    assert!(refused
        .attr("gen_ai.usage.input_tokens")
        .is_none_or(|v| v == "-"));
    // Nothing secret in any record.
    for r in &logs {
        let text = format!("{r:?}");
        assert!(
            !text.contains("standin-secret") && !text.contains("eyJ"),
            "{text}"
        );
    }
}

#[tokio::test]
async fn prompt_and_answer_only_when_capture_is_on() {
    let standin = standin().await;
    let otlp = OtlpReceiver::start().unwrap();
    let envoy = start(
        &standin,
        json!({"capture": {"prompt": true, "answer": true, "max_bytes": 200, "drop_content_of_roles": ["system"]}}),
        Some(&otlp),
    )
    .await;
    let (status, body) = chat(
        &envoy,
        json!({"model": "gpt-4o", "max_tokens": 3, "messages": [
            {"role": "system", "content": "internal rules nobody may log"},
            {"role": "user", "content": "hello record"}]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = chat(&envoy, json!({"model": "gpt-4o", "max_tokens": 2, "stream": true, "stream_options": {"include_usage": true}, "messages": [{"role": "user", "content": "y".repeat(1000)}]})).await;
    assert_eq!(status, 200);
    let logs = otlp.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(logs.len(), 2, "{logs:#?}");
    let prompt = logs[0].attr("azure_llm.prompt").unwrap();
    assert!(prompt.contains("hello record"), "{prompt}");
    assert!(
        !prompt.contains("internal rules"),
        "the system message's content is dropped: {prompt}"
    );
    assert!(prompt.contains(r#""role":"system""#), "{prompt}");
    assert_eq!(logs[0].attr("azure_llm.answer"), Some("This is a"));
    // The stream's answer is its joined deltas; its 1000-byte prompt is cut at 200 bytes.
    assert_eq!(logs[1].attr("azure_llm.answer"), Some("This is"));
    let long = logs[1].attr("azure_llm.prompt").unwrap();
    assert!(long.len() <= 200 && long.ends_with("..."), "{long}");
}

#[tokio::test]
async fn a_collector_that_fails_never_fails_requests() {
    let standin = standin().await;
    let otlp = OtlpReceiver::start().unwrap();
    otlp.set_refusing(true);
    let envoy = start(&standin, json!({}), Some(&otlp)).await;
    for _ in 0..3 {
        let (status, body) = chat(
            &envoy,
            json!({"model": "gpt-4o", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}]}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    drop(otlp);
    let (status, _) = chat(
        &envoy,
        json!({"model": "gpt-4o", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn histograms_can_be_turned_off_counters_stay() {
    let standin = standin().await;
    let envoy = start(&standin, json!({"gen_ai_histograms": false}), None).await;
    let (status, body) = chat(
        &envoy,
        json!({"model": "gpt-4o", "max_tokens": 2, "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let scrape = scrape_until(&envoy, |s| {
        s.value(
            "azure_llm_tokens",
            &[("model", "gpt-4o"), ("kind", "completion")],
        ) == Some(2.0)
    })
    .await;
    assert_eq!(
        scrape.value(
            "azure_llm_tokens",
            &[("model", "gpt-4o"), ("kind", "completion")]
        ),
        Some(2.0)
    );
    assert!(scrape
        .value("azure_llm_cost_micros", &[("model", "gpt-4o")])
        .is_some());
    assert!(
        !scrape.0.iter().any(|s| s.name.starts_with("gen_ai_")),
        "no GenAI histogram when turned off"
    );
}

/// Anthropic on Foundry, streamed: the cache reads of `message_start` are the cached input
/// (Anthropic reports them beside `input_tokens`), priced at the cached rate.
#[tokio::test]
async fn anthropic_cache_reads_by_type_and_cost() {
    let standin = standin().await;
    let envoy = start(&standin, json!({}), None).await;
    let system = vec!["policy"; 1100].join(" ");
    let mut starts = Vec::new();
    for q in ["question one", "question two"] {
        let resp = client()
            .post(envoy.url("/anthropic/v1/messages"))
            .header("anthropic-version", "2023-06-01")
            .json(
                &json!({"model": "claude-opus-4-5", "max_tokens": 3, "stream": true,
                          "system": system, "messages": [{"role": "user", "content": q}]}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let text = resp.text().await.unwrap();
        let start = text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .find(|v| v["type"] == "message_start")
            .unwrap_or_else(|| panic!("{text}"));
        starts.push(start["message"]["usage"].clone());
    }
    assert_eq!(starts[0]["cache_read_input_tokens"], 0);
    assert_eq!(starts[1]["cache_read_input_tokens"], 1024);
    // All input: 3 + 1100 system, 3 + 2 user.
    let input = 1103 + 5;
    assert_eq!(starts[1]["input_tokens"], input - 1024);

    let claude = [
        ("workload", "anonymous"),
        ("model", "claude-opus-4-5"),
        ("backend", "claude"),
    ];
    let scrape = scrape_until(&envoy, |s| {
        s.value(
            "gen_ai_client_token_usage_count",
            &[
                ("gen_ai_provider_name", "anthropic"),
                ("gen_ai_token_type", "cached_input"),
            ],
        ) == Some(2.0)
    })
    .await;
    for (kind, want) in [
        ("prompt", 2 * input),
        ("cached_prompt", 1024),
        ("completion", 6),
    ] {
        assert_eq!(
            scrape.value("azure_llm_tokens", &with(&claude, &[("kind", kind)])),
            Some(want as f64),
            "claude {kind}"
        );
    }
    let hist = [
        ("gen_ai_provider_name", "anthropic"),
        ("gen_ai_request_model", "claude-opus-4-5"),
        ("gen_ai_token_type", "cached_input"),
    ];
    assert_eq!(
        scrape.buckets("gen_ai_client_token_usage", &hist, &["1", "256", "4096"]),
        vec![1, 1, 2]
    );
    let pico: u64 =
        input * 5_000_000 + (input - 1024) * 5_000_000 + 1024 * 500_000 + 6 * 25_000_000;
    assert_eq!(
        scrape.value(
            "azure_llm_cost_micros",
            &[("model", "claude-opus-4-5"), ("currency", "USD")]
        ),
        Some((pico / 1_000_000) as f64)
    );
}

/// Issue 25: time to first token is to the first event that carries output, on each streamed
/// API, with the token-less events Azure sends first (at once) and the first token 300 ms
/// later; the record names the model that answered (`gen_ai.response.model`), JSON answers
/// included. Against the first-chunk timing of before, every TTFT here read ~0-45 ms.
#[tokio::test]
async fn time_to_first_token_is_to_the_first_output_of_each_api() {
    let standin = standin().await;
    let otlp = OtlpReceiver::start().unwrap();
    let envoy = start(&standin, json!({}), Some(&otlp)).await;
    let post = |path: &'static str, body: Value| {
        let envoy = &envoy;
        async move {
            let resp = client()
                .post(envoy.url(path))
                .header("anthropic-version", "2023-06-01")
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200, "{path}");
            resp.text().await.unwrap()
        }
    };
    let chat_stream = post(
        "/v1/chat/completions",
        json!({"model": "gpt-4o", "max_tokens": 2, "stream": true, "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    // Azure's order reached the caller: the prompt-filter chunk, then the token-less role chunk.
    let data: Vec<Value> = chat_stream
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str(d).ok())
        .collect();
    assert!(data[0]["prompt_filter_results"].is_array(), "{chat_stream}");
    assert_eq!(
        data[1]["choices"][0]["delta"]["content"], "",
        "{chat_stream}"
    );
    post(
        "/anthropic/v1/messages",
        json!({"model": "claude-opus-4-5", "max_tokens": 2, "stream": true, "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    post(
        "/v1/responses",
        json!({"model": "gpt-4o-v1", "max_output_tokens": 2, "stream": true, "input": "x"}),
    )
    .await;
    post(
        "/v1/chat/completions",
        json!({"model": "gpt-4o", "max_tokens": 2, "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;

    let logs = otlp.wait_for(4, Duration::from_secs(10)).await;
    assert_eq!(logs.len(), 4, "{logs:#?}");
    for (record, model) in logs[..3].iter().zip([
        "gpt-4o-2024-11-20",
        "claude-opus-4-5-20251101",
        "gpt-4o-2024-11-20",
    ]) {
        let ttft: u64 = record
            .attr("azure_llm.time_to_first_token_ms")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{record:?}"));
        assert!(ttft >= FIRST_TOKEN_DELAY_MS, "{ttft} ms in {record:?}");
        assert_eq!(
            record.attr("gen_ai.response.model"),
            Some(model),
            "{record:?}"
        );
    }
    let json_record = &logs[3];
    assert_eq!(
        json_record.attr("gen_ai.response.model"),
        Some("gpt-4o-2024-11-20")
    );
    assert!(json_record
        .attr("azure_llm.time_to_first_token_ms")
        .is_none_or(|v| v == "-"));

    // The histogram agrees: three streams, none under 250 ms.
    let scrape = scrape_until(&envoy, |s| {
        s.0.iter()
            .filter(|x| x.name == "gen_ai_server_time_to_first_token_milliseconds_count")
            .map(|x| x.value)
            .sum::<f64>()
            == 3.0
    })
    .await;
    let under_250: f64 = scrape
        .0
        .iter()
        .filter(|x| {
            x.name == "gen_ai_server_time_to_first_token_milliseconds_bucket"
                && x.labels.get("le").map(String::as_str) == Some("250")
        })
        .map(|x| x.value)
        .sum();
    assert_eq!(under_250, 0.0);
}

/// Issue 25: with Envoy's OpenTelemetry tracer (as the shipped files configure it), the span
/// of a routed request carries the GenAI attributes the filter left in filter state, and its
/// trace context reaches Azure (the router's `traceparent`, same trace id); values a request
/// lacks are absent from the span and from the usage record (an embeddings answer has no
/// output tokens, a refusal no usage), not `-`.
#[tokio::test]
async fn genai_spans_carry_the_attributes_and_the_trace_reaches_azure() {
    let standin = standin().await;
    let otlp = OtlpReceiver::start().unwrap();
    let envoy = start(&standin, json!({}), Some(&otlp)).await;
    let (status, body) = chat(
        &envoy,
        json!({"model": "gpt-4o", "max_tokens": 2, "messages": [{"role": "user", "content": "span me"}]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let sent = standin
        .requests_of(EndpointKind::DataPlane)
        .pop()
        .expect("a data-plane request");
    let traceparent = sent
        .header("traceparent")
        .unwrap_or_else(|| panic!("no trace context reached Azure: {sent:?}"))
        .to_string();
    let resp = client()
        .post(envoy.url("/v1/embeddings"))
        .json(&json!({"model": "embeddings", "input": "three words here"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (status, _) = chat(
        &envoy,
        json!({"model": "nope", "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(status, 404);

    let spans = otlp.wait_for_spans(3, Duration::from_secs(10)).await;
    let span = spans
        .iter()
        .find(|s| s.attr("gen_ai.request.model") == Some("gpt-4o"))
        .unwrap_or_else(|| panic!("no GenAI span: {spans:#?}"));
    for (k, v) in [
        ("gen_ai.operation.name", "chat"),
        ("gen_ai.provider.name", "azure.ai.openai"),
        ("gen_ai.response.model", "gpt-4o-2024-11-20"),
        ("gen_ai.usage.input_tokens", "5"),
        ("gen_ai.usage.output_tokens", "2"),
        ("gen_ai.usage.cache_read.input_tokens", "0"),
        ("azure_llm.workload", "anonymous"),
        ("azure_llm.backend", "aoai"),
        ("azure_llm.deployment", "gpt-4o-prod"),
    ] {
        assert_eq!(span.attr(k), Some(v), "{k} in {span:#?}");
    }
    // The stand-in reports `reasoning_tokens: 0` for gpt-4o, as Azure does.
    assert_eq!(span.attr("gen_ai.usage.reasoning.output_tokens"), Some("0"));
    // traceparent: version-traceid-parentid-flags; the upstream request belongs to this trace.
    let trace_id = traceparent.split('-').nth(1).unwrap_or_default();
    assert_eq!(trace_id, span.trace_id, "{traceparent} vs {span:?}");
    let refused = spans
        .iter()
        .find(|s| {
            s.attr("gen_ai.request.model").is_none() && s.attr("azure_llm.workload").is_some()
        })
        .unwrap_or_else(|| panic!("no span of the refusal: {spans:#?}"));
    assert!(refused.attr("gen_ai.usage.input_tokens").is_none());

    let logs = otlp.wait_for(3, Duration::from_secs(10)).await;
    assert_eq!(logs.len(), 3, "{logs:#?}");
    let embeddings = &logs[1];
    assert_eq!(embeddings.attr("gen_ai.operation.name"), Some("embeddings"));
    assert_eq!(
        embeddings.attr("gen_ai.usage.input_tokens"),
        Some("3"),
        "{embeddings:?}"
    );
    assert_eq!(
        embeddings.attr("gen_ai.usage.output_tokens"),
        None,
        "Azure reports no output for embeddings: {embeddings:?}"
    );
    let refusal = &logs[2];
    for k in [
        "gen_ai.usage.input_tokens",
        "gen_ai.request.model",
        "azure_llm.cost_micros",
    ] {
        assert_eq!(refusal.attr(k), None, "{k} is absent, not `-`: {refusal:?}");
    }
    assert_eq!(refusal.attr("http.response.status_code"), Some("404"));
}
