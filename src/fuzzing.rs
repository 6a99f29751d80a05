//! Fuzz targets: one function per parser of input that comes from outside the filter (the
//! operator's config, callers' tokens and bodies, answers of Entra, JWKS endpoints, Azure and
//! the rate limit service). Each runs the parser on arbitrary bytes and checks cheap invariants;
//! a panic is a bug.
//!
//! Two drivers share these functions: the cargo-fuzz crate in `fuzz/` (libFuzzer, nightly:
//! `cargo +nightly fuzz run <target>`), and `tests/fuzz_smoke.rs`, which runs every target on a
//! fixed, seeded set of random and mutated inputs inside `make test`. Native only: none of this
//! is in the .wasm.

use crate::auth::jwks::KeySet;
use crate::auth::{AuthConfig, Authenticator, RawAuthConfig};
use crate::config::Config;
use crate::entra::credential::{AssertionResponse, ManagedIdentityEndpoint};
use crate::{
    capture, entra, first_output, header_map, multipart, rls, routing, usage, usage_chunk,
    usage_json,
};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rsa::traits::PublicKeyParts;
use serde_json::{json, Value};
use std::sync::OnceLock;

/// Inputs of `target` in a smoke run of `n` per target: the guardrails' scanners compile
/// automata and scan every string of a body several times per input, which a debug build
/// does some 30 times slower than a release one, so they get a quarter.
pub fn smoke_iterations(target: &str, n: usize) -> usize {
    match target {
        "guard_scanners" => n / 4,
        _ => n,
    }
}

/// The guardrails' scanners (src/guard/fuzz.rs).
pub use crate::guard::fuzz::scanners as guard_scanners;

