//! An answer's text, for the answer checks: the whole text of a JSON answer (held until it is
//! checked), or a stream's text deltas cut into windows that are checked as they pass; and the
//! terminal error event that ends a flagged stream in the caller's SDK.
//!
//! | answer | text |
//! |---|---|
//! | chat completions | `choices[].message.content` (JSON), `choices[].delta.content` (stream) |
//! | completions | `choices[].text` |
//! | responses | `output[].content[].text`; `response.output_text.delta` events |
//! | Anthropic messages | `content[].text`; `content_block_delta` events' `delta.text` |

use crate::errors::{Dialect, FilterError};
use serde_json::Value;

/// Longest SSE line kept while waiting for its end (a longer one is skipped).
const MAX_LINE: usize = 256 * 1024;
/// Largest JSON answer held for its check; a larger one is released unchecked (the policy's
/// failure mode decides whether that is allowed).
pub const MAX_HELD_JSON: usize = 4 * 1024 * 1024;

/// The text of a JSON answer.
pub fn json_text(body: &[u8]) -> String {
    let Ok(answer) = serde_json::from_slice::<Value>(body) else {
        return String::new();
    };
    let mut out = String::new();
    let mut add = |v: Option<&Value>| {
        if let Some(s) = v.and_then(Value::as_str) {
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(s);
        }
    };
    let list = |v: Option<&Value>| v.and_then(Value::as_array).cloned().unwrap_or_default();
    for c in list(answer.get("choices")) {
        add(c.pointer("/message/content").or_else(|| c.get("text")));
    }
    for item in list(answer.get("output")) {
        for part in list(item.get("content")) {
            add(part.get("text"));
        }
    }
    for block in list(answer.get("content")) {
        add(block.get("text"));
    }
    out
}

/// The text deltas of a server-sent event stream, chunk by chunk.
#[derive(Debug, Default)]
pub struct SseText {
    line: Vec<u8>,
    skipping: bool,
    ended: bool,
}

impl SseText {
    /// Appends the text of the events completed in `chunk` to `out`.
    pub fn feed(&mut self, chunk: &[u8], out: &mut String) {
        let mut rest = chunk;
        while let Some(pos) = rest.iter().position(|&b| b == b'\n') {
            let (part, tail) = rest.split_at(pos);
            rest = tail.get(1..).unwrap_or_default();
            if self.skipping {
                self.skipping = false;
            } else {
                self.line.extend_from_slice(part);
                self.ended |= event_text(&self.line, out);
            }
            self.line.clear();
        }
        if self.skipping {
            return;
        }
        if self.line.len() + rest.len() > MAX_LINE {
            self.line.clear();
            self.skipping = true;
        } else {
            self.line.extend_from_slice(rest);
        }
    }
}

impl SseText {
    /// The stream's terminal event was seen (`data: [DONE]`, Anthropic's `message_stop`, the
    /// Responses API's `response.completed` / `incomplete` / `failed`): a client stops reading
    /// there, so whatever follows comes too late to stop anything.
    pub fn ended(&self) -> bool {
        self.ended
    }
}

/// Appends the text of one event line to `out`; true if it is the terminal event.
fn event_text(line: &[u8], out: &mut String) -> bool {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Some(data) = line.strip_prefix(b"data:") else {
        return false;
    };
    if data.trim_ascii() == b"[DONE]" {
        return true;
    }
    let Ok(event) = serde_json::from_slice::<Value>(data) else {
        return false;
    };
    let text = match event.get("type").and_then(Value::as_str) {
        Some("message_stop" | "response.completed" | "response.incomplete" | "response.failed") => {
            return true
        }
        Some("response.output_text.delta") => event.get("delta").and_then(Value::as_str),
        Some("content_block_delta") => event.pointer("/delta/text").and_then(Value::as_str),
        _ => {
            for c in event
                .get("choices")
                .and_then(Value::as_array)
                .map_or(&[][..], Vec::as_slice)
            {
                let t = c
                    .pointer("/delta/content")
                    .or_else(|| c.get("text"))
                    .and_then(Value::as_str);
                if let Some(t) = t {
                    out.push_str(t);
                }
            }
            None
        }
    };
    if let Some(t) = text {
        out.push_str(t);
    }
    false
}

/// A stream's text, cut into windows of `size` characters. Each window repeats the last
/// `overlap` characters of the one before, so a phrase across a cut is seen whole once.
#[derive(Debug)]
pub struct Windows {
    size: usize,
    overlap: usize,
    pending: String,
    /// Characters in `pending` not yet checked.
    fresh: usize,
}

