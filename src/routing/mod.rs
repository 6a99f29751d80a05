//! Which API a caller asked for, which backend serves the model, the Azure path to call and
//! the changes the request body needs on the way. Its configuration (backends, models):
//! `routing::config`.

mod body;
pub mod config;

pub use body::{rewrite_body, set_body_model};

use crate::config::Config;
use crate::errors::{Dialect, FilterError};
use config::{is_valid_model_name, Backend, BackendKind, ModelRoute};
use serde::Deserialize;
use std::borrow::Cow;

/// The inference operations the filter routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    ChatCompletions,
    Completions,
    Embeddings,
    Responses,
    ImageGenerations,
    AudioSpeech,
    AudioTranscriptions,
    AudioTranslations,
    /// Anthropic Messages.
    Messages,
}

impl Operation {
    pub fn from_suffix(suffix: &str) -> Option<Operation> {
        Some(match suffix {
            "chat/completions" => Operation::ChatCompletions,
            "completions" => Operation::Completions,
            "embeddings" => Operation::Embeddings,
            "responses" => Operation::Responses,
            "images/generations" => Operation::ImageGenerations,
            "audio/speech" => Operation::AudioSpeech,
            "audio/transcriptions" => Operation::AudioTranscriptions,
            "audio/translations" => Operation::AudioTranslations,
            "messages" => Operation::Messages,
            _ => return None,
        })
    }

    /// The path suffix of the operation in OpenAI-style APIs.
    pub fn suffix(self) -> &'static str {
        match self {
            Operation::ChatCompletions => "chat/completions",
            Operation::Completions => "completions",
            Operation::Embeddings => "embeddings",
            Operation::Responses => "responses",
            Operation::ImageGenerations => "images/generations",
            Operation::AudioSpeech => "audio/speech",
            Operation::AudioTranscriptions => "audio/transcriptions",
            Operation::AudioTranslations => "audio/translations",
            Operation::Messages => "messages",
        }
    }

    /// The error shape the caller's SDK expects on this operation's route.
    pub fn dialect(self) -> Dialect {
        match self {
            Operation::Messages => Dialect::Anthropic,
            _ => Dialect::OpenAi,
        }
    }

    /// Operations whose body is multipart/form-data rather than JSON.
    pub fn is_multipart(self) -> bool {
        matches!(
            self,
            Operation::AudioTranscriptions | Operation::AudioTranslations
        )
    }
}

/// What a request is, as far as the filter is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// An inference call; `path_model` is the model or deployment named in the path, if any.
    Api {
        op: Operation,
        path_model: Option<String>,
    },
    /// `GET /v1/models` (OpenAI format).
    ListModels,
    /// `GET /deployments` (AzureOpenAI format, read by Foundry gateway connections).
    ListDeployments,
    /// `GET /deployments/{name}`.
    GetDeployment(String),
    /// `GET /v1/models/{id}` (`client.models.retrieve`).
    GetModel(String),
}

