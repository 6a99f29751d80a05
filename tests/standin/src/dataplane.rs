//! The Azure OpenAI / Foundry data plane: authentication, routing, validation, deterministic
//! answers (JSON and streamed) with usage.
//!
//! Usage figures (documented in README.md):
//! - prompt tokens P: every message counts 3 plus the whitespace-separated words of its text
//!   content (a string, or the `text` fields of content parts); Anthropic `system` and Responses
//!   `instructions` count as one more message; a Responses `input` string is one message.
//!   Embeddings: the words of each input string (token arrays: their length), no overhead.
//! - completion tokens C = min(max_tokens | max_completion_tokens | max_output_tokens, 12); the
//!   answer is the first C words of [`ANSWER`].

use crate::crypto::Jwt;
use crate::details::{self, PromptCache};
use crate::entra::SKEW_SECS;
use crate::util::{now_secs, random_alnum, same_resource, uuid_v4, words};
use crate::{lock, v1_issuer, Ctx, Deployment, Reply, ReplyBody, Shared};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::{json, Map, Value};
use sha2::{Digest as _, Sha256};
use std::sync::Mutex;

/// The answer's words; a completion of C tokens is the first C of them.
pub const ANSWER: [&str; 12] = [
    "This",
    "is",
    "a",
    "deterministic",
    "answer",
    "from",
    "the",
    "Azure",
    "stand-in",
    "for",
    "your",
    "tests.",
];

/// Per-minute limits behind `x-ratelimit-remaining-*`.
const TOKENS_PER_MINUTE: u64 = 450_000;
const REQUESTS_PER_MINUTE: u64 = 2_700;
const REGION: &str = "East US";

const UNAUTHORIZED: &str = "Unauthorized. Access token is missing, invalid, audience is incorrect (https://cognitiveservices.azure.com), or have expired.";
const BAD_API_KEY: &str = "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key for an active subscription and use a correct regional API endpoint for your resource.";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Api {
    /// `/openai/deployments/{d}/...?api-version=`
    Dated,
    /// `/openai/v1/...`
    V1,
    /// `/models/...?api-version=` (Foundry model inference)
    Foundry,
    /// `/anthropic/v1/messages`
    Anthropic,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Op {
    Chat,
    Completions,
    Embeddings,
    Images,
    Speech,
    Transcriptions,
    Responses,
    Messages,
    ListModels,
    ListDeployments,
    GetDeployment,
}

impl Op {
    /// Name in Azure's OperationNotSupported message.
    fn azure_name(self) -> &'static str {
        match self {
            Op::Chat => "chatCompletion",
            Op::Completions => "completion",
            Op::Embeddings => "embeddings",
            Op::Images => "imagesGeneration",
            Op::Speech => "audioSpeech",
            Op::Transcriptions => "audioTranscription",
            Op::Responses => "responses",
            Op::Messages => "messages",
            _ => "list",
        }
    }

    /// Name in Azure's 429 message.
    fn rate_limit_name(self) -> &'static str {
        match self {
            Op::Chat => "ChatCompletions_Create",
            Op::Completions => "Completions_Create",
            Op::Embeddings => "Embeddings_Create",
            Op::Images => "ImageGenerations_Create",
            Op::Speech => "AudioSpeech_Create",
            Op::Transcriptions => "AudioTranscriptions_Create",
            Op::Responses => "Responses_Create",
            Op::Messages => "Messages_Create",
            _ => "Models_List",
        }
    }
}

struct Route<'a> {
    api: Api,
    op: Op,
    method: &'static str,
    deployment: Option<&'a str>,
}