/// A target: its name (also the cargo-fuzz target's) and its function.
pub type Target = (&'static str, fn(&[u8]));

pub const TARGETS: &[Target] = &[
    ("plugin_config", plugin_config),
    ("caller_token", caller_token),
    ("jwks", jwks),
    ("entra_response", entra_response),
    ("request_body", request_body),
    ("usage_json", usage_json),
    ("multipart_form", multipart_form),
    ("sse_usage", sse_usage),
    ("usage_chunk", usage_chunk),
    ("header_map", header_map_bytes),
    ("rls_response", rls_response),
    ("target_answer", target_answer),
    ("capture", capture_text),
    ("guard_scanners", guard_scanners),
];

const NOW_S: u64 = 1_760_000_000;
const ISSUER: &str = "https://login.microsoftonline.com/11111111-1111-1111-1111-111111111111/v2.0";
const AUDIENCE: &str = "api://llm-gateway";

// ---------------------------------------------------------------------------------------------
// Targets

/// The plugin configuration: parsed and validated, or refused with a field name.
pub fn plugin_config(data: &[u8]) {
    match Config::parse(data) {
        Ok(config) => {
            // What the filter serves from a valid config is valid JSON.
            let models: Value = serde_json::from_str(&crate::discovery::list_models(&config))
                .unwrap_or(Value::Null);
            assert!(models["data"].is_array(), "GET /v1/models is a list");
        }
        Err(e) => assert!(!e.field.is_empty() || !e.reason.is_empty()),
    }
}

/// A caller's `Authorization` value through the whole check (shape, header, claims, policy,
/// signature) against an RS256 provider with an inline JWKS.
pub fn caller_token(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Some(fixture) = token_fixture() else {
        return; // the fixture is checked by this module's tests
    };
    thread_local! {
        // One per thread, as one per worker in Envoy: its verified-token cache carries over
        // from input to input, as it does from request to request.
        static AUTH: std::cell::RefCell<Option<Authenticator>> = std::cell::RefCell::new(
            token_fixture().map(|f| Authenticator::new(f.config.clone())),
        );
    }
    let value = format!("Bearer {text}");
    let result = AUTH.with(|a| {
        a.borrow_mut()
            .as_mut()
            .map(|auth| auth.authenticate(&[&value], &[], None, NOW_S * 1000))
    });
    if let Some(Ok(Some(caller))) = result {
        assert!(crate::auth::config::is_valid_workload(&caller.workload));
        // Accepted means signed by the fixture's key: the token must be one of the seeds'
        // header.payload with their exact signature.
        assert!(fixture.valid_tokens.iter().any(|t| t == text));
    }
}

/// A JWKS document, and an OIDC discovery document.
pub fn jwks(data: &[u8]) {
    if let Ok(parsed) = KeySet::parse(data) {
        // The canonical form (what goes into shared data) parses to the same number of keys.
        let again = KeySet::parse(parsed.canonical_json.as_bytes());
        assert!(again.is_ok_and(|p| p.keys.len() == parsed.keys.len()));
    }
    let _ = crate::auth::jwks::parse_discovery(data, "login.microsoftonline.com", &[ISSUER]);
}

/// Answers of the Entra token endpoint, IMDS / App Service, and a federated assertion endpoint.
/// The first byte picks the status, the second a Retry-After header.
pub fn entra_response(data: &[u8]) {
    let (status, retry_after, body) = match data {
        [s, r, body @ ..] => (
            [200, 400, 401, 404, 410, 429, 500, 503][usize::from(*s % 8)],
            [
                None,
                Some("5"),
                Some("-1"),
                Some("99999999999999999999"),
                Some("x"),
            ][usize::from(*r % 5)],
            body,
        ),
        _ => (200, None, data),
    };
    if let Ok(grant) = entra::parse_token_response(status, retry_after, body, NOW_S) {
        assert!(!grant.access_token.is_empty());
    }
    for endpoint in [
        ManagedIdentityEndpoint::Imds,
        ManagedIdentityEndpoint::AppService,
    ] {
        let _ = entra::managed_identity::parse_response(endpoint, status, retry_after, body, NOW_S);
    }
    for response in [
        AssertionResponse::Text,
        AssertionResponse::JsonField("token".into()),
    ] {
        if let Ok(assertion) =
            entra::federated::extract_assertion(&response, status, retry_after, body)
        {
            assert!(entra::federated::is_compact_jwt(&assertion));
        }
    }
    // Workload identity: the token file's content, the token route's error header and
    // AZURE_AUTHORITY_HOST are all outside input.
    let text = String::from_utf8_lossy(body);
    let wi = &entra::workload_identity::check_assertion;
    if let Err(f) = wi(&text, &["api://AzureADTokenExchange"], NOW_S) {
        assert!(!f.summary().contains('\n'));
    }
    let failure = entra::workload_identity::token_route_failure(status, Some(&text), Some(&text));
    assert!(!failure.description.contains('\n') && !failure.description.contains('\r'));
    if let Ok(host) = entra::workload_identity::authority_host_from_env(&text) {
        assert!(!host.is_empty() && !host.contains('/'));
    }
}

/// A request: method and path (first line), then the body: classified, read and rewritten.
pub fn request_body(data: &[u8]) {
    let (head, body) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&data[..0], data),
    };
    let head = String::from_utf8_lossy(head);
    let (method, path) = head.split_once(' ').unwrap_or(("POST", &head));
    if let Ok(Some(routing::Inbound::Api {
        path_model: Some(model),
        ..
    })) = routing::classify(method, path)
    {
        // A model taken from a path is safe to put back into one.
        assert!(!model.contains('/') && !model.contains("..") && !model.contains('?'));
    }
    let _ = routing::multipart_model("multipart/form-data; boundary=XyZ", body);
    if routing::read_body(body).is_err() {
        return;
    }
    // A pool attempt's rewrite changes only the model value's bytes: what precedes and
    // follows it is the caller's body as it came.
    let model = "gpt-4o-prod\u{e9}\"";
    if let Ok(Some(patched)) = routing::set_body_model(body, model) {
        let v: Value = serde_json::from_slice(&patched).unwrap_or(Value::Null);
        let mut want: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        want["model"] = Value::from(model);
        assert_eq!(
            v, want,
            "the patched body is the caller's with its model set"
        );
        let same = |a: &[u8], b: &[u8]| a.iter().zip(b).take_while(|(x, y)| x == y).count();
        let prefix = same(body, &patched);
        let rev = |x: &[u8]| x.iter().rev().copied().collect::<Vec<u8>>();
        let suffix = same(&rev(body), &rev(&patched));
        let written = serde_json::to_string(model).unwrap_or_default().len() + 10;
        assert!(
            prefix + suffix + written >= patched.len(),
            "one contiguous change: {prefix} + {suffix} of {}",
            patched.len()
        );
    }
    if let Ok(Some(rewritten)) = routing::rewrite_body(body, Some("gpt-4o-prod"), true) {
        let v: Value = serde_json::from_slice(&rewritten).unwrap_or(Value::Null);
        assert_eq!(
            v["model"], "gpt-4o-prod",
            "the rewritten body names the deployment"
        );
        assert_eq!(v["stream_options"]["include_usage"], true);
        let info = routing::read_body(&rewritten);
        assert!(info.is_ok_and(|i| i.include_usage));
    }
}

