//! JSON error bodies for callers, in the dialect of the API they called: OpenAI-style
//! `{"error":{"message","type","param","code"}}` (OpenAI, Azure OpenAI, Foundry), or Anthropic's
//! `{"type":"error","error":{"type","message"}}` on the Messages routes, so that each SDK raises
//! its own exception with the filter's message. The pipeline only says which dialect
//! ([`FilterError::in_dialect`]); the shapes live here.
//! Messages are written by the filter; nothing from the caller's credentials or from the
//! Entra responses (tokens, assertions) is ever echoed into them.

use serde_json::json;

/// The error shape a caller's SDK understands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Dialect {
    /// OpenAI and Azure OpenAI / Foundry (the `openai` and `azure-ai-inference` SDKs).
    #[default]
    OpenAi,
    /// Anthropic Messages (`anthropic`'s `Anthropic` and `AnthropicFoundry`).
    Anthropic,
}

/// Anthropic's error `type` for a status: the types of its API reference, which the
/// `anthropic` SDK's `ErrorType` lists; the SDK picks its exception by status
/// (`BadRequestError`, `AuthenticationError`, `PermissionDeniedError`, `NotFoundError`,
/// `RateLimitError`, `InternalServerError`, ...).
pub fn anthropic_error_type(status: u32) -> &'static str {
    match status {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        408 | 504 => "timeout_error",
        409 => "conflict_error",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        s if s >= 500 => "api_error",
        // 400, 413 (Anthropic's own 413 says `request_too_large`, which the SDK does not
        // list) and every other client error.
        _ => "invalid_request_error",
    }
}

/// What a guardrail refusal adds to the OpenAI-shaped body, as Azure OpenAI's own content
/// filter does: `param`, `status`, and `innererror` with `code: ResponsibleAIPolicyViolation`
/// and the `content_filter_result` (src/guard/verdict.rs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentFilter {
    pub param: &'static str,
    pub result: serde_json::Value,
}

/// An error the filter answers itself, before anything reaches Azure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterError {
    pub status: u32,
    pub error_type: &'static str,
    pub code: &'static str,
    pub message: String,
    /// Seconds, for 429/503 answers.
    pub retry_after_s: Option<u64>,
    /// More response headers (rate-limit figures, WWW-Authenticate).
    pub extra_headers: Vec<(&'static str, String)>,
    /// The shape of the body.
    pub dialect: Dialect,
    /// A guardrail's refusal: Azure's content-filter fields (OpenAI dialect).
    pub content_filter: Option<Box<ContentFilter>>,
}

impl FilterError {
    pub fn new(
        status: u32,
        error_type: &'static str,
        code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        FilterError {
            status,
            error_type,
            code,
            message: message.into(),
            retry_after_s: None,
            extra_headers: Vec::new(),
            dialect: Dialect::OpenAi,
            content_filter: None,
        }
    }

    pub fn with_content_filter(mut self, detail: ContentFilter) -> Self {
        self.content_filter = Some(Box::new(detail));
        self
    }

    /// The same error, answered in `dialect`'s shape.
    pub fn in_dialect(mut self, dialect: Dialect) -> Self {
        self.dialect = dialect;
        self
    }

    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after_s = Some(seconds);
        self
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(400, "invalid_request_error", code, message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(404, "invalid_request_error", code, message)
    }

    pub fn too_large(limit: usize) -> Self {
        Self::new(
            413,
            "invalid_request_error",
            "request_too_large",
            format!("request body exceeds the limit of {limit} bytes"),
        )
    }

    pub fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(503, "service_unavailable", code, message)
    }

    pub fn internal(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(500, "server_error", code, message)
    }

    pub fn body(&self) -> String {
        match (self.dialect, &self.content_filter) {
            // Azure OpenAI's content-filter refusal: `type` null, `param`, `status`, `innererror`.
            (Dialect::OpenAi, Some(cf)) => json!({"error": {
                "message": self.message, "type": null, "param": cf.param, "code": self.code,
                "status": self.status,
                "innererror": {"code": "ResponsibleAIPolicyViolation", "content_filter_result": cf.result}
            }}),
            (Dialect::OpenAi, None) => json!({"error": {"message": self.message, "type": self.error_type, "param": null, "code": self.code}}),
            // Anthropic's shape has no code: it leads the message, for logs and humans.
            (Dialect::Anthropic, _) => json!({"type": "error", "error": {
                "type": anthropic_error_type(self.status),
                "message": format!("{}: {}", self.code, self.message)
            }}),
        }
        .to_string()
    }

    /// Response headers besides the status: JSON content type and Retry-After when set.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut h = vec![("content-type", "application/json".to_string())];
        if let Some(s) = self.retry_after_s {
            h.push(("retry-after", s.to_string()));
        }
        h.extend(self.extra_headers.iter().cloned());
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_openai_shaped() {
        let e = FilterError::not_found("model_not_found", "The model `x` does not exist");
        let v: serde_json::Value = serde_json::from_str(&e.body()).unwrap();
        assert_eq!(v["error"]["code"], "model_not_found");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["message"], "The model `x` does not exist");
    }

    #[test]
    fn anthropic_routes_get_anthropics_shape() {
        for (e, kind) in [
            (
                FilterError::not_found("model_not_found", "no such model"),
                "not_found_error",
            ),
            (
                FilterError::bad_request("invalid_json", "x"),
                "invalid_request_error",
            ),
            (FilterError::too_large(10), "invalid_request_error"),
            (
                FilterError::new(401, "invalid_request_error", "invalid_api_key", "x"),
                "authentication_error",
            ),
            (
                FilterError::new(403, "invalid_request_error", "quota_exceeded", "x"),
                "permission_error",
            ),
            (
                FilterError::new(408, "invalid_request_error", "request_timeout", "x"),
                "timeout_error",
            ),
            (
                FilterError::new(429, "rate_limit_error", "rate_limit_exceeded", "x"),
                "rate_limit_error",
            ),
            (
                FilterError::internal("filter_misconfigured", "x"),
                "api_error",
            ),
            (
                FilterError::unavailable("backend_token_unavailable", "x"),
                "api_error",
            ),
        ] {
            let code = e.code;
            let v: serde_json::Value =
                serde_json::from_str(&e.in_dialect(Dialect::Anthropic).body()).unwrap();
            assert_eq!(v["type"], "error");
            assert_eq!(v["error"]["type"], kind, "{code}");
            let message = v["error"]["message"].as_str().unwrap();
            assert!(message.starts_with(&format!("{code}: ")), "{message}");
            assert_eq!(v.as_object().unwrap().len(), 2);
        }
    }

    #[test]
    fn retry_after_header() {
        let e = FilterError::unavailable("token_unavailable", "x").with_retry_after(3);
        assert!(e.headers().contains(&("retry-after", "3".to_string())));
    }
}