fn match_route(path: &str) -> Option<Route<'_>> {
    let segs: Vec<&str> = path.strip_prefix('/')?.split('/').collect();
    let r = |api, op, method, deployment| {
        Some(Route {
            api,
            op,
            method,
            deployment,
        })
    };
    match segs.as_slice() {
        ["openai", "deployments"] => r(Api::Dated, Op::ListDeployments, "GET", None),
        ["openai", "deployments", d] if !d.is_empty() => {
            r(Api::Dated, Op::GetDeployment, "GET", Some(*d))
        }
        ["openai", "deployments", d, rest @ ..] if !d.is_empty() => {
            let op = match rest {
                ["chat", "completions"] => Op::Chat,
                ["completions"] => Op::Completions,
                ["embeddings"] => Op::Embeddings,
                ["images", "generations"] => Op::Images,
                ["audio", "speech"] => Op::Speech,
                ["audio", "transcriptions"] => Op::Transcriptions,
                // Translations (speech to English text) answer like transcriptions.
                ["audio", "translations"] => Op::Transcriptions,
                _ => return None,
            };
            r(Api::Dated, op, "POST", Some(*d))
        }
        ["openai", "models"] => r(Api::Dated, Op::ListModels, "GET", None),
        // The dated Responses API: no deployment in the path, the model in the body.
        ["openai", "responses"] => r(Api::Dated, Op::Responses, "POST", None),
        ["openai", "v1", "chat", "completions"] => r(Api::V1, Op::Chat, "POST", None),
        ["openai", "v1", "embeddings"] => r(Api::V1, Op::Embeddings, "POST", None),
        ["openai", "v1", "responses"] => r(Api::V1, Op::Responses, "POST", None),
        ["openai", "v1", "audio", "transcriptions"] => r(Api::V1, Op::Transcriptions, "POST", None),
        ["openai", "v1", "models"] => r(Api::V1, Op::ListModels, "GET", None),
        ["models", "chat", "completions"] => r(Api::Foundry, Op::Chat, "POST", None),
        ["models", "embeddings"] => r(Api::Foundry, Op::Embeddings, "POST", None),
        ["anthropic", "v1", "messages"] => r(Api::Anthropic, Op::Messages, "POST", None),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Errors

fn az_error(status: u16, code: &str, message: &str) -> Reply {
    Reply::json(
        status,
        &json!({"error": {"code": code, "message": message}}),
    )
    .with_header("x-ms-error-code", code)
}

fn az_error_full(status: u16, code: &str, message: &str, param: Option<&str>) -> Reply {
    Reply::json(
        status,
        &json!({"error": {"code": code, "message": message, "param": param, "type": "invalid_request_error"}}),
    )
    .with_header("x-ms-error-code", code)
}

fn bad_request(message: &str) -> Reply {
    az_error_full(400, "BadRequest", message, None)
}

fn not_found() -> Reply {
    az_error(404, "404", "Resource not found")
}

fn deployment_not_found() -> Reply {
    az_error(
        404,
        "DeploymentNotFound",
        "The API deployment for this resource does not exist. If you created the deployment \
         within the last 5 minutes, please wait a moment and try again.",
    )
}

fn anthropic_error(status: u16, kind: &str, message: &str) -> Reply {
    Reply::json(
        status,
        &json!({"type": "error", "error": {"type": kind, "message": message}}),
    )
    .with_header("request-id", format!("req_{}", random_alnum(24)))
}

/// The `error.code` of an Azure-style error body, for `x-ms-error-code`.
pub fn error_code_of(reply: &Reply) -> Option<String> {
    let ReplyBody::Full(b) = &reply.body else {
        return None;
    };
    let v: Value = serde_json::from_slice(b).ok()?;
    let code = v.get("error")?.get("code")?;
    match code {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Headers every data-plane answer carries.
fn azure_headers(mut reply: Reply, ctx: &Ctx) -> Reply {
    let id = uuid_v4();
    reply = reply
        .with_header("apim-request-id", id.clone())
        .with_header("x-request-id", id)
        .with_header("x-ms-region", REGION)
        .with_header(
            "strict-transport-security",
            "max-age=31536000; includeSubDomains; preload",
        )
        .with_header("x-content-type-options", "nosniff");
    if let Some(v) = ctx
        .header("x-ms-client-request-id")
        .filter(|v| v.len() <= 128)
    {
        reply = reply.with_header("x-ms-client-request-id", v);
    }
    reply
}

pub fn rate_limited(ctx: &Ctx, secs: u64) -> Reply {
    let route = match_route(&ctx.path);
    let op = route.as_ref().map(|r| r.op).unwrap_or(Op::Chat);
    let version = ctx
        .query("api-version")
        .unwrap_or(if route.as_ref().is_some_and(|r| r.api == Api::V1) {
            "v1"
        } else {
            "2024-10-21"
        })
        .to_string();
    let message = format!(
        "Requests to the {} Operation under Azure OpenAI API version {version} have exceeded \
         token rate limit of your current OpenAI S0 pricing tier. Please retry after {secs} \
         seconds. Please go here: https://aka.ms/oai/quotaincrease if you would like to further \
         increase the default rate limit.",
        op.rate_limit_name()
    );
    azure_headers(az_error(429, "429", &message), ctx)
        .with_header("retry-after", secs.to_string())
        .with_header("retry-after-ms", (secs.saturating_mul(1000)).to_string())
        .with_header("x-ratelimit-remaining-requests", "0")
        .with_header("x-ratelimit-remaining-tokens", "0")
}

// ---------------------------------------------------------------------------------------------
// Authentication

/// Verifies an access token like Azure: RS256 by the stand-in's Entra key (`kid` must name it),
/// iss `https://sts.windows.net/{tenant}/`, aud == accepted audience, exp / nbf with 5 minutes
/// of skew. Err = the reason.
pub fn verify_access_token(shared: &Shared, token: &str) -> Result<(), &'static str> {
    let jwt = Jwt::decode(token).ok_or("malformed token")?;
    if jwt.alg() != "RS256" {
        return Err("unsupported alg");
    }
    if jwt.header_str("kid") != Some(shared.keys.signing.kid.as_str()) {
        return Err("unknown kid");
    }
    if !jwt.verify_rs256(&shared.keys.signing.public) {
        return Err("bad signature");
    }
    if jwt.claim_str("iss") != Some(v1_issuer(&shared.cfg.tenant_id).as_str()) {
        return Err("wrong issuer");
    }
    if !jwt
        .audiences()
        .iter()
        .any(|a| same_resource(a, &shared.cfg.accepted_audience))
    {
        return Err("wrong audience");
    }
    let now = now_secs();
    match jwt.claim_time("exp") {
        Some(exp) if exp > now - SKEW_SECS => {}
        Some(_) => return Err("expired"),
        None => return Err("no exp"),
    }
    if jwt
        .claim_time("nbf")
        .is_some_and(|nbf| nbf > now + SKEW_SECS)
    {
        return Err("not yet valid");
    }
    Ok(())
}

fn authenticate(shared: &Shared, ctx: &Ctx, anthropic: bool) -> Result<(), Reply> {
    let unauthorized = |reason: &str, message: &str| {
        az_error(401, "401", message).with_header("x-standin-auth-error", reason)
    };
    let mut keys = ctx.headers_named("api-key");
    if anthropic {
        keys.extend(ctx.headers_named("x-api-key"));
    }
    if !keys.is_empty() {
        if keys.len() == 1 && shared.cfg.api_keys.iter().any(|k| k == keys[0]) {
            return Ok(());
        }
        return Err(unauthorized("invalid api-key", BAD_API_KEY));
    }
    let auth = ctx.headers_named("authorization");
    let value = match auth.as_slice() {
        [] => return Err(unauthorized("missing credential", UNAUTHORIZED)),
        [v] => *v,
        _ => return Err(unauthorized("several authorization headers", UNAUTHORIZED)),
    };
    let token = match value.split_once(' ') {
        Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") => t.trim(),
        _ => return Err(unauthorized("not a bearer token", UNAUTHORIZED)),
    };
    verify_access_token(shared, token).map_err(|reason| unauthorized(reason, UNAUTHORIZED))
}

// ---------------------------------------------------------------------------------------------
// Dispatch

pub fn handle(shared: &Shared, ctx: &Ctx) -> Reply {
    let reply = handle_inner(shared, ctx);
    azure_headers(reply, ctx)
}

fn handle_inner(shared: &Shared, ctx: &Ctx) -> Reply {
    let Some(route) = match_route(&ctx.path) else {
        return not_found();
    };
    if ctx.method != route.method {
        return az_error(405, "405", "Method Not Allowed").with_header("allow", route.method);
    }
    if let Err(r) = authenticate(shared, ctx, route.api == Api::Anthropic) {
        return r;
    }
    if matches!(route.api, Api::Dated | Api::Foundry)
        && ctx.query("api-version").is_none_or(str::is_empty)
    {
        return not_found();
    }
    // Azure serves the dated Responses API from 2025-03-01-preview on; older versions do not
    // know the route.
    if route.api == Api::Dated
        && route.op == Op::Responses
        && ctx.query("api-version").unwrap_or_default() < "2025-03-01-preview"
    {
        return not_found();
    }
    match route.op {
        Op::ListModels => return list_models(shared),
        Op::ListDeployments => {
            let data: Vec<Value> = shared.cfg.deployments.iter().map(deployment_json).collect();
            return Reply::json(200, &json!({"data": data, "object": "list"}));
        }
        Op::GetDeployment => {
            return match shared
                .cfg
                .deployments
                .iter()
                .find(|d| Some(d.name.as_str()) == route.deployment)
            {
                Some(d) => Reply::json(200, &deployment_json(d)),
                None => deployment_not_found(),
            }
        }
        _ => {}
    }
    if route.api == Api::Anthropic && ctx.header("anthropic-version").is_none_or(str::is_empty) {
        return anthropic_error(
            400,
            "invalid_request_error",
            "anthropic-version: header is required",
        );
    }
    // Transcriptions are multipart (only `model` is read from them); every other operation
    // takes a JSON object.
    let body: Map<String, Value> = if route.op == Op::Transcriptions {
        let mut m = Map::new();
        if let Some(model) = lenient_form_model(ctx) {
            m.insert("model".into(), Value::String(model));
        }
        m
    } else {
        match serde_json::from_slice::<Value>(&ctx.body) {
            Ok(Value::Object(m)) => m,
            _ if route.api == Api::Anthropic => {
                return anthropic_error(
                    400,
                    "invalid_request_error",
                    "The request body is not valid JSON.",
                )
            }
            _ => {
                return bad_request(
                    "The request body is not a valid JSON object. Please check the request and try again.",
                )
            }
        }
    };
    let deployment = match resolve_deployment(shared, &route, &body) {
        Ok(d) => d,
        Err(r) => return r,
    };
    if !supports(deployment, route.op) {
        if route.api == Api::Anthropic {
            return anthropic_error(
                404,
                "not_found_error",
                &format!("model: {} is not a Claude deployment", deployment.name),
            );
        }
        return az_error(
            400,
            "OperationNotSupported",
            &format!(
                "The {} operation does not work with the specified model, {}. Please choose \
                 different model and try again. You can learn more about which models can be \
                 used with each operation here: https://go.microsoft.com/fwlink/?linkid=2197993.",
                route.op.azure_name(),
                deployment.model
            ),
        );
    }
    // Foundry's 2024-05-01-preview API does not list `stream_options`; parameters it does not
    // know are refused unless the caller allows them with `extra-parameters`.
    if route.api == Api::Foundry
        && body.contains_key("stream_options")
        && !matches!(ctx.header("extra-parameters"), Some("pass-through"))
    {
        return Reply::json(
            422,
            &json!({"error": {"code": "Invalid input", "status": 422,
                "message": "Extra parameters ['stream_options'] are not allowed when extra-parameters is not set or set to be 'error'. Set extra-parameters to 'pass-through' to pass to the model."}}),
        )
        .with_header("x-ms-error-code", "Invalid input");
    }
    let gen = Gen {
        deployment,
        azure_filters: matches!(route.api, Api::Dated | Api::V1),
        usage_in_last_chunk: route.api == Api::Foundry,
        cache: &shared.prompt_cache,
    };
    let result = match route.op {
        Op::Chat => gen.chat(&body),
        Op::Completions => gen.completions(&body),
        Op::Embeddings => gen.embeddings(&body),
        Op::Responses => gen.responses(&body),
        Op::Messages => gen.messages(&body),
        Op::Images => gen.images(&body),
        Op::Speech => gen.speech(&body),
        Op::Transcriptions => Ok((Reply::json(200, &json!({"text": ANSWER.join(" ")})), 0)),
        _ => Ok((not_found(), 0)),
    };
    match result {
        Ok((reply, tokens)) => {
            let (tokens_left, requests_left) = charge(shared, tokens);
            reply
                .with_header("x-ratelimit-remaining-tokens", tokens_left.to_string())
                .with_header("x-ratelimit-remaining-requests", requests_left.to_string())
                .with_header("x-ms-deployment-name", deployment.name.clone())
                .with_header("x-standin-deployment", deployment.name.clone())
        }
        Err(message) if route.api == Api::Anthropic => {
            anthropic_error(400, "invalid_request_error", &message)
        }
        Err(message) => bad_request(&message),
    }
}

/// The `model` field of a multipart/form-data body, read the way lenient web frameworks do:
/// parts are split at every `--boundary`, CRLF or LF, `name` quoted or not, and the last field
/// of a name wins (a dict built from the fields in order). The filter must never route a model
/// other than the one this reads.
fn lenient_form_model(ctx: &Ctx) -> Option<String> {
    let ct = ctx.header("content-type")?;
    let boundary = ct
        .split(';')
        .find_map(|p| p.trim().strip_prefix("boundary="))?
        .trim_matches('"');
    let text = String::from_utf8_lossy(&ctx.body);
    let mut model = None;
    for part in text.split(&format!("--{boundary}")) {
        let part = part.trim_start_matches(['\r', '\n']);
        let Some((head, value)) = part
            .split_once("\r\n\r\n")
            .or_else(|| part.split_once("\n\n"))
        else {
            continue;
        };
        let named_model = head.lines().any(|l| {
            let l = l.to_ascii_lowercase();
            l.starts_with("content-disposition:")
                && l.split(';').any(|p| {
                    p.trim()
                        .strip_prefix("name=")
                        .is_some_and(|n| n.trim_matches('"') == "model")
                })
        });
        if named_model {
            model = Some(value.trim_end_matches(['\r', '\n']).to_string());
        }
    }
    model
}

/// Counts a served request; returns the remaining (tokens, requests) of the current minute.
fn charge(shared: &Shared, tokens: u64) -> (u64, u64) {
    let minute = now_secs() / 60;
    let mut w = lock(&shared.window);
    if w.minute != minute {
        w.minute = minute;
        w.tokens = 0;
        w.requests = 0;
    }
    w.tokens = w.tokens.saturating_add(tokens);
    w.requests = w.requests.saturating_add(1);
    (
        TOKENS_PER_MINUTE.saturating_sub(w.tokens),
        REQUESTS_PER_MINUTE.saturating_sub(w.requests),
    )
}

fn deployment_json(d: &Deployment) -> Value {
    json!({
        "id": d.name,
        "model": d.model,
        "owner": "organization-owner",
        "object": "deployment",
        "status": "succeeded",
        "scale_settings": {"scale_type": "standard"},
        "properties": {"model": {"format": d.format, "name": d.model}},
        "created_at": 1_700_000_000,
        "updated_at": 1_700_000_000,
    })
}

fn list_models(shared: &Shared) -> Reply {
    let mut seen: Vec<&str> = Vec::new();
    for d in &shared.cfg.deployments {
        if !seen.contains(&d.model.as_str()) {
            seen.push(&d.model);
        }
    }
    let data: Vec<Value> = seen
        .iter()
        .map(
            |m| json!({"id": m, "object": "model", "created": 1_700_000_000, "owned_by": "system"}),
        )
        .collect();
    Reply::json(200, &json!({"object": "list", "data": data}))
}

fn resolve_deployment<'s>(
    shared: &'s Shared,
    route: &Route<'_>,
    body: &Map<String, Value>,
) -> Result<&'s Deployment, Reply> {
    let find = |name: &str| shared.cfg.deployments.iter().find(|d| d.name == name);
    if let Some(name) = route.deployment {
        return find(name).ok_or_else(deployment_not_found);
    }
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty());
    match route.api {
        Api::Anthropic => {
            let Some(m) = model else {
                return Err(anthropic_error(
                    400,
                    "invalid_request_error",
                    "model: Field required",
                ));
            };
            find(m).ok_or_else(|| anthropic_error(404, "not_found_error", &format!("model: {m}")))
        }
        Api::Foundry => {
            let Some(m) = model else {
                return Err(az_error(
                    400,
                    "no_model_name",
                    "No model specified in request. Please provide a model name in the request \
                     body or as a x-ms-model-mesh-model-name header.",
                ));
            };
            find(m).ok_or_else(|| az_error(400, "unknown_model", &format!("Unknown model: {m}")))
        }
        _ => {
            let Some(m) = model else {
                return Err(az_error_full(
                    400,
                    "BadRequest",
                    "you must provide a model parameter",
                    Some("model"),
                ));
            };
            find(m).ok_or_else(deployment_not_found)
        }
    }
}