/// `usage` of a JSON answer: the streaming scanner the filter uses does not depend on how the
/// answer is cut into chunks, and agrees with the whole-body parser whenever both read one.
pub fn usage_json(data: &[u8]) {
    let reference = usage::from_json(data);
    if let Some(u) = reference {
        assert!(u.total() >= u.prompt_tokens.max(u.completion_tokens));
        // Details are parts of the totals, never more.
        assert!(u.cached_prompt_tokens.unwrap_or(0) <= u.prompt_tokens);
        assert!(u.reasoning_tokens.unwrap_or(0) <= u.completion_tokens);
    }
    let whole = usage_json::scan(data);
    let mut split = usage_json::JsonUsageScanner::new();
    for chunk in data_cut(data) {
        split.feed(chunk);
    }
    assert_eq!(whole, split.usage(), "usage depends on chunk boundaries");
    if let (Some(a), Some(b)) = (reference, whole) {
        assert_eq!(a, b, "the scanner and the whole-body parser disagree");
    }
}

/// A multipart/form-data body (boundary `XyZ`): a model is only ever read from a well-formed
/// field, and is what follows that field's empty line up to the next delimiter.
pub fn multipart_form(data: &[u8]) {
    if let Ok(Some(model)) = multipart::model_field("multipart/form-data; boundary=XyZ", data) {
        assert!(!model.is_empty() && !model.chars().any(char::is_control));
        let field = format!("\r\n\r\n{model}\r\n--XyZ");
        assert!(
            data.windows(field.len()).any(|w| w == field.as_bytes()),
            "the model is a whole field value"
        );
    }
    // The guardrails' prompt field: its range holds exactly its text, on a field value.
    if let Ok(fields) = multipart::text_fields("multipart/form-data; boundary=XyZ", data, "prompt")
    {
        for f in fields {
            let value = data.get(f.range.clone());
            assert!(value.is_some(), "the range is in the body");
            if let (Some(text), Some(value)) = (&f.text, value) {
                assert_eq!(text.as_bytes(), value);
            }
            assert!(data
                .get(..f.range.start)
                .is_some_and(|b| b.ends_with(b"\r\n")));
        }
    }
}

/// Chunks of `data` cut at points derived from the data itself.
fn data_cut(data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    let mut i = 0usize;
    while let Some(first) = rest.first() {
        let n = (usize::from(*first) ^ i) % 17 + 1;
        let (chunk, tail) = rest.split_at(n.min(rest.len()));
        out.push(chunk);
        rest = tail;
        i += 1;
    }
    out
}

/// An SSE stream's usage, first output and answering model do not depend on how the stream
/// is cut into chunks.
pub fn sse_usage(data: &[u8]) {
    let whole = {
        let mut s = usage::SseUsageScanner::new();
        s.feed(data);
        s.usage()
    };
    // Cut points derived from the data itself, so every input has its own split.
    let mut split = usage::SseUsageScanner::new();
    let mut rest = data;
    let mut i = 0usize;
    while !rest.is_empty() {
        let n = (usize::from(rest[0]) ^ i) % 17 + 1;
        let (chunk, tail) = rest.split_at(n.min(rest.len()));
        split.feed(chunk);
        rest = tail;
        i += 1;
    }
    assert_eq!(whole, split.usage(), "usage depends on chunk boundaries");
    // The first output (time to first token) and the model that answered neither.
    let mut whole = first_output::FirstOutput::new();
    let seen = whole.feed(data);
    let mut split = first_output::FirstOutput::new();
    let seen_split = data_cut(data).into_iter().any(|c| split.feed(c));
    assert_eq!(seen, seen_split, "first output depends on chunk boundaries");
    assert_eq!(whole.model(), split.model());
}

