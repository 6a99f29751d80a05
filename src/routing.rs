//! Which API a caller asked for, which backend serves the model, and the Azure path to call.

use crate::config::{Backend, BackendKind, Config, ModelRoute};
use crate::errors::FilterError;
use serde::Deserialize;

/// The OpenAI-style inbound APIs the filter routes by the `model` in the request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboundApi {
    ChatCompletions,
    Completions,
    Embeddings,
    ImageGenerations,
}

impl InboundApi {
    /// The operation's path below `/openai/deployments/{deployment}/`.
    fn azure_operation(self) -> &'static str {
        match self {
            InboundApi::ChatCompletions => "chat/completions",
            InboundApi::Completions => "completions",
            InboundApi::Embeddings => "embeddings",
            InboundApi::ImageGenerations => "images/generations",
        }
    }
}

/// Classifies a request by method and path (query ignored). `None`: not an API the filter
/// handles; the request goes on unrouted and Envoy's fall-through route answers it.
pub fn classify(method: &str, path: &str) -> Option<InboundApi> {
    if method != "POST" {
        return None;
    }
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    let path = path.strip_suffix('/').unwrap_or(path);
    match path {
        "/v1/chat/completions" => Some(InboundApi::ChatCompletions),
        "/v1/completions" => Some(InboundApi::Completions),
        "/v1/embeddings" => Some(InboundApi::Embeddings),
        "/v1/images/generations" => Some(InboundApi::ImageGenerations),
        _ => None,
    }
}

#[derive(Deserialize)]
struct ModelField<'a> {
    #[serde(borrow)]
    model: Option<std::borrow::Cow<'a, str>>,
}

/// Reads `model` from a JSON request body.
pub fn model_from_body(body: &[u8]) -> Result<String, FilterError> {
    let parsed: ModelField = serde_json::from_slice(body).map_err(|e| {
        FilterError::bad_request(
            "invalid_json",
            format!(
                "request body is not a valid JSON object (line {}, column {})",
                e.line(),
                e.column()
            ),
        )
    })?;
    match parsed.model {
        Some(m) if !m.is_empty() => Ok(m.into_owned()),
        _ => Err(FilterError::bad_request(
            "missing_model",
            "request body must name a `model`",
        )),
    }
}

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteDecision<'c> {
    pub backend: &'c Backend,
    pub backend_index: usize,
    pub deployment: &'c str,
    pub path: String,
}

pub fn route<'c>(
    config: &'c Config,
    api: InboundApi,
    model: &str,
) -> Result<RouteDecision<'c>, FilterError> {
    let ModelRoute {
        backend: backend_index,
        deployment,
    } = config.models.get(model).ok_or_else(|| {
        FilterError::not_found(
            "model_not_found",
            format!(
                "The model `{}` does not exist or you do not have access to it.",
                printable(model)
            ),
        )
    })?;
    let backend = config.backends.get(*backend_index).ok_or_else(|| {
        FilterError::internal("config_error", "model refers to a missing backend")
    })?;
    let path = match &backend.kind {
        BackendKind::AzureOpenai { api_version } => format!(
            "/openai/deployments/{deployment}/{}?api-version={api_version}",
            api.azure_operation()
        ),
    };
    Ok(RouteDecision {
        backend,
        backend_index: *backend_index,
        deployment,
        path,
    })
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
            "backends": {"aoai": {"kind": "azure_openai", "host": "r.openai.azure.com",
                                  "api_version": "2024-10-21", "credential": "main"}},
            "models": {"gpt-4o": {"backend": "aoai", "deployment": "gpt-4o-prod"},
                       "emb": {"backend": "aoai", "deployment": "text-embedding-3-small"}}
        });
        Config::parse(v.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn classify_paths() {
        assert_eq!(
            classify("POST", "/v1/chat/completions"),
            Some(InboundApi::ChatCompletions)
        );
        assert_eq!(
            classify("POST", "/v1/chat/completions?x=1"),
            Some(InboundApi::ChatCompletions)
        );
        assert_eq!(
            classify("POST", "/v1/embeddings/"),
            Some(InboundApi::Embeddings)
        );
        assert_eq!(classify("GET", "/v1/chat/completions"), None);
        assert_eq!(classify("POST", "/v1/chat/completions/../x"), None);
        assert_eq!(classify("POST", "/other"), None);
    }

    #[test]
    fn routes_model_to_deployment_path() {
        let c = config();
        let r = route(&c, InboundApi::ChatCompletions, "gpt-4o").unwrap();
        assert_eq!(
            r.path,
            "/openai/deployments/gpt-4o-prod/chat/completions?api-version=2024-10-21"
        );
        assert_eq!(r.backend.host, "r.openai.azure.com");
        let r = route(&c, InboundApi::Embeddings, "emb").unwrap();
        assert_eq!(
            r.path,
            "/openai/deployments/text-embedding-3-small/embeddings?api-version=2024-10-21"
        );
    }

    #[test]
    fn unknown_model_is_404_without_control_chars() {
        let e = route(&config(), InboundApi::ChatCompletions, "nope\r\nx: y").unwrap_err();
        assert_eq!(e.status, 404);
        assert_eq!(e.code, "model_not_found");
        assert!(!e.message.contains('\r'));
    }

    #[test]
    fn model_from_body_errors() {
        assert_eq!(
            model_from_body(br#"{"model":"gpt-4o","messages":[]}"#).unwrap(),
            "gpt-4o"
        );
        assert_eq!(model_from_body(br#"{"model":"g\u0070t"}"#).unwrap(), "gpt");
        assert_eq!(model_from_body(b"{oops").unwrap_err().code, "invalid_json");
        assert_eq!(model_from_body(b"[1,2]").unwrap_err().code, "invalid_json");
        assert_eq!(model_from_body(b"{}").unwrap_err().code, "missing_model");
        assert_eq!(
            model_from_body(br#"{"model":""}"#).unwrap_err().code,
            "missing_model"
        );
        assert_eq!(
            model_from_body(br#"{"model":5}"#).unwrap_err().code,
            "invalid_json"
        );
    }
}
