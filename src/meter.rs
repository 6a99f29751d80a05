//! Metering an answer: which reader follows the response body, given its content type, and
//! the usage it reports once the answer ends. Host-free; the HTTP context feeds it the chunks
//! as they pass (nothing is held back from the caller).

use crate::usage::{SseUsageScanner, Usage};
use crate::usage_json::JsonUsageScanner;

/// How the response's usage is read.
#[derive(Debug, Default)]
pub enum Meter {
    /// Nothing to read (not JSON, not a stream, or encoded).
    #[default]
    None,
    /// A JSON answer of any size, scanned as it passes for its top-level `usage`.
    Json(JsonUsageScanner),
    /// A server-sent event stream, scanned chunk by chunk.
    Sse(SseUsageScanner),
}

impl Meter {
    /// The reader for an answer of this `content-type` and `content-encoding`. An encoded
    /// answer (the filter asks Azure for none; see src/host/http/forward.rs) is not read: its
    /// charge is then the fail-safe one (src/settlement.rs).
    pub fn for_answer(content_type: &str, content_encoding: Option<&str>) -> Meter {
        if content_encoding.is_some_and(|e| !e.trim().eq_ignore_ascii_case("identity")) {
            return Meter::None;
        }
        Meter::for_content_type(content_type)
    }

    /// The reader for an answer of this `content-type`.
    pub fn for_content_type(content_type: &str) -> Meter {
        let content_type = content_type.to_ascii_lowercase();
        if content_type.starts_with("text/event-stream") {
            Meter::Sse(SseUsageScanner::new())
        } else if content_type.contains("json") {
            Meter::Json(JsonUsageScanner::new())
        } else {
            Meter::None
        }
    }

    /// Whether response chunks need to be read at all.
    pub fn reads_body(&self) -> bool {
        !matches!(self, Meter::None)
    }

    /// Follows one response chunk.
    pub fn feed(&mut self, chunk: &[u8]) {
        match self {
            Meter::Json(scanner) => scanner.feed(chunk),
            Meter::Sse(scanner) => scanner.feed(chunk),
            Meter::None => {}
        }
    }

    /// The answer's end was seen in its bytes (the terminal event of a stream, the last byte
    /// of a JSON document): it is complete whatever the connection does next, and is settled
    /// at once. An answer that is not read ends only with its body.
    pub fn ended(&self) -> bool {
        match self {
            Meter::None => false,
            Meter::Json(scanner) => scanner.closed(),
            Meter::Sse(scanner) => scanner.ended(),
        }
    }

    /// The model that answered, as a JSON answer names it (streams: `crate::first_output`).
    pub fn response_model(&self) -> Option<String> {
        match self {
            Meter::Json(scanner) => scanner.model(),
            _ => None,
        }
    }

    /// The usage the answer reported, if any was seen.
    pub fn usage(&self) -> Option<Usage> {
        match self {
            Meter::None => None,
            Meter::Json(scanner) => scanner.usage(),
            Meter::Sse(scanner) => scanner.usage(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_follows_the_content_type() {
        assert!(matches!(
            Meter::for_content_type("Text/Event-Stream; charset=utf-8"),
            Meter::Sse(_)
        ));
        assert!(matches!(
            Meter::for_content_type("application/json"),
            Meter::Json(_)
        ));
        assert!(!Meter::for_content_type("audio/mpeg").reads_body());
    }

    #[test]
    fn json_usage_is_read_across_chunks() {
        let mut m = Meter::for_content_type("application/json");
        m.feed(br#"{"usage":{"prompt_tokens":3,"#);
        m.feed(br#""completion_tokens":4}}"#);
        let u = m.usage().expect("usage");
        assert_eq!((u.prompt_tokens, u.completion_tokens), (3, 4));
    }

    #[test]
    fn sse_usage_is_read_across_chunks() {
        let mut m = Meter::for_content_type("text/event-stream");
        m.feed(b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,");
        m.feed(b"\"completion_tokens\":6}}\n\ndata: [DONE]\n\n");
        let u = m.usage().expect("usage");
        assert_eq!(u.total(), 11);
    }

    #[test]
    fn the_end_is_seen_in_the_bytes_of_read_answers_only() {
        let mut m = Meter::for_content_type("text/event-stream");
        m.feed(b"data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\n");
        assert!(!m.ended());
        m.feed(b"data: [DONE]\n\n");
        assert!(m.ended());
        let mut m = Meter::for_content_type("application/json");
        m.feed(br#"{"usage":{"prompt_tokens":3}"#);
        assert!(!m.ended());
        m.feed(b"}");
        assert!(m.ended());
        let mut m = Meter::for_content_type("audio/mpeg");
        m.feed(b"}");
        assert!(!m.ended(), "an answer that is not read ends with its body");
    }

    #[test]
    fn large_json_is_read_without_limit_and_encoded_answers_not_at_all() {
        let mut m = Meter::for_content_type("application/json");
        m.feed(b"{\"data\":\"");
        m.feed(&vec![b'x'; 16 * 1024 * 1024]);
        m.feed(b"\",\"usage\":{\"prompt_tokens\":9}}");
        assert_eq!(m.usage().map(|u| u.total()), Some(9));
        assert!(!Meter::for_answer("application/json", Some("gzip")).reads_body());
        assert!(Meter::for_answer("application/json", Some("identity")).reads_body());
        assert!(Meter::for_answer("application/json", None).reads_body());
    }
}