/// The usage-chunk stripper: its output does not depend on how the stream is cut into chunks,
/// it only ever removes whole events (nothing when it found none), and its output has nothing
/// left to remove.
pub fn usage_chunk(data: &[u8]) {
    let run = |chunks: &mut dyn Iterator<Item = &[u8]>| {
        let mut s = usage_chunk::UsageChunkStripper::new();
        let mut out = Vec::new();
        for c in chunks {
            out.extend(s.feed(c));
        }
        out.extend(s.finish());
        (out, s.stripped())
    };
    let (whole, stripped) = run(&mut std::iter::once(data));
    let mut cuts = Vec::new();
    let mut rest = data;
    let mut i = 0usize;
    while let Some(&first) = rest.first() {
        let n = ((usize::from(first) ^ i) % 13 + 1).min(rest.len());
        let (chunk, tail) = rest.split_at(n);
        cuts.push(chunk);
        rest = tail;
        i += 1;
    }
    let (split, split_stripped) = run(&mut cuts.into_iter());
    assert_eq!(whole, split, "output depends on chunk boundaries");
    assert_eq!(stripped, split_stripped);
    assert!(whole.len() <= data.len());
    if stripped == 0 {
        assert_eq!(whole, data, "nothing stripped, yet the stream changed");
    }
    let (again, more) = run(&mut std::iter::once(whole.as_slice()));
    assert_eq!(
        (again, more),
        (whole, 0),
        "the output still had a usage-only event"
    );
}

/// A header map as the host serialises it (values are the caller's, any bytes): read without
/// panicking, every name found again, and a map made only of UTF-8 read back as written.
pub fn header_map_bytes(data: &[u8]) {
    let m = header_map::HeaderMap::parse(data.to_vec());
    assert!(m.len() <= data.len() / 8);
    for name in m.names().filter(|n| *n != header_map::NOT_UTF8) {
        assert!(m.get(name).is_some(), "{name:?} not found again");
    }
    let pairs: Vec<(&str, &[u8])> = m.iter().map(|(n, v)| (n, v.as_bytes())).collect();
    let again = header_map::HeaderMap::parse(header_map::serialize(&pairs));
    assert_eq!(
        again.iter().collect::<Vec<_>>(),
        m.iter().collect::<Vec<_>>()
    );
}

/// Prompt and answer capture of any request body or answer: within the cap, redacted, and a
/// stream's text independent of how it is cut into chunks.
pub fn capture_text(data: &[u8]) {
    let raw = capture::RawCapture {
        prompt: Some(true),
        answer: Some(true),
        max_bytes: Some(64),
        drop_content_of_roles: vec!["system".into()],
    };
    let Ok(c) = capture::Capture::from_raw(&raw, "capture") else {
        return;
    };
    if let Some(p) = c.prompt_of(data) {
        assert!(p.len() <= 64);
    }
    for streamed in [false, true] {
        let mut whole = c.answer_reader(streamed).unwrap_or_default();
        whole.feed(data);
        let mut split = c.answer_reader(streamed).unwrap_or_default();
        for chunk in data.chunks(7) {
            split.feed(chunk);
        }
        let (a, b) = (whole.finish(), split.finish());
        assert!(a.len() <= 64);
        assert_eq!(a, b, "capture depends on chunk boundaries");
    }
}

/// A rate limit service's answer (protobuf), as the check and as the decoder alone.
pub fn rls_response(data: &[u8]) {
    let _ = rls::decode_should_rate_limit_response(data);
    for mode in [rls::FailureMode::Allow, rls::FailureMode::Deny] {
        let _ = rls::check_outcome(0, data, mode, 60);
    }
}

