//! Prompt and answer capture for the per-request usage record (`capture` in the plugin
//! configuration): off by default, size-capped, with a redaction hook.
//!
//! Some operators must keep what was asked and answered (APIM logs both to Event Hub). When
//! `capture.prompt` is on, the prompt-bearing fields of the request body (`messages`, `input`,
//! `prompt`, `system`, `instructions`) are kept as compact JSON, after the redaction: the
//! `content` of every message whose `role` is in `drop_content_of_roles` is removed (Anthropic's
//! `system` field counts as role `system`, the Responses API's `instructions` as `system` and
//! `developer`). When `capture.answer` is on, the answer's text is kept: the message contents
//! of a JSON answer, or the text deltas of a stream, joined. Both are cut at `max_bytes` (on a
//! character boundary, `...` marking the cut) and left in filter state for the access log
//! (`azure_llm_prompt`, `azure_llm_answer`).
//!
//! Nothing here reads headers: caller credentials never reach a capture.

use crate::config::error::ConfigError;
use serde::Deserialize;
use serde_json::{Map, Value};

/// Default and largest `max_bytes`.
pub const DEFAULT_MAX_BYTES: usize = 4096;
pub const MAX_MAX_BYTES: usize = 64 * 1024;
/// Largest JSON answer read for its text (a bigger one is captured as `...`).
const MAX_JSON_ANSWER: usize = 1024 * 1024;
/// Longest SSE line kept while waiting for its end.
const MAX_SSE_LINE: usize = 256 * 1024;
/// What marks a cut capture.
const CUT: &str = "...";

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawCapture {
    /// Keep the prompt (the request's prompt-bearing fields, redacted). Default false.
    #[serde(default)]
    pub prompt: Option<bool>,
    /// Keep the answer's text. Default false.
    #[serde(default)]
    pub answer: Option<bool>,
    /// Longest capture in bytes (1 to 65536). Default 4096.
    #[serde(default)]
    pub max_bytes: Option<u64>,
    /// Roles whose message `content` is dropped from the captured prompt (e.g. `system`).
    #[serde(default)]
    pub drop_content_of_roles: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capture {
    pub prompt: bool,
    pub answer: bool,
    pub max_bytes: usize,
    pub drop_content_of_roles: Vec<String>,
}

impl Capture {
    pub fn from_raw(raw: &RawCapture, field: &str) -> Result<Capture, ConfigError> {
        let max_bytes = match raw.max_bytes {
            None => DEFAULT_MAX_BYTES,
            Some(n) => usize::try_from(n)
                .ok()
                .filter(|n| (1..=MAX_MAX_BYTES).contains(n))
                .ok_or_else(|| ConfigError {
                    field: format!("{field}.max_bytes"),
                    reason: format!("must be between 1 and {MAX_MAX_BYTES}"),
                })?,
        };
        for (i, role) in raw.drop_content_of_roles.iter().enumerate() {
            let ok = !role.is_empty()
                && role.len() <= 64
                && role
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !ok {
                return Err(ConfigError {
                    field: format!("{field}.drop_content_of_roles[{i}]"),
                    reason: "must be a role name such as `system` (letters, digits, '_', '-')"
                        .to_string(),
                });
            }
        }
        Ok(Capture {
            prompt: raw.prompt.unwrap_or(false),
            answer: raw.answer.unwrap_or(false),
            max_bytes,
            drop_content_of_roles: raw.drop_content_of_roles.clone(),
        })
    }

    fn drops(&self, role: &str) -> bool {
        self.drop_content_of_roles.iter().any(|r| r == role)
    }

    /// The captured prompt of a JSON request body, redacted and capped; `None` when capture
    /// is off or the body is not a JSON object.
    pub fn prompt_of(&self, body: &[u8]) -> Option<String> {
        if !self.prompt {
            return None;
        }
        let Ok(Value::Object(mut request)) = serde_json::from_slice::<Value>(body) else {
            return None;
        };
        let mut kept = Map::new();
        for name in ["system", "instructions", "messages", "input", "prompt"] {
            if let Some(v) = request.remove(name) {
                kept.insert(name.to_string(), v);
            }
        }
        if self.drops("system") {
            kept.remove("system");
        }
        if self.drops("system") || self.drops("developer") {
            kept.remove("instructions");
        }
        for list in ["messages", "input"] {
            if let Some(Value::Array(items)) = kept.get_mut(list) {
                for item in items.iter_mut() {
                    let Value::Object(message) = item else {
                        continue;
                    };
                    let dropped = message
                        .get("role")
                        .and_then(Value::as_str)
                        .is_some_and(|r| self.drops(r));
                    if dropped {
                        message.remove("content");
                    }
                }
            }
        }
        let text = serde_json::to_string(&Value::Object(kept)).ok()?;
        Some(cap(text, self.max_bytes))
    }

    /// A reader of the answer's text, if answers are captured.
    pub fn answer_reader(&self, streamed: bool) -> Option<AnswerCapture> {
        self.answer.then(|| AnswerCapture {
            streamed,
            max_bytes: self.max_bytes,
            ..AnswerCapture::default()
        })
    }
}

/// Cuts `text` to at most `max` bytes on a character boundary, marking the cut.
fn cap(mut text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    // A cap too small for the marker is cut without one.
    let marker = if max >= CUT.len() { CUT } else { "" };
    let mut end = max - marker.len();
    while end > 0 && !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push_str(marker);
    text
}

/// The answer's text, read chunk by chunk as it passes.
#[derive(Debug, Default)]
pub struct AnswerCapture {
    streamed: bool,
    max_bytes: usize,
    /// JSON answers: the body so far (bounded); streams: the current line.
    buffer: Vec<u8>,
    overflowed: bool,
    text: String,
}

impl AnswerCapture {
    pub fn feed(&mut self, chunk: &[u8]) {
        if !self.streamed {
            if self.buffer.len() + chunk.len() > MAX_JSON_ANSWER {
                self.overflowed = true;
                self.buffer = Vec::new();
            } else if !self.overflowed {
                self.buffer.extend_from_slice(chunk);
            }
            return;
        }
        let mut rest = chunk;
        while let Some(pos) = rest.iter().position(|&b| b == b'\n') {
            let (line, tail) = rest.split_at(pos);
            rest = tail.get(1..).unwrap_or_default();
            if self.overflowed {
                self.overflowed = false;
            } else {
                let mut full = std::mem::take(&mut self.buffer);
                full.extend_from_slice(line);
                self.sse_line(&full);
            }
            self.buffer.clear();
        }
        if self.overflowed {
            return;
        }
        if self.buffer.len() + rest.len() > MAX_SSE_LINE {
            self.buffer.clear();
            self.overflowed = true;
        } else {
            self.buffer.extend_from_slice(rest);
        }
    }

    /// The captured text, capped.
    pub fn finish(mut self) -> String {
        if !self.streamed {
            if self.overflowed {
                return cap(CUT.to_string(), self.max_bytes);
            }
            if let Ok(answer) = serde_json::from_slice::<Value>(&self.buffer) {
                json_answer_text(&answer, &mut self.text);
            }
        }
        cap(self.text, self.max_bytes)
    }

    fn push(&mut self, s: &str) {
        // Keep a little past the cap so that `cap` marks the cut.
        if self.text.len() <= self.max_bytes {
            self.text.push_str(s);
        }
    }

    fn sse_line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(data) = line.strip_prefix(b"data:") else {
            return;
        };
        let Ok(event) = serde_json::from_slice::<Value>(data) else {
            return;
        };
        match event.get("type").and_then(Value::as_str) {
            Some("response.output_text.delta") => {
                if let Some(d) = event.get("delta").and_then(Value::as_str) {
                    self.push(d);
                }
            }
            Some("content_block_delta") => {
                if let Some(t) = event.pointer("/delta/text").and_then(Value::as_str) {
                    self.push(t);
                }
            }
            _ => {
                let Some(choices) = event.get("choices").and_then(Value::as_array) else {
                    return;
                };
                for choice in choices {
                    let text = choice
                        .pointer("/delta/content")
                        .or_else(|| choice.get("text"))
                        .and_then(Value::as_str);
                    if let Some(t) = text {
                        self.push(t);
                    }
                }
            }
        }
    }
}