/// Classifies a request by method and path (the query is ignored: the backend's own
/// api-version replaces whatever the caller sent). `Ok(None)`: not a path the filter serves;
/// the request goes on unrouted to Envoy's fall-through route.
pub fn classify(method: &str, path: &str) -> Result<Option<Inbound>, FilterError> {
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    let path = path.strip_suffix('/').unwrap_or(path);
    if let Some(family) = model_less_api(path) {
        return Err(model_required(family));
    }
    if method == "GET" {
        if let Some(id) = model_retrieve_id(path) {
            return Ok(Some(Inbound::GetModel(id.to_string())));
        }
        return Ok(match path {
            "/v1/models" | "/openai/v1/models" | "/openai/models" | "/models" => {
                Some(Inbound::ListModels)
            }
            "/deployments" | "/openai/deployments" => Some(Inbound::ListDeployments),
            _ => match path
                .strip_prefix("/deployments/")
                .or_else(|| path.strip_prefix("/openai/deployments/"))
            {
                Some(name) if !name.contains('/') => {
                    Some(Inbound::GetDeployment(checked_path_model(name)?))
                }
                _ => None,
            },
        });
    }
    if method != "POST" {
        return Ok(None);
    }
    let api = |op: Option<Operation>, path_model: Option<String>| {
        op.map(|op| Inbound::Api { op, path_model })
    };
    // Anthropic's own address form serves Messages only.
    if let Some(suffix) = path.strip_prefix("/anthropic/v1/") {
        return Ok((suffix == "messages").then_some(Inbound::Api {
            op: Operation::Messages,
            path_model: None,
        }));
    }
    // OpenAI-style and Azure v1-style: the model is in the body.
    if let Some(suffix) = path
        .strip_prefix("/v1/")
        .or_else(|| path.strip_prefix("/openai/v1/"))
    {
        return Ok(api(Operation::from_suffix(suffix), None));
    }
    // AzureOpenAI(...).responses.create(): the dated Responses API has no deployment in the
    // path (`/openai/responses?api-version=...`); the model is in the body.
    if path == "/openai/responses" {
        return Ok(api(Some(Operation::Responses), None));
    }
    // Azure dated API and Foundry gateway connections with the deployment in the path.
    if let Some(rest) = path
        .strip_prefix("/openai/deployments/")
        .or_else(|| path.strip_prefix("/deployments/"))
    {
        let Some((name, suffix)) = rest.split_once('/') else {
            return Ok(None);
        };
        let name = checked_path_model(name)?;
        return Ok(api(Operation::from_suffix(suffix), Some(name)));
    }
    // Foundry model inference (`/models/...`) and gateway connections without the deployment
    // in the path (`/chat/completions`).
    let suffix = path
        .strip_prefix("/models/")
        .or_else(|| path.strip_prefix('/'))
        .unwrap_or(path);
    Ok(match Operation::from_suffix(suffix) {
        Some(op) if op != Operation::Messages => api(Some(op), None),
        _ => None,
    })
}

/// The `{id}` of `GET /v1/models/{id}`, `/openai/v1/models/{id}`, `/openai/models/{id}`.
fn model_retrieve_id(path: &str) -> Option<&str> {
    let id = path
        .strip_prefix("/v1/models/")
        .or_else(|| path.strip_prefix("/openai/v1/models/"))
        .or_else(|| path.strip_prefix("/openai/models/"))?;
    (!id.is_empty() && !id.contains('/')).then_some(id)
}

/// APIs whose requests name no model: stored responses (`/responses/{id}`, its
/// `input_items`, `cancel`), stored chat completions (`/chat/completions/{id}`),
/// conversations, files, batches, uploads, vector stores, fine-tuning, assistants and threads, under `/v1/`, `/openai/v1/` and the dated `/openai/`. The family's name, for
/// the error message.
///
/// They are refused rather than sent to a default backend: the gateway picks the Azure
/// resource and the budget by model, and these name none. The objects they address live in
/// whichever resource created them (a response stored on one resource is a 404 on another),
/// and batches and fine-tuning spend tokens later, outside any request the filter could meter
/// — forwarding them would open a way around the workload's budget.
fn model_less_api(path: &str) -> Option<&'static str> {
    let rest = path
        .strip_prefix("/v1/")
        .or_else(|| path.strip_prefix("/openai/v1/"))
        .or_else(|| path.strip_prefix("/openai/"))?;
    let (first, tail) = rest.split_once('/').unwrap_or((rest, ""));
    Some(match first {
        // `/v1/responses` itself is the create call, routed by the body's model.
        "responses" if !tail.is_empty() => "stored responses",
        // `/v1/chat/completions` creates; `/v1/chat/completions/{id}[/messages]` are stored ones.
        "chat" if tail.starts_with("completions/") => "stored chat completions",
        "conversations" => "conversations",
        "files" => "files",
        "batches" => "batches",
        "uploads" => "uploads",
        "vector_stores" => "vector stores",
        "fine_tuning" | "fine-tunes" => "fine-tuning",
        "assistants" => "assistants",
        "threads" => "threads",
        _ => return None,
    })
}