#[derive(PartialEq, Eq)]
enum Family {
    Chat,
    Embeddings,
    Images,
    Speech,
    Transcription,
    Anthropic,
}

fn family(d: &Deployment) -> Family {
    if d.format.eq_ignore_ascii_case("Anthropic") {
        return Family::Anthropic;
    }
    let m = d.model.to_ascii_lowercase();
    if m.contains("embedding") {
        Family::Embeddings
    } else if m.starts_with("dall-e") || m.starts_with("gpt-image") {
        Family::Images
    } else if m.starts_with("tts") || m.contains("-tts") {
        Family::Speech
    } else if m.starts_with("whisper") || m.contains("transcribe") {
        Family::Transcription
    } else {
        Family::Chat
    }
}

fn supports(d: &Deployment, op: Op) -> bool {
    let f = family(d);
    match op {
        Op::Chat | Op::Responses => f == Family::Chat,
        // Legacy completions: only the instruct / base models (gpt-35-turbo-instruct,
        // davinci-002, babbage-002), like Azure.
        Op::Completions => {
            let m = d.model.to_ascii_lowercase();
            f == Family::Chat
                && (m.contains("instruct") || m.contains("davinci") || m.contains("babbage"))
        }
        Op::Embeddings => f == Family::Embeddings,
        Op::Images => f == Family::Images,
        Op::Speech => f == Family::Speech,
        Op::Transcriptions => f == Family::Transcription,
        Op::Messages => f == Family::Anthropic,
        _ => true,
    }
}