impl Windows {
    pub fn new(size: usize) -> Windows {
        Windows {
            size: size.max(1),
            overlap: (size / 10).min(200),
            pending: String::new(),
            fresh: 0,
        }
    }

    /// Adds text; a window to check when one is full.
    pub fn push(&mut self, text: &str) -> Option<String> {
        self.pending.push_str(text);
        self.fresh += text.chars().count();
        (self.fresh >= self.size).then(|| self.take())
    }

    /// What is left to check at the end of the stream, if anything.
    pub fn finish(&mut self) -> Option<String> {
        (self.fresh > 0).then(|| self.take())
    }

    fn take(&mut self) -> String {
        let window = std::mem::take(&mut self.pending);
        let n = window.chars().count();
        let keep_from = window
            .char_indices()
            .nth(n.saturating_sub(self.overlap))
            .map_or(window.len(), |(i, _)| i);
        self.pending = window.get(keep_from..).unwrap_or_default().to_string();
        self.fresh = 0;
        window
    }
}

/// The event that ends a flagged stream, in the caller's dialect: OpenAI's SDK raises
/// `APIError` on a `data:` event with an `error` object (and stops reading); Anthropic's on an
/// `event: error`.
pub fn terminal_event(error: &FilterError) -> Vec<u8> {
    let body = error.body();
    match error.dialect {
        Dialect::OpenAi => format!("data: {body}\n\n"),
        Dialect::Anthropic => format!("event: error\ndata: {body}\n\n"),
    }
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_answers_of_every_api() {
        assert_eq!(
            json_text(br#"{"choices":[{"message":{"role":"assistant","content":"hi there"}}]}"#),
            "hi there"
        );
        assert_eq!(
            json_text(br#"{"choices":[{"text":"a"},{"text":"b"}]}"#),
            "a\nb"
        );
        assert_eq!(
            json_text(
                br#"{"output":[{"type":"message","content":[{"type":"output_text","text":"r"}]}]}"#
            ),
            "r"
        );
        assert_eq!(
            json_text(br#"{"content":[{"type":"text","text":"claude"}]}"#),
            "claude"
        );
        assert_eq!(json_text(b"not json"), "");
    }

    #[test]
    fn stream_text_independent_of_chunking() {
        let stream = "data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n\
                      data: {\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}\r\n\r\n\
                      event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\" you\"}}\n\n\
                      event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"!\"}\n\n\
                      data: [DONE]\n\n";
        for size in [1, 3, 7, 1000] {
            let mut s = SseText::default();
            let mut out = String::new();
            for chunk in stream.as_bytes().chunks(size) {
                s.feed(chunk, &mut out);
            }
            assert_eq!(out, "Hello you!", "chunks of {size}");
        }
    }

    #[test]
    fn terminal_events_are_seen() {
        for stream in [
            "data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\ndata: [DONE]\n\n",
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
            "event: response.completed\r\ndata: {\"type\":\"response.completed\",\"response\":{}}\r\n\r\n",
        ] {
            let mut s = SseText::default();
            let mut out = String::new();
            s.feed(stream.as_bytes(), &mut out);
            assert!(s.ended(), "{stream}");
        }
        let mut s = SseText::default();
        let mut out = String::new();
        s.feed(
            b"data: {\"choices\":[{\"delta\":{\"content\":\"[DONE]\"}}]}\n\ndata: [DO",
            &mut out,
        );
        assert!(!s.ended(), "content spelling [DONE], an unfinished line");
    }

    #[test]
    fn windows_overlap_and_flush() {
        let mut w = Windows::new(20);
        assert_eq!(w.push("0123456789"), None);
        let first = w.push("abcdefghij").unwrap();
        assert_eq!(first, "0123456789abcdefghij");
        assert_eq!(w.push("XY"), None);
        // The next window starts with the overlap (2 characters of 20).
        assert_eq!(w.finish().unwrap(), "ijXY");
        assert_eq!(w.finish(), None);
    }

    #[test]
    fn terminal_events_the_sdks_raise_on() {
        let e = FilterError::bad_request("content_filter", "x");
        let openai = String::from_utf8(terminal_event(&e)).unwrap();
        assert!(openai.starts_with("data: {\"error\":") && openai.ends_with("\n\n"));
        let anthropic =
            String::from_utf8(terminal_event(&e.in_dialect(Dialect::Anthropic))).unwrap();
        assert!(
            anthropic.starts_with("event: error\ndata: {\"error\":")
                || anthropic.starts_with("event: error\ndata: {")
        );
    }
}