fn model_required(family: &str) -> FilterError {
    FilterError::bad_request(
        "model_required",
        format!(
            "{family} are not served by this gateway: it routes every request to an Azure resource and a token budget by its `model`, and this API names none (objects of one resource are not found on another, and deferred work would escape metering)"
        ),
    )
}

fn checked_path_model(name: &str) -> Result<String, FilterError> {
    if is_valid_model_name(name) {
        Ok(name.to_string())
    } else {
        Err(FilterError::bad_request(
            "invalid_model",
            "the model or deployment name in the path has characters that are not allowed",
        ))
    }
}

/// The parts of a JSON request body the filter looks at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BodyInfo {
    pub model: Option<String>,
    pub stream: bool,
    pub include_usage: bool,
    /// The largest completion limit the body sets (`max_tokens`, `max_completion_tokens`,
    /// `max_output_tokens`), for the budget estimate (src/estimate.rs).
    pub requested_completion: Option<u64>,
}

#[derive(Deserialize)]
struct BodyFields<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    max_tokens: Option<serde_json::Value>,
    #[serde(default)]
    max_completion_tokens: Option<serde_json::Value>,
    #[serde(default)]
    max_output_tokens: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

/// Reads `model`, `stream` and `stream_options.include_usage` from a JSON body.
pub fn read_body(body: &[u8]) -> Result<BodyInfo, FilterError> {
    let parsed: BodyFields = serde_json::from_slice(body).map_err(|e| {
        FilterError::bad_request(
            "invalid_json",
            format!(
                "request body is not a valid JSON object (line {}, column {})",
                e.line(),
                e.column()
            ),
        )
    })?;
    Ok(BodyInfo {
        model: parsed.model.map(Cow::into_owned),
        stream: parsed.stream.unwrap_or(false),
        include_usage: parsed
            .stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false),
        requested_completion: crate::estimate::requested_completion(&[
            parsed.max_tokens.as_ref(),
            parsed.max_completion_tokens.as_ref(),
            parsed.max_output_tokens.as_ref(),
        ]),
    })
}

/// Reads the `model` field of a multipart/form-data body (audio transcriptions), strictly:
/// an ambiguous body is a 400 (crate::multipart).
pub fn multipart_model(content_type: &str, body: &[u8]) -> Result<Option<String>, FilterError> {
    crate::multipart::model_field(content_type, body).map_err(|e| e.to_filter_error())
}

/// Where a request goes and what changes on the way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePlan<'c> {
    pub backend: &'c Backend,
    pub backend_index: usize,
    /// The model's configured name (aliases resolved).
    pub model: &'c str,
    pub deployment: &'c str,
    pub path: String,
    /// The body's `model` must be this (backends that take the deployment from the body).
    pub body_model: Option<&'c str>,
    /// Headers to add when the caller did not send them.
    pub default_headers: Vec<(&'static str, &'c str)>,
}

pub fn lookup<'c>(config: &'c Config, model: &str) -> Result<&'c ModelRoute, FilterError> {
    config.models.get(model).ok_or_else(|| {
        FilterError::not_found(
            "model_not_found",
            format!(
                "The model `{}` does not exist or you do not have access to it.",
                printable(model)
            ),
        )
    })
}

/// The plan for a model's first target.
pub fn plan<'c>(
    config: &'c Config,
    op: Operation,
    model: &str,
) -> Result<RoutePlan<'c>, FilterError> {
    plan_target(config, op, model, 0)
}