/// The text of a JSON answer: chat and legacy choices, Responses output, Anthropic content.
fn json_answer_text(answer: &Value, out: &mut String) {
    let mut add = |v: Option<&Value>| {
        if let Some(s) = v.and_then(Value::as_str) {
            out.push_str(s);
        }
    };
    if let Some(choices) = answer.get("choices").and_then(Value::as_array) {
        for c in choices {
            add(c.pointer("/message/content").or_else(|| c.get("text")));
        }
    }
    let blocks = |v: Option<&Value>| v.and_then(Value::as_array).cloned().unwrap_or_default();
    for item in blocks(answer.get("output")) {
        for part in blocks(item.get("content")) {
            add(part.get("text"));
        }
    }
    for block in blocks(answer.get("content")) {
        add(block.get("text"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capture(v: serde_json::Value) -> Capture {
        Capture::from_raw(&serde_json::from_value(v).unwrap(), "capture").unwrap()
    }

    #[test]
    fn off_by_default() {
        let c = capture(serde_json::json!({}));
        assert!(!c.prompt && !c.answer);
        assert_eq!(c.max_bytes, DEFAULT_MAX_BYTES);
        assert_eq!(c.prompt_of(br#"{"messages":[]}"#), None);
        assert!(c.answer_reader(true).is_none());
    }

    #[test]
    fn prompt_redaction_drops_content_of_roles() {
        let c = capture(
            serde_json::json!({"prompt": true, "drop_content_of_roles": ["system", "tool"]}),
        );
        let body = br#"{"model":"gpt-4o","temperature":0.2,"messages":[{"role":"system","content":"secret instructions"},{"role":"user","content":"hello there"},{"role":"tool","tool_call_id":"c1","content":"db rows"}]}"#;
        let got = c.prompt_of(body).unwrap();
        // Keys come out sorted (serde_json's map).
        assert_eq!(
            got,
            r#"{"messages":[{"role":"system"},{"content":"hello there","role":"user"},{"role":"tool","tool_call_id":"c1"}]}"#
        );
        // Anthropic's system and the Responses API's instructions count as system messages.
        let claude = br#"{"system":"be terse","messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}],"max_tokens":5}"#;
        assert_eq!(
            c.prompt_of(claude).unwrap(),
            r#"{"messages":[{"content":[{"text":"hi","type":"text"}],"role":"user"}]}"#
        );
        let responses = br#"{"instructions":"x","input":"what is 2+2"}"#;
        assert_eq!(
            c.prompt_of(responses).unwrap(),
            r#"{"input":"what is 2+2"}"#
        );
        assert_eq!(c.prompt_of(b"not json"), None);
        assert_eq!(c.prompt_of(b"[1]"), None);
    }

    #[test]
    fn captures_are_capped_on_char_boundaries() {
        let c = capture(serde_json::json!({"prompt": true, "answer": true, "max_bytes": 20}));
        let body = serde_json::json!({"messages": [{"role": "user", "content": "é".repeat(100)}]});
        let got = c.prompt_of(body.to_string().as_bytes()).unwrap();
        assert!(got.len() <= 20 && got.ends_with(CUT), "{got}");
        let mut r = c.answer_reader(true).unwrap();
        for _ in 0..1000 {
            r.feed("data: {\"choices\":[{\"delta\":{\"content\":\"ü\"}}]}\n\n".as_bytes());
        }
        let text = r.finish();
        assert!(text.len() <= 20 && text.ends_with(CUT), "{text}");
    }

    #[test]
    fn answer_text_of_each_api() {
        let c = capture(serde_json::json!({"answer": true}));
        let json = |body: &str| {
            let mut r = c.answer_reader(false).unwrap();
            let (a, b) = body.as_bytes().split_at(body.len() / 2);
            r.feed(a);
            r.feed(b);
            r.finish()
        };
        assert_eq!(
            json(r#"{"choices":[{"message":{"role":"assistant","content":"This is"}}]}"#),
            "This is"
        );
        assert_eq!(
            json(
                r#"{"output":[{"type":"message","content":[{"type":"output_text","text":"Four"}]}]}"#
            ),
            "Four"
        );
        assert_eq!(
            json(r#"{"content":[{"type":"text","text":"Hi"}],"usage":{}}"#),
            "Hi"
        );
        let stream = |s: &str| {
            let mut r = c.answer_reader(true).unwrap();
            for piece in s.as_bytes().chunks(7) {
                r.feed(piece);
            }
            r.finish()
        };
        assert_eq!(
            stream("data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"This\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\" is\"}}]}\n\ndata: [DONE]\n\n"),
            "This is"
        );
        assert_eq!(
            stream("event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"Fo\"}\n\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"ur\"}\n\n"),
            "Four"
        );
        assert_eq!(
            stream("data: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\r\n\r\n"),
            "Hi"
        );
    }

    #[test]
    fn bad_config_names_the_field() {
        for (v, field) in [
            (serde_json::json!({"max_bytes": 0}), "capture.max_bytes"),
            (
                serde_json::json!({"max_bytes": 100000}),
                "capture.max_bytes",
            ),
            (
                serde_json::json!({"drop_content_of_roles": ["ok", "no spaces"]}),
                "capture.drop_content_of_roles[1]",
            ),
        ] {
            let raw: RawCapture = serde_json::from_value(v).unwrap();
            assert_eq!(Capture::from_raw(&raw, "capture").unwrap_err().field, field);
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let c = capture(serde_json::json!({"prompt": true, "answer": true, "max_bytes": 8}));
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..2000 {
            let mut buf = Vec::new();
            for _ in 0..48 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let pick = "data: {\"choices\":[{\"delta\":{\"content\":\"é\n\r}]\"".as_bytes();
                buf.push(pick[(seed % pick.len() as u64) as usize]);
            }
            let _ = c.prompt_of(&buf);
            for streamed in [true, false] {
                let mut r = c.answer_reader(streamed).unwrap();
                r.feed(&buf);
                assert!(r.finish().len() <= 8);
            }
        }
    }
}