/// What a failover pool reads from outside: a target's `retry-after-ms` / `retry-after`
/// answer headers, the target health in shared data (any worker, any version may have written
/// it) and the listener filter's hand-over. Input: those three and a status, one per line.
pub fn target_answer(data: &[u8]) {
    use crate::failover::{self, FailoverPolicy, Outcome, TargetHealth};
    use crate::host::pool::Handover;
    let mut parts = data.splitn(4, |b| *b == b'\n');
    let mut next = || parts.next().unwrap_or_default();
    let (ms, secs, health, rest) = (next(), next(), next(), next());
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let wait = failover::retry_after_ms(Some(&text(ms)), Some(&text(secs)));
    let before = TargetHealth::decode(health);
    let policy = FailoverPolicy::default();
    let status = rest.first().map_or(429, |b| u32::from(*b) * 3);
    let now = NOW_S * 1000;
    let after = before.record(Outcome::of_status(status, wait), now, &policy);
    assert_eq!(TargetHealth::decode(&after.encode()), after);
    if let Some(until) = after.closed_until(now) {
        assert!(until > now);
        assert!(
            until <= now + policy.max_retry_after_ms.max(policy.eject_for_ms)
                || until <= before.throttled_until_ms.max(before.ejected_until_ms),
            "a target is closed no longer than the policy allows"
        );
    }
    if let Some(h) = Handover::decode(rest) {
        assert_eq!(Handover::decode(&h.encode()), Some(h));
    }
}

// ---------------------------------------------------------------------------------------------
// Seeds: valid inputs the mutator starts from.