/// The plan for target `target` of a model's pool (0: the first, or the only one).
pub fn plan_target<'c>(
    config: &'c Config,
    op: Operation,
    model: &str,
    target: usize,
) -> Result<RoutePlan<'c>, FilterError> {
    let route = lookup(config, model)?;
    let missing = || FilterError::internal("config_error", "model refers to a missing backend");
    let target = route.targets.get(target).ok_or_else(missing)?;
    let backend = config.backends.get(target.backend).ok_or_else(missing)?;
    let deployment = target.deployment.as_str();
    let unsupported = || {
        FilterError::bad_request(
            "unsupported_api",
            format!(
                "the model `{}` does not support the {} API",
                printable(model),
                op.suffix()
            ),
        )
    };
    let mut default_headers = Vec::new();
    let (path, body_model) = match &backend.kind {
        BackendKind::AzureOpenai { api_version } => match op {
            Operation::Messages => return Err(unsupported()),
            // The dated Responses API takes the deployment from the body.
            Operation::Responses => (
                format!("/openai/responses?api-version={api_version}"),
                Some(deployment),
            ),
            _ => (
                [
                    "/openai/deployments/",
                    deployment,
                    "/",
                    op.suffix(),
                    "?api-version=",
                    api_version,
                ]
                .concat(),
                None,
            ),
        },
        BackendKind::AzureOpenaiV1 => match op {
            Operation::Messages => return Err(unsupported()),
            _ => (format!("/openai/v1/{}", op.suffix()), Some(deployment)),
        },
        BackendKind::FoundryModels { api_version } => match op {
            Operation::ChatCompletions | Operation::Embeddings | Operation::Completions => (
                format!("/models/{}?api-version={api_version}", op.suffix()),
                Some(deployment),
            ),
            _ => return Err(unsupported()),
        },
        BackendKind::FoundryAnthropic { anthropic_version } => match op {
            Operation::Messages => {
                default_headers.push(("anthropic-version", anthropic_version.as_str()));
                ("/anthropic/v1/messages".to_string(), Some(deployment))
            }
            _ => return Err(unsupported()),
        },
    };
    Ok(RoutePlan {
        backend,
        backend_index: target.backend,
        model: route.name.as_str(),
        deployment,
        path,
        body_model,
        default_headers,
    })
}

/// Whether the filter should ask for usage in a stream (so tokens can be counted).
///
/// Foundry model inference (`/models`, api-version 2024-05-01-preview) does not list
/// `stream_options` and refuses parameters it does not know unless the backend sends
/// `extra-parameters: pass-through`; it reports usage on a stream's last chunk by itself, so
/// there the filter only asks when the backend passes parameters through, and otherwise reads
/// what the stream carries.
pub fn wants_include_usage(op: Operation, backend: &Backend, info: &BodyInfo) -> bool {
    let accepted = match backend.kind {
        BackendKind::FoundryAnthropic { .. } => false,
        BackendKind::FoundryModels { .. } => backend.headers.iter().any(|(name, value)| {
            name.eq_ignore_ascii_case("extra-parameters") && value == "pass-through"
        }),
        _ => true,
    };
    info.stream
        && !info.include_usage
        && matches!(op, Operation::ChatCompletions | Operation::Completions)
        && accepted
}