// ---------------------------------------------------------------------------------------------
// Token arithmetic

/// Words of a content value: a string, or the `text` of each part of an array.
fn content_words(v: Option<&Value>) -> u64 {
    match v {
        Some(Value::String(s)) => words(s) as u64,
        Some(Value::Array(parts)) => parts
            .iter()
            .map(|p| match p {
                Value::String(s) => words(s) as u64,
                Value::Object(o) => o
                    .get("text")
                    .and_then(Value::as_str)
                    .map(|s| words(s) as u64)
                    .unwrap_or(0),
                _ => 0,
            })
            .sum(),
        _ => 0,
    }
}

/// 3 + words of one message.
fn message_tokens(m: &Value) -> u64 {
    match m {
        Value::String(s) => 3 + words(s) as u64,
        _ => 3 + content_words(m.get("content")),
    }
}

/// A validated `messages` array.
fn messages(body: &Map<String, Value>) -> Result<&Vec<Value>, String> {
    match body.get("messages") {
        None | Some(Value::Null) => Err("'messages' is a required property".into()),
        Some(Value::Array(a)) if a.is_empty() => {
            Err("Invalid 'messages': empty array. Expected an array with minimum length 1.".into())
        }
        Some(Value::Array(a)) => {
            for (i, m) in a.iter().enumerate() {
                if !m.get("role").is_some_and(Value::is_string) {
                    return Err(format!("Missing required parameter: 'messages[{i}].role'."));
                }
            }
            Ok(a)
        }
        Some(_) => Err("Invalid type for 'messages': expected an array.".into()),
    }
}