/// Valid inputs of a target, for the mutator and for the fuzz corpus.
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    let strings: Vec<String> = match target {
        "plugin_config" => vec![
            json!({
                "credentials": {"main": {"kind": "client_secret", "tenant_id": "contoso.onmicrosoft.com",
                    "client_id": "22222222-2222-2222-2222-222222222222", "client_secret": "s", "token_cluster": "entra"}},
                "backends": {"aoai": {"kind": "azure_openai", "host": "r.openai.azure.com", "api_version": "2024-10-21", "credential": "main"},
                             "claude": {"kind": "foundry_anthropic", "host": "c.services.ai.azure.com", "credential": "main"}},
                "models": {"gpt-4o": {"backend": "aoai", "deployment": "gpt-4o-prod", "aliases": ["gpt4o"]},
                           "claude-opus-4-5": {"backend": "claude", "deployment": "claude-opus-4-5"}},
                "rate_limits": {"default": {"tokens_per_minute": 1000}, "workloads": {"a": {"tokens_per_day": 9}}},
                "auth": {"jwt_providers": {"entra": {"issuer": ISSUER, "audiences": [AUDIENCE],
                    "jwks": {"cluster": "entra", "authority": "login.microsoftonline.com", "path": "/keys"}}}}
            })
            .to_string(),
            json!({
                "credentials": {"mi": {"kind": "managed_identity", "client_id": "33333333-3333-3333-3333-333333333333", "token_cluster": "imds"},
                                "x": {"kind": "federated", "tenant_id": "t.onmicrosoft.com", "client_id": "4", "token_cluster": "entra",
                                      "assertion": {"source": "managed_identity", "credential": "mi"}}},
                "backends": {"v1": {"kind": "azure_openai_v1", "host": "v.openai.azure.com", "credential": "x"}},
                "models": {"m": {"backend": "v1", "deployment": "d"}},
                "routing_mode": "header", "model_header": "x-model"
            })
            .to_string(),
            json!({
                "credentials": {"aks": {"kind": "workload_identity", "token_cluster": "entra"},
                                "partner": {"kind": "workload_identity", "token_cluster": "entra",
                                            "tenant_id": "p.onmicrosoft.com", "client_id": "8",
                                            "authority_host": "login.microsoftonline.us",
                                            "audience": "api://AzureADTokenExchangeUSGov",
                                            "assertion_cluster": "tokens", "assertion_path": "/token"}},
                "backends": {"a": {"kind": "azure_openai", "host": "a.openai.azure.us", "api_version": "2024-10-21", "credential": "aks"},
                             "p": {"kind": "azure_openai_v1", "host": "p.openai.azure.us", "credential": "partner"}},
                "models": {"m": {"backend": "a", "deployment": "d"}, "n": {"backend": "p", "deployment": "e"}}
            })
            .to_string(),
            json!({
                "credentials": {"a": {"kind": "client_secret", "tenant_id": "t", "client_id": "c", "client_secret": "s", "token_cluster": "entra"}},
                "backends": {"ptu": {"kind": "azure_openai", "host": "p.openai.azure.com", "api_version": "2024-10-21", "credential": "a"},
                             "payg": {"kind": "azure_openai_v1", "host": "g.openai.azure.com", "credential": "a"}},
                "models": {"gpt-4o": {"targets": [{"backend": "ptu", "deployment": "d1"}, {"backend": "payg", "deployment": "d2", "priority": 1}]}},
                "failover": {"eject_after_failures": 2, "eject_for_ms": 1000}, "role": "upstream"
            })
            .to_string(),
        ],
        "caller_token" => token_fixture()
            .map(|f| f.valid_tokens.clone())
            .unwrap_or_default(),
        "jwks" => vec![
            token_fixture().map(|f| f.jwks.to_string()).unwrap_or_default(),
            json!({"issuer": ISSUER, "jwks_uri": "https://login.microsoftonline.com/common/discovery/v2.0/keys"}).to_string(),
        ],
        "entra_response" => vec![
            "\x00\x00{\"token_type\":\"Bearer\",\"expires_in\":3599,\"ext_expires_in\":3599,\"access_token\":\"eyJ0.eyJ1.c2ln\"}".into(),
            "\x00\x00{\"access_token\":\"eyJ0.eyJ1.c2ln\",\"expires_in\":\"86399\",\"expires_on\":\"1760086399\",\"resource\":\"https://cognitiveservices.azure.com\",\"token_type\":\"Bearer\"}".into(),
            "\x01\x01{\"error\":\"invalid_client\",\"error_description\":\"AADSTS7000215: Invalid client secret provided.\",\"error_codes\":[7000215]}".into(),
            "\x05\x01{\"error\":\"temporarily_unavailable\"}".into(),
            "\x00\x00eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl".into(),
            "\x05\x00eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOlsiYXBpOi8vQXp1cmVBRFRva2VuRXhjaGFuZ2UiXSwiZXhwIjoxNzYwMDAzNjAwLCJpc3MiOiJodHRwczovL2Vhc3R1cy5vaWMucHJvZC1ha3MuYXp1cmUuY29tL3QvYy8iLCJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6bGxtLWdhdGV3YXk6bGxtLWdhdGV3YXkifQ.c2lnbmF0dXJl".into(),
        ],
        "request_body" => vec![
            "POST /v1/chat/completions\n{\"model\":\"gpt-4o\",\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}".into(),
            "POST /openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21\n{\"messages\":[],\"stream_options\":{\"include_usage\":false}}".into(),
            "POST /v1/audio/transcriptions\n--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper\r\n--XyZ--\r\n".into(),
            "GET /deployments/gpt-4o\n".into(),
        ],
        "usage_json" => vec![
            r#"{"object":"chat.completion","usage":{"prompt_tokens":11,"completion_tokens":7,"total_tokens":18}}"#.into(),
            r#"{"type":"message","usage":{"input_tokens":9,"output_tokens":3,"cache_read_input_tokens":2}}"#.into(),
            r#"{"object":"response","usage":{"input_tokens":9,"output_tokens":3,"total_tokens":12}}"#.into(),
            r#"{"object":"list","data":[{"embedding":[0.5,"\"usage\""],"usage":1}],"usage":{"prompt_tokens":5,"total_tokens":5}}"#.into(),
        ],
        "multipart_form" => vec![
            "--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\nRIFF\r\n--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper\r\n--XyZ--\r\n".into(),
            "pre\r\n--XyZ \r\ncontent-disposition: form-data; name=model\r\n\r\ngpt-4o-transcribe\r\n--XyZ\r\nContent-Disposition: form-data; name=language\r\n\r\nen\r\n--XyZ--".into(),
            "--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper\r\n--XyZ\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\nnames: a@b.io\r\n--XyZ\r\nContent-Disposition: form-data; name=Prompt\r\nContent-Transfer-Encoding: base64\r\n\r\neA==\r\n--XyZ--\r\n".into(),
        ],
        "guard_scanners" => crate::guard::fuzz::scanner_seeds(),
        "capture" => vec![
            r#"{"model":"gpt-4o","messages":[{"role":"system","content":"secret"},{"role":"user","content":"hi"}]}"#.into(),
            r#"{"choices":[{"message":{"role":"assistant","content":"This is"}}]}"#.into(),
            "data: {\"choices\":[{\"delta\":{\"content\":\"This\"}}]}\n\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"x\"}}\n\n".into(),
        ],
        "sse_usage" => vec![
            "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":21,\"completion_tokens\":12,\"total_tokens\":33}}\n\ndata: [DONE]\n\n".into(),
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":5,\"output_tokens\":1}}}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":9}}\n\n".into(),
            "event: response.completed\r\ndata: {\"type\":\"response.completed\",\"response\":{\"usage\":{\"input_tokens\":8,\"output_tokens\":5,\"total_tokens\":13}}}\r\n\r\n".into(),
        ],
        "usage_chunk" => vec![
            "data: {\"choices\":[],\"prompt_filter_results\":[]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":21,\"completion_tokens\":12,\"total_tokens\":33}}\n\ndata: [DONE]\n\n".into(),
            "data:{\"choices\":[],\r\ndata:\"usage\":{\"total_tokens\":1}}\r\n\r\ndata: [DONE]\r\n\r\n".into(),
            "event: x\rdata: {\"usage\":{},\"choices\":[]}\r\r: comment\n\n".into(),
        ],
        "header_map" => {
            return vec![
                header_map::serialize(&[
                    (":path", b"/v1/chat/completions"),
                    (":method", b"POST"),
                    ("authorization", b"Bearer a.b.c"),
                    ("x-odd", b"caf\xe9"),
                ]),
                header_map::serialize(&[("", b""), ("x", b"")]),
            ]
        }
        "target_answer" => vec![
            "1500\n2\n0,0,0\ngpt-4o\nchat/completions".into(),
            "\n7\n1760000001000,2,0\n\u{a7}".into(),
            "12.5\n\n0,3,1760000030000\nclaude\nmessages".into(),
        ],
        "rls_response" => {
            return vec![
                vec![0x08, 0x01],
                vec![0x08, 0x02, 0x12, 0x08, 0x08, 0x02, 0x1a, 0x04, 0x08, 0x0a, 0x10, 0x02],
            ]
        }
        _ => Vec::new(),
    };
    strings.into_iter().map(String::into_bytes).collect()
}

