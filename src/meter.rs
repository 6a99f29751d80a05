//! Metering an answer: which reader follows the response body, given its content type, and
//! the usage it reports once the answer ends. Host-free; the HTTP context feeds it the chunks
//! as they pass (nothing is held back from the caller).

use crate::usage::{self, SseUsageScanner, Usage};

/// Largest JSON answer whose usage is read (bigger answers are embeddings of huge batches;
/// their usage is then not charged, and a warning says so).
pub const MAX_JSON_USAGE_BODY: usize = 8 * 1024 * 1024;

/// How the response's usage is read.
#[derive(Debug, Default)]
pub enum Meter {
    /// Nothing to read (not JSON, not a stream, or given up).
    #[default]
    None,
    /// A JSON answer, copied as it passes (bounded) and parsed at its end.
    Json(Vec<u8>),
    /// A server-sent event stream, scanned chunk by chunk.
    Sse(SseUsageScanner),
}

impl Meter {
    /// The reader for an answer of this `content-type`.
    pub fn for_content_type(content_type: &str) -> Meter {
        let content_type = content_type.to_ascii_lowercase();
        if content_type.starts_with("text/event-stream") {
            Meter::Sse(SseUsageScanner::new())
        } else if content_type.contains("json") {
            Meter::Json(Vec::new())
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
            Meter::Json(body) => {
                if body.len() + chunk.len() <= MAX_JSON_USAGE_BODY {
                    body.extend_from_slice(chunk);
                } else {
                    log::warn!("azure-llm-filter: answer too large to read its usage");
                    *self = Meter::None;
                }
            }
            Meter::Sse(scanner) => scanner.feed(chunk),
            Meter::None => {}
        }
    }

    /// The usage the answer reported, if any was seen.
    pub fn usage(&self) -> Option<Usage> {
        match self {
            Meter::None => None,
            Meter::Json(body) => usage::from_json(body),
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
    fn oversized_json_gives_up() {
        let mut m = Meter::for_content_type("application/json");
        m.feed(&vec![b' '; MAX_JSON_USAGE_BODY]);
        assert!(m.reads_body());
        m.feed(b"x");
        assert!(!m.reads_body());
        assert_eq!(m.usage(), None);
    }
}