/// A caller-supplied name, cut short and stripped of control characters, for error messages.
fn printable(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(100).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config() -> Config {
        let v = json!({
            "credentials": {"main": {"kind": "client_secret", "tenant_id": "t", "client_id": "c",
                                     "client_secret": "s", "token_cluster": "entra"}},
            "backends": {
                "aoai": {"kind": "azure_openai", "host": "r.openai.azure.com", "api_version": "2024-10-21", "credential": "main"},
                "v1": {"kind": "azure_openai_v1", "host": "r2.openai.azure.com", "credential": "main"},
                "fm": {"kind": "foundry_models", "host": "f.services.ai.azure.com", "credential": "main",
                       "headers": {"extra-parameters": "pass-through"}},
                "claude": {"kind": "foundry_anthropic", "host": "f.services.ai.azure.com", "credential": "main"}
            },
            "models": {
                "gpt-4o": {"backend": "aoai", "deployment": "gpt-4o-prod", "aliases": ["gpt4o"]},
                "gpt-4.1": {"backend": "v1", "deployment": "gpt-41-dep"},
                "mistral": {"backend": "fm", "deployment": "mistral-large"},
                "claude-opus-4-5": {"backend": "claude", "deployment": "claude-opus-4-5"}
            }
        });
        Config::parse(v.to_string().as_bytes()).unwrap()
    }

    fn api(op: Operation, m: Option<&str>) -> Option<Inbound> {
        Some(Inbound::Api {
            op,
            path_model: m.map(String::from),
        })
    }

    #[test]
    fn classify_inbound_forms() {
        use Operation::*;
        let c = |m, p| classify(m, p).unwrap();
        assert_eq!(
            c("POST", "/v1/chat/completions"),
            api(ChatCompletions, None)
        );
        assert_eq!(
            c("POST", "/v1/chat/completions?x=1"),
            api(ChatCompletions, None)
        );
        assert_eq!(c("POST", "/v1/embeddings/"), api(Embeddings, None));
        assert_eq!(c("POST", "/v1/responses"), api(Responses, None));
        assert_eq!(c("POST", "/v1/messages"), api(Messages, None));
        assert_eq!(c("POST", "/anthropic/v1/messages"), api(Messages, None));
        assert_eq!(c("POST", "/anthropic/v1/chat/completions"), None);
        assert_eq!(
            c("POST", "/v1/audio/transcriptions"),
            api(AudioTranscriptions, None)
        );
        assert_eq!(
            c("POST", "/openai/v1/chat/completions"),
            api(ChatCompletions, None)
        );
        assert_eq!(
            c(
                "POST",
                "/openai/deployments/gpt-4o/chat/completions?api-version=x"
            ),
            api(ChatCompletions, Some("gpt-4o"))
        );
        assert_eq!(
            c("POST", "/deployments/gpt-4o/chat/completions"),
            api(ChatCompletions, Some("gpt-4o"))
        );
        assert_eq!(c("POST", "/chat/completions"), api(ChatCompletions, None));
        assert_eq!(
            c("POST", "/models/chat/completions"),
            api(ChatCompletions, None)
        );
        assert_eq!(c("GET", "/v1/models"), Some(Inbound::ListModels));
        assert_eq!(
            c("GET", "/v1/models/gpt-4o"),
            Some(Inbound::GetModel("gpt-4o".into()))
        );
        assert_eq!(
            c("GET", "/openai/models/gpt-4o?api-version=x"),
            Some(Inbound::GetModel("gpt-4o".into()))
        );
        assert_eq!(c("GET", "/v1/models/a/b"), None);
        // AzureOpenAI(...).models.list()
        assert_eq!(
            c("GET", "/openai/models?api-version=2025-04-01-preview"),
            Some(Inbound::ListModels)
        );
        assert_eq!(c("GET", "/deployments"), Some(Inbound::ListDeployments));
        assert_eq!(
            c("GET", "/deployments/gpt-4o"),
            Some(Inbound::GetDeployment("gpt-4o".into()))
        );
        assert_eq!(c("GET", "/v1/chat/completions"), None);
        assert_eq!(c("DELETE", "/v1/models"), None);
        // Never routed (refused as a stored-completion path).
        assert!(!matches!(
            classify("POST", "/v1/chat/completions/../x"),
            Ok(Some(_))
        ));
        assert_eq!(c("POST", "/other"), None);
        assert_eq!(c("POST", "/messages"), None);
        // AzureOpenAI(...).responses.create(): dated, model in the body.
        assert_eq!(
            c("POST", "/openai/responses?api-version=2025-04-01-preview"),
            api(Responses, None)
        );
        assert_eq!(c("GET", "/openai/responses"), None);
    }

    #[test]
    fn model_less_apis_get_a_400_naming_why() {
        for (m, p, family) in [
            ("GET", "/v1/responses/resp_123", "stored responses"),
            ("DELETE", "/v1/responses/resp_123", "stored responses"),
            (
                "GET",
                "/v1/responses/resp_1/input_items",
                "stored responses",
            ),
            ("POST", "/v1/responses/resp_1/cancel", "stored responses"),
            (
                "GET",
                "/openai/responses/resp_1?api-version=2025-04-01-preview",
                "stored responses",
            ),
            ("GET", "/openai/v1/responses/resp_1", "stored responses"),
            ("POST", "/v1/files", "files"),
            ("GET", "/openai/files?api-version=x", "files"),
            ("POST", "/v1/batches", "batches"),
            ("GET", "/openai/v1/batches/batch_1", "batches"),
            ("POST", "/openai/batches", "batches"),
            ("POST", "/v1/fine_tuning/jobs", "fine-tuning"),
            ("POST", "/v1/vector_stores", "vector stores"),
            (
                "GET",
                "/v1/chat/completions/chatcmpl-1",
                "stored chat completions",
            ),
            (
                "DELETE",
                "/openai/v1/chat/completions/chatcmpl-1",
                "stored chat completions",
            ),
            ("POST", "/v1/conversations", "conversations"),
        ] {
            let e = classify(m, p).unwrap_err();
            assert_eq!((e.status, e.code), (400, "model_required"), "{m} {p}");
            assert!(e.message.starts_with(family), "{m} {p}: {}", e.message);
        }
        // Still routed or still not ours.
        assert!(classify("POST", "/v1/responses").unwrap().is_some());
        assert_eq!(classify("GET", "/v1/other").unwrap(), None);
        assert_eq!(
            classify("GET", "/openai/deployments").unwrap(),
            Some(Inbound::ListDeployments)
        );
    }

    #[test]
    fn path_injection_in_model_is_refused() {
        for p in [
            "/openai/deployments/../secrets/chat/completions",
            "/openai/deployments/a%2fb/chat/completions",
            "/deployments/a\r\nx/chat/completions",
            "/openai/deployments/.hidden/chat/completions",
        ] {
            let e = classify("POST", p).unwrap_err();
            assert_eq!(e.code, "invalid_model", "{p}");
        }
        assert!(classify("GET", "/deployments/..").is_err());
    }

    #[test]
    fn plans_per_backend_kind() {
        let c = config();
        let p = plan(&c, Operation::ChatCompletions, "gpt-4o").unwrap();
        assert_eq!(
            p.path,
            "/openai/deployments/gpt-4o-prod/chat/completions?api-version=2024-10-21"
        );
        assert_eq!(p.body_model, None);
        let p = plan(&c, Operation::ChatCompletions, "gpt4o").unwrap();
        assert_eq!(p.deployment, "gpt-4o-prod", "alias");
        let p = plan(&c, Operation::Responses, "gpt-4o").unwrap();
        assert_eq!(p.path, "/openai/responses?api-version=2024-10-21");
        assert_eq!(p.body_model, Some("gpt-4o-prod"));
        let p = plan(&c, Operation::Responses, "gpt-4.1").unwrap();
        assert_eq!(p.path, "/openai/v1/responses");
        assert_eq!(p.body_model, Some("gpt-41-dep"));
        let p = plan(&c, Operation::ChatCompletions, "mistral").unwrap();
        assert_eq!(
            p.path,
            "/models/chat/completions?api-version=2024-05-01-preview"
        );
        assert_eq!(
            p.backend.headers,
            vec![("extra-parameters".to_string(), "pass-through".to_string())]
        );
        let p = plan(&c, Operation::Messages, "claude-opus-4-5").unwrap();
        assert_eq!(p.path, "/anthropic/v1/messages");
        assert_eq!(p.default_headers, vec![("anthropic-version", "2023-06-01")]);
        assert_eq!(
            plan(&c, Operation::ChatCompletions, "claude-opus-4-5")
                .unwrap_err()
                .code,
            "unsupported_api"
        );
        assert_eq!(
            plan(&c, Operation::Messages, "gpt-4o").unwrap_err().code,
            "unsupported_api"
        );
    }

    #[test]
    fn unknown_model_is_404_without_control_chars() {
        let e = plan(&config(), Operation::ChatCompletions, "nope\r\nx: y").unwrap_err();
        assert_eq!(e.status, 404);
        assert_eq!(e.code, "model_not_found");
        assert!(!e.message.contains('\r'));
    }

    #[test]
    fn body_reading() {
        let i = read_body(br#"{"model":"gpt-4o","messages":[],"stream":true}"#).unwrap();
        assert_eq!(i.model.as_deref(), Some("gpt-4o"));
        assert!(i.stream && !i.include_usage);
        let i =
            read_body(br#"{"model":"g\u0070t","stream_options":{"include_usage":true}}"#).unwrap();
        assert_eq!(i.model.as_deref(), Some("gpt"));
        assert!(i.include_usage);
        assert_eq!(read_body(b"{oops").unwrap_err().code, "invalid_json");
        assert_eq!(read_body(b"[1,2]").unwrap_err().code, "invalid_json");
        assert_eq!(read_body(b"{}").unwrap().model, None);
        let limits =
            read_body(br#"{"max_tokens":50,"max_completion_tokens":80,"max_output_tokens":null}"#);
        assert_eq!(limits.unwrap().requested_completion, Some(80));
        assert_eq!(
            read_body(br#"{"model":5}"#).unwrap_err().code,
            "invalid_json"
        );
    }

    #[test]
    fn body_rewrites() {
        let out = rewrite_body(br#"{"model":"alias","stream":true}"#, Some("dep"), true)
            .unwrap()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["model"], "dep");
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(
            rewrite_body(br#"{"model":"dep"}"#, Some("dep"), false).unwrap(),
            None
        );
        let out = rewrite_body(br#"{"stream_options":5}"#, None, true)
            .unwrap()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        // Nothing asked: the body is not even parsed (read_body already checked it).
        assert_eq!(rewrite_body(b"{", None, false).unwrap(), None);
    }

    #[test]
    fn include_usage_only_for_openai_streams() {
        let c = config();
        let streaming = BodyInfo {
            stream: true,
            ..BodyInfo::default()
        };
        let aoai = &c.backends[c.models["gpt-4o"].backend];
        let claude = &c.backends[c.models["claude-opus-4-5"].backend];
        // Foundry /models: only with `extra-parameters: pass-through` (the test config's).
        let mut foundry = c.backends[c.models["mistral"].backend].clone();
        assert!(wants_include_usage(
            Operation::ChatCompletions,
            &foundry,
            &streaming
        ));
        foundry.headers.clear();
        assert!(!wants_include_usage(
            Operation::ChatCompletions,
            &foundry,
            &streaming
        ));
        assert!(wants_include_usage(
            Operation::ChatCompletions,
            aoai,
            &streaming
        ));
        assert!(!wants_include_usage(
            Operation::Embeddings,
            aoai,
            &streaming
        ));
        assert!(!wants_include_usage(
            Operation::Messages,
            claude,
            &streaming
        ));
        let done = BodyInfo {
            include_usage: true,
            ..streaming.clone()
        };
        assert!(!wants_include_usage(
            Operation::ChatCompletions,
            aoai,
            &done
        ));
    }

    #[test]
    fn multipart_model_field() {
        let body = b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\nRIFF....\r\n--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper\r\n--XyZ--\r\n";
        assert_eq!(
            multipart_model("multipart/form-data; boundary=XyZ", body)
                .unwrap()
                .as_deref(),
            Some("whisper")
        );
        assert_eq!(
            multipart_model("multipart/form-data", body)
                .unwrap_err()
                .code,
            "invalid_multipart_body"
        );
        assert!(multipart_model("multipart/form-data; boundary=other", body).is_err());
    }
}