/// The caller-token target's provider: an RS256 key (the repository's test key), its JWKS
/// inline in the config, and tokens it signed.
struct TokenFixture {
    config: AuthConfig,
    jwks: Value,
    valid_tokens: Vec<String>,
}

/// None only if the repository's test key or the fixture config stopped parsing; this module's
/// tests fail then (the caller-token target would have no seeds).
fn token_fixture() -> Option<&'static TokenFixture> {
    static F: OnceLock<Option<TokenFixture>> = OnceLock::new();
    F.get_or_init(build_token_fixture).as_ref()
}

fn build_token_fixture() -> Option<TokenFixture> {
    // TEST-ONLY key, checked into tests/keys/ for exactly this kind of use.
    let pem = include_str!("../tests/keys/client-pkcs8.pem");
    let (key, _) = entra::assertion::parse_private_key_pem(pem).ok()?;
    let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
    let jwks = json!({"keys": [{"kty": "RSA", "use": "sig", "kid": "fuzz",
        "n": b64(&key.n().to_bytes_be()), "e": b64(&key.e().to_bytes_be())}]});
    let raw: RawAuthConfig = serde_json::from_value(json!({
        "jwt_providers": {"entra": {"issuer": ISSUER, "audiences": [AUDIENCE],
            "jwks": {"inline": jwks.clone()},
            "required_claims": [{"claim": "roles", "any_of": ["LLM.Invoke"]}]}}
    }))
    .ok()?;
    let config = AuthConfig::from_raw(raw, "auth").ok()?;
    let signer = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(key);
    let sign = |claims: Value| {
        use rsa::signature::{SignatureEncoding, Signer};
        let input = format!(
            "{}.{}",
            b64(br#"{"alg":"RS256","kid":"fuzz","typ":"JWT"}"#),
            b64(claims.to_string().as_bytes())
        );
        let sig = signer.sign(input.as_bytes()).to_vec();
        format!("{input}.{}", b64(&sig))
    };
    let claims = |azp: &str| {
        json!({"iss": ISSUER, "aud": AUDIENCE, "azp": azp, "roles": ["LLM.Invoke"],
               "iat": NOW_S - 60, "nbf": NOW_S - 60, "exp": NOW_S + 3600})
    };
    let mut forbidden = claims("app-two");
    forbidden["roles"] = json!(["Other"]);
    Some(TokenFixture {
        config,
        jwks,
        valid_tokens: vec![sign(claims("app-one")), sign(forbidden)],
    })
}

// ---------------------------------------------------------------------------------------------
// A small deterministic mutator (xorshift64*), for the smoke run and unit tests.

pub struct Mutator(u64);

impl Mutator {
    pub fn new(seed: u64) -> Mutator {
        Mutator(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        (self.next_u64() % n as u64) as usize
    }

    /// Random bytes biased towards what parsers care about (ASCII punctuation, control bytes,
    /// high bytes).
    pub fn random(&mut self, max_len: usize) -> Vec<u8> {
        const INTERESTING: &[u8] = b"{}[]\":,.\\/\n\r =-_0123456789eE+";
        let len = self.below(max_len + 1);
        (0..len)
            .map(|_| match self.below(4) {
                0 => INTERESTING[self.below(INTERESTING.len())],
                1 => self.below(0x20) as u8,
                2 => 0x80 | self.below(0x80) as u8,
                _ => self.next_u64() as u8,
            })
            .collect()
    }

    /// A mutation of one of `seeds`: byte flips, insertions, deletions, truncation, splicing
    /// with another seed, repeated runs.
    pub fn mutate(&mut self, seeds: &[Vec<u8>]) -> Vec<u8> {
        let Some(first) = seeds.get(self.below(seeds.len())) else {
            return self.random(64);
        };
        let mut b = first.clone();
        for _ in 0..=self.below(4) {
            let len = b.len();
            match self.below(7) {
                0 if len > 0 => {
                    let i = self.below(len);
                    b[i] ^= 1 << self.below(8);
                }
                1 => {
                    let i = self.below(len + 1);
                    let byte = self.random(1).first().copied().unwrap_or(b'"');
                    b.insert(i, byte);
                }
                2 if len > 0 => {
                    let i = self.below(len);
                    let n = self.below(8).min(len - i);
                    b.drain(i..i + n);
                }
                3 => b.truncate(self.below(len + 1)),
                4 => {
                    if let Some(other) = seeds.get(self.below(seeds.len())) {
                        let at = self.below(len + 1);
                        let from = self.below(other.len() + 1);
                        b.truncate(at);
                        b.extend_from_slice(&other[from..]);
                    }
                }
                5 if len > 0 => {
                    let i = self.below(len);
                    let n = (self.below(16) + 1).min(len - i);
                    let run: Vec<u8> = b[i..i + n].to_vec();
                    for _ in 0..self.below(64) {
                        b.splice(i..i, run.iter().copied());
                    }
                }
                _ => {
                    let i = self.below(len + 1);
                    let digits = self.next_u64().to_string();
                    b.splice(i..i, digits.bytes());
                }
            }
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_target_runs_its_seeds() {
        for (name, target) in TARGETS {
            let seeds = seeds(name);
            assert!(!seeds.is_empty(), "{name} has seeds");
            for s in &seeds {
                target(s);
            }
        }
        // The caller-token seeds really pass the whole check (the first), or fail only on
        // the policy (the second).
        let fixture = token_fixture().expect("the fixture builds");
        let mut auth = Authenticator::new(fixture.config.clone());
        let [good, forbidden] = &fixture.valid_tokens[..] else {
            panic!("two fixture tokens")
        };
        let caller = auth
            .authenticate(&[&format!("Bearer {good}")], &[], None, NOW_S * 1000)
            .unwrap()
            .unwrap();
        assert_eq!(caller.workload, "app-one");
        let refused = auth
            .authenticate(&[&format!("Bearer {forbidden}")], &[], None, NOW_S * 1000)
            .unwrap_err();
        assert_eq!(refused.status(), 403);
        assert!(Config::parse(&seeds("plugin_config")[0]).is_ok());
        assert!(KeySet::parse(&seeds("jwks")[0]).is_ok());
    }

    #[test]
    fn the_mutator_is_deterministic() {
        let seeds = seeds("usage_json");
        let run = |seed| {
            let mut m = Mutator::new(seed);
            (0..50).map(|_| m.mutate(&seeds)).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }
}
