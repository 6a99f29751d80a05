//! OpenAI-style JSON error bodies for callers: `{"error":{"message","type","code"}}`.
//! Messages are written by the filter; nothing from the caller's credentials or from the
//! Entra responses (tokens, assertions) is ever echoed into them.

use serde_json::json;

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
        }
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
        json!({"error": {"message": self.message, "type": self.error_type, "param": null, "code": self.code}})
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
    fn retry_after_header() {
        let e = FilterError::unavailable("token_unavailable", "x").with_retry_after(3);
        assert!(e.headers().contains(&("retry-after", "3".to_string())));
    }
}