/// Completion tokens: min(first given limit, 12).
fn completion_tokens(body: &Map<String, Value>, names: &[&str]) -> Result<usize, String> {
    for name in names {
        match body.get(*name) {
            None | Some(Value::Null) => continue,
            Some(v) => {
                return match v.as_u64() {
                    Some(n) if n >= 1 => Ok(n.min(ANSWER.len() as u64) as usize),
                    _ => Err(format!(
                        "Invalid value for '{name}': integer below minimum value. Expected a \
                         value >= 1."
                    )),
                }
            }
        }
    }
    Ok(ANSWER.len())
}

fn stream_flag(body: &Map<String, Value>) -> Result<bool, String> {
    let stream = match body.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err("Invalid type for 'stream': expected a boolean.".into()),
    };
    if !stream && body.get("stream_options").is_some_and(|v| !v.is_null()) {
        return Err(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.".into(),
        );
    }
    Ok(stream)
}

fn include_usage(body: &Map<String, Value>) -> bool {
    body.get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

fn data_event(v: &Value) -> String {
    format!("data: {v}\n\n")
}

fn named_event(name: &str, v: &Value) -> String {
    format!("event: {name}\ndata: {v}\n\n")
}

/// The streamed pieces of the answer: "This", " is", " a", ...
fn pieces(c: usize) -> Vec<String> {
    ANSWER[..c]
        .iter()
        .enumerate()
        .map(|(i, w)| {
            if i == 0 {
                w.to_string()
            } else {
                format!(" {w}")
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Answers

struct Gen<'a> {
    deployment: &'a Deployment,
    /// Azure OpenAI adds content-filter results (dated and v1 APIs).
    azure_filters: bool,
    /// Foundry model inference (`/models`): a stream's last chunk always carries `usage`
    /// (its `StreamingChatCompletionsUpdate.usage`); there is no `stream_options`.
    usage_in_last_chunk: bool,
    cache: &'a Mutex<PromptCache>,
}

type GenResult = Result<(Reply, u64), String>;

impl Gen<'_> {
    fn model(&self) -> &str {
        &self.deployment.model
    }

    /// The model as answers name it: Azure OpenAI its version (`gpt-4o-2024-11-20`, the
    /// version discovery reports), Anthropic its dated id (`gen_ai.response.model`).
    fn answer_model(&self) -> String {
        match self.deployment.format.as_str() {
            "OpenAI" => format!("{}-2024-11-20", self.deployment.model),
            "Anthropic" => format!("{}-20251101", self.deployment.model),
            _ => self.deployment.model.clone(),
        }
    }

    /// `c` includes the `reasoning` tokens, `p` the `cached` ones (details.rs).
    fn chat_usage(p: u64, c: u64, cached: u64, reasoning: u64) -> Value {
        json!({
            "prompt_tokens": p,
            "completion_tokens": c,
            "total_tokens": p + c,
            "prompt_tokens_details": {"cached_tokens": cached},
            "completion_tokens_details": {"reasoning_tokens": reasoning},
        })
    }

    /// Cached prompt tokens of these messages (and remembers them for the next request).
    fn cached_tokens<'v>(&self, messages: impl Iterator<Item = &'v Value>) -> u64 {
        let counted: Vec<(&Value, u64)> = messages.map(|m| (m, message_tokens(m))).collect();
        lock(self.cache).lookup_and_store(&self.deployment.name, &counted)
    }

    fn chat(&self, body: &Map<String, Value>) -> GenResult {
        let msgs = messages(body)?;
        let stream = stream_flag(body)?;
        let c = completion_tokens(body, &["max_completion_tokens", "max_tokens"])?;
        let p: u64 = msgs.iter().map(message_tokens).sum();
        let finish = if c < ANSWER.len() { "length" } else { "stop" };
        let id = format!("chatcmpl-{}", random_alnum(29));
        let created = now_secs();
        let cached = self.cached_tokens(msgs.iter());
        let reasoning = details::reasoning_tokens(self.model(), c as u64);
        let usage = Self::chat_usage(p, c as u64 + reasoning, cached, reasoning);
        let billed = p + c as u64 + reasoning;
        if !stream {
            let mut v = json!({
                "id": id,
                "object": "chat.completion",
                "created": created,
                "model": self.answer_model(),
                "system_fingerprint": "fp_standin",
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": ANSWER[..c].join(" "), "refusal": null},
                    "finish_reason": finish,
                    "logprobs": null,
                }],
                "usage": usage,
            });
            if self.azure_filters {
                v["prompt_filter_results"] =
                    json!([{"prompt_index": 0, "content_filter_results": {}}]);
                v["choices"][0]["content_filter_results"] = json!({});
            }
            return Ok((Reply::json(200, &v), billed));
        }
        let with_usage = include_usage(body);
        let chunk = |choices: Value, usage: Option<&Value>| {
            let mut v = json!({
                "id": id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": self.answer_model(),
                "system_fingerprint": "fp_standin",
                "choices": choices,
            });
            if with_usage {
                v["usage"] = usage.cloned().unwrap_or(Value::Null);
            }
            data_event(&v)
        };
        let mut events = Vec::new();
        if self.azure_filters {
            // Azure OpenAI's first chunk: no choices, the prompt's content-filter results.
            events.push(data_event(&json!({
                "choices": [],
                "created": 0,
                "id": "",
                "model": "",
                "object": "",
                "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {}}],
            })));
        }
        let parts = pieces(c);
        if parts.is_empty() || self.azure_filters {
            // Azure OpenAI's second chunk: the role, empty content, no token yet.
            events.push(chunk(
                json!([{"index": 0, "delta": {"role": "assistant", "content": "", "refusal": null}, "finish_reason": null, "logprobs": null}]),
                None,
            ));
        }
        let first_output = events.len();
        for (i, piece) in parts.iter().enumerate() {
            let delta = if i == 0 && !self.azure_filters {
                json!({"role": "assistant", "content": piece})
            } else {
                json!({"content": piece})
            };
            events.push(chunk(
                json!([{"index": 0, "delta": delta, "finish_reason": null, "logprobs": null}]),
                None,
            ));
        }
        let last = chunk(
            json!([{"index": 0, "delta": {}, "finish_reason": finish, "logprobs": null}]),
            None,
        );
        if self.usage_in_last_chunk && !with_usage {
            let mut v: Value = serde_json::from_str(last.trim_start_matches("data: ").trim())
                .unwrap_or(Value::Null);
            v["usage"] = usage.clone();
            events.push(data_event(&v));
        } else {
            events.push(last);
        }
        if with_usage {
            events.push(chunk(json!([]), Some(&usage)));
        }
        events.push("data: [DONE]\n\n".to_string());
        Ok((
            Reply::events(events).with_first_output(first_output),
            billed,
        ))
    }

    fn completions(&self, body: &Map<String, Value>) -> GenResult {
        let p: u64 = match body.get("prompt") {
            Some(Value::String(s)) => 3 + words(s) as u64,
            Some(Value::Array(a)) if !a.is_empty() => a.iter().map(message_tokens).sum(),
            _ => return Err("'prompt' is a required property".into()),
        };
        let stream = stream_flag(body)?;
        let c = completion_tokens(body, &["max_tokens"])?;
        let finish = if c < ANSWER.len() { "length" } else { "stop" };
        let id = format!("cmpl-{}", random_alnum(29));
        let created = now_secs();
        let usage =
            json!({"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c as u64});
        if !stream {
            let v = json!({
                "id": id,
                "object": "text_completion",
                "created": created,
                "model": self.answer_model(),
                "choices": [{"text": ANSWER[..c].join(" "), "index": 0, "finish_reason": finish, "logprobs": null}],
                "usage": usage,
            });
            return Ok((Reply::json(200, &v), p + c as u64));
        }
        let with_usage = include_usage(body);
        let chunk = |choices: Value, usage: Option<&Value>| {
            let mut v = json!({
                "id": id, "object": "text_completion", "created": created, "model": self.answer_model(),
                "choices": choices,
            });
            if with_usage {
                v["usage"] = usage.cloned().unwrap_or(Value::Null);
            }
            data_event(&v)
        };
        let mut events: Vec<String> = pieces(c)
            .iter()
            .map(|piece| {
                chunk(
                    json!([{"text": piece, "index": 0, "finish_reason": null, "logprobs": null}]),
                    None,
                )
            })
            .collect();
        events.push(chunk(
            json!([{"text": "", "index": 0, "finish_reason": finish, "logprobs": null}]),
            None,
        ));
        if with_usage {
            events.push(chunk(json!([]), Some(&usage)));
        }
        events.push("data: [DONE]\n\n".to_string());
        Ok((Reply::events(events).with_first_output(0), p + c as u64))
    }

    fn embeddings(&self, body: &Map<String, Value>) -> GenResult {
        // Each input item: (text used to derive the vector, tokens).
        let items: Vec<(String, u64)> = match body.get("input") {
            Some(Value::String(s)) => vec![(s.clone(), words(s) as u64)],
            Some(Value::Array(a)) if !a.is_empty() => {
                if a.iter().all(Value::is_string) {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(|s| (s.to_string(), words(s) as u64))
                        .collect()
                } else if a.iter().all(Value::is_u64) {
                    vec![(Value::Array(a.clone()).to_string(), a.len() as u64)]
                } else if a.iter().all(|x| x.as_array().is_some_and(|i| i.iter().all(Value::is_u64))) {
                    a.iter()
                        .map(|x| (x.to_string(), x.as_array().map(Vec::len).unwrap_or(0) as u64))
                        .collect()
                } else {
                    return Err("'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference.".into());
                }
            }
            Some(Value::Array(_)) => {
                return Err("'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference.".into())
            }
            _ => return Err("'input' is a required property".into()),
        };
        let base64 = match body.get("encoding_format") {
            None | Some(Value::Null) => false,
            Some(Value::String(f)) if f == "float" => false,
            Some(Value::String(f)) if f == "base64" => true,
            Some(_) => {
                return Err(
                    "Invalid value for 'encoding_format': expected 'float' or 'base64'.".into(),
                )
            }
        };
        // `dimensions` (text-embedding-3 models): the vector's length, default 8 here.
        let dimensions = match body.get("dimensions") {
            None | Some(Value::Null) => 8,
            Some(v) => match v.as_u64() {
                Some(n @ 1..=3072) => n as usize,
                _ => return Err("'dimensions' must be an integer from 1 to 3072.".into()),
            },
        };
        let p: u64 = items.iter().map(|(_, t)| t).sum();
        let data: Vec<Value> = items
            .iter()
            .enumerate()
            .map(|(i, (text, _))| {
                let vector = embedding_vector(text, dimensions);
                let embedding = if base64 {
                    let bytes: Vec<u8> = vector.iter().flat_map(|f| f.to_le_bytes()).collect();
                    json!(STANDARD.encode(bytes))
                } else {
                    json!(vector)
                };
                json!({"object": "embedding", "index": i, "embedding": embedding})
            })
            .collect();
        let v = json!({
            "object": "list",
            "data": data,
            "model": self.answer_model(),
            "usage": {"prompt_tokens": p, "total_tokens": p},
        });
        Ok((Reply::json(200, &v), p))
    }

    fn response_object(
        &self,
        id: &str,
        created: i64,
        status: &str,
        text: Option<&str>,
        usage: Option<&Value>,
        msg_id: &str,
    ) -> Value {
        let output = match text {
            Some(t) => json!([{
                "type": "message",
                "id": msg_id,
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": t, "annotations": []}],
            }]),
            None => json!([]),
        };
        json!({
            "id": id,
            "object": "response",
            "created_at": created,
            "status": status,
            "model": self.answer_model(),
            "output": output,
            "usage": usage.cloned().unwrap_or(Value::Null),
        })
    }

    fn responses(&self, body: &Map<String, Value>) -> GenResult {
        let mut p: u64 = match body.get("input") {
            Some(Value::String(s)) => 3 + words(s) as u64,
            Some(Value::Array(a)) if !a.is_empty() => a.iter().map(message_tokens).sum(),
            _ => return Err("Missing required parameter: 'input'.".into()),
        };
        if let Some(Value::String(i)) = body.get("instructions") {
            p += 3 + words(i) as u64;
        }
        let stream = match body.get("stream") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err("Invalid type for 'stream': expected a boolean.".into()),
        };
        let c = completion_tokens(body, &["max_output_tokens"])?;
        let id = format!("resp_{}", random_alnum(40));
        let msg_id = format!("msg_{}", random_alnum(40));
        let created = now_secs();
        let text = ANSWER[..c].join(" ");
        let usage = json!({
            "input_tokens": p,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": c,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": p + c as u64,
        });
        if !stream {
            let v = self.response_object(
                &id,
                created,
                "completed",
                Some(&text),
                Some(&usage),
                &msg_id,
            );
            return Ok((Reply::json(200, &v), p + c as u64));
        }
        let mut seq = 0u64;
        let mut events = Vec::new();
        let mut push = |events: &mut Vec<String>, name: &str, mut v: Value| {
            v["type"] = json!(name);
            v["sequence_number"] = json!(seq);
            seq += 1;
            events.push(named_event(name, &v));
        };
        let pending = self.response_object(&id, created, "in_progress", None, None, &msg_id);
        push(
            &mut events,
            "response.created",
            json!({"response": pending}),
        );
        push(
            &mut events,
            "response.in_progress",
            json!({"response": pending}),
        );
        push(
            &mut events,
            "response.output_item.added",
            json!({"output_index": 0, "item": {"type": "message", "id": msg_id, "status": "in_progress", "role": "assistant", "content": []}}),
        );
        push(
            &mut events,
            "response.content_part.added",
            json!({"item_id": msg_id, "output_index": 0, "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": []}}),
        );
        let first_output = events.len();
        for piece in pieces(c) {
            push(
                &mut events,
                "response.output_text.delta",
                json!({"item_id": msg_id, "output_index": 0, "content_index": 0, "delta": piece}),
            );
        }
        push(
            &mut events,
            "response.output_text.done",
            json!({"item_id": msg_id, "output_index": 0, "content_index": 0, "text": text}),
        );
        push(
            &mut events,
            "response.content_part.done",
            json!({"item_id": msg_id, "output_index": 0, "content_index": 0, "part": {"type": "output_text", "text": text, "annotations": []}}),
        );
        push(
            &mut events,
            "response.output_item.done",
            json!({"output_index": 0, "item": {"type": "message", "id": msg_id, "status": "completed", "role": "assistant", "content": [{"type": "output_text", "text": text, "annotations": []}]}}),
        );
        let done = self.response_object(
            &id,
            created,
            "completed",
            Some(&text),
            Some(&usage),
            &msg_id,
        );
        push(&mut events, "response.completed", json!({"response": done}));
        Ok((
            Reply::events(events).with_first_output(first_output),
            p + c as u64,
        ))
    }

    fn messages(&self, body: &Map<String, Value>) -> GenResult {
        let max_tokens = match body.get("max_tokens") {
            None | Some(Value::Null) => return Err("max_tokens: Field required".into()),
            Some(v) => match v.as_u64() {
                Some(n) if n >= 1 => n,
                _ => return Err("max_tokens: Input should be greater than or equal to 1".into()),
            },
        };
        let msgs = match body.get("messages") {
            Some(Value::Array(a)) if !a.is_empty() => a,
            Some(Value::Array(_)) => {
                return Err("messages: at least one message is required".into())
            }
            _ => return Err("messages: Field required".into()),
        };
        for (i, m) in msgs.iter().enumerate() {
            match m.get("role").and_then(Value::as_str) {
                Some("user") | Some("assistant") => {}
                _ => {
                    return Err(format!(
                        "messages.{i}.role: Input should be 'user' or 'assistant'"
                    ))
                }
            }
        }
        let stream = match body.get("stream") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err("stream: Input should be a valid boolean".into()),
        };
        let mut p: u64 = msgs.iter().map(message_tokens).sum();
        let system_message = body
            .get("system")
            .filter(|s| !s.is_null())
            .map(|system| serde_json::json!({"role": "system", "content": system}));
        if let Some(system) = &system_message {
            p += 3 + content_words(system.get("content"));
        }
        // Anthropic reports cache reads beside the uncached input, not inside it.
        let cached = self.cached_tokens(system_message.iter().chain(msgs.iter()));
        let uncached = p - cached;
        let c = (max_tokens as usize).min(ANSWER.len());
        let stop = if c < ANSWER.len() {
            "max_tokens"
        } else {
            "end_turn"
        };
        let id = format!("msg_{}", random_alnum(24));
        let text = ANSWER[..c].join(" ");
        if !stream {
            let v = json!({
                "id": id,
                "type": "message",
                "role": "assistant",
                "model": self.answer_model(),
                "content": [{"type": "text", "text": text}],
                "stop_reason": stop,
                "stop_sequence": null,
                "usage": {
                    "input_tokens": uncached,
                    "output_tokens": c,
                    "cache_read_input_tokens": cached,
                    "cache_creation_input_tokens": 0,
                },
            });
            return Ok((
                Reply::json(200, &v).with_header("request-id", format!("req_{}", random_alnum(24))),
                p + c as u64,
            ));
        }
        let mut events = vec![named_event(
            "message_start",
            &json!({"type": "message_start", "message": {
                "id": id, "type": "message", "role": "assistant", "model": self.answer_model(),
                "content": [], "stop_reason": null, "stop_sequence": null,
                // Like Anthropic: a provisional output count in message_start.
                "usage": {"input_tokens": uncached, "output_tokens": c.min(1), "cache_creation_input_tokens": 0, "cache_read_input_tokens": cached},
            }}),
        )];
        events.push(named_event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ));
        events.push(named_event("ping", &json!({"type": "ping"})));
        let first_output = events.len();
        for piece in pieces(c) {
            events.push(named_event(
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}),
            ));
        }
        events.push(named_event(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": 0}),
        ));
        events.push(named_event(
            "message_delta",
            &json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": {"output_tokens": c}}),
        ));
        events.push(named_event(
            "message_stop",
            &json!({"type": "message_stop"}),
        ));
        Ok((
            Reply::events(events)
                .with_first_output(first_output)
                .with_header("request-id", format!("req_{}", random_alnum(24))),
            p + c as u64,
        ))
    }

    fn images(&self, body: &Map<String, Value>) -> GenResult {
        let Some(prompt) = body.get("prompt").and_then(Value::as_str) else {
            return Err("'prompt' is a required property".into());
        };
        let v = json!({
            "created": now_secs(),
            "data": [{"url": format!("https://standin.invalid/images/{}.png", random_alnum(16)), "revised_prompt": prompt}],
        });
        Ok((Reply::json(200, &v), 0))
    }

    fn speech(&self, body: &Map<String, Value>) -> GenResult {
        if body.get("input").and_then(Value::as_str).is_none() {
            return Err("'input' is a required property".into());
        }
        let mut audio = b"ID3\x04\x00\x00\x00\x00\x00\x00".to_vec();
        audio.extend_from_slice(b"azure-standin fake audio");
        Ok((Reply::raw(200, "audio/mpeg", audio), 0))
    }
}

/// Eight deterministic floats in [-1, 1] derived from the input.
fn embedding_vector(text: &str, dimensions: usize) -> Vec<f32> {
    let d = Sha256::digest(text.as_bytes());
    d.chunks(4)
        .cycle()
        .take(dimensions)
        .map(|c| {
            let n = u16::from_be_bytes([c[0], c[1]]);
            (f32::from(n) / 65535.0) * 2.0 - 1.0
        })
        .collect()
}
