//! Usage of a JSON answer of any size, read as it passes without holding the body: a byte
//! scanner tracks nesting and strings and keeps only the value of the top-level `usage` key
//! (bounded). An embeddings answer of hundreds of megabytes costs one pass over its bytes and
//! a few hundred bytes of memory; the object it keeps is parsed by [`crate::usage`]'s one
//! usage-object reader, like the usage events of streams. The top-level `model` (the model
//! that answered, `gen_ai.response.model`) is kept the same way.

use crate::usage::{self, Usage};

/// Largest `usage` value kept (usage objects are a few hundred bytes, with token details).
const MAX_USAGE_VALUE: usize = 16 * 1024;

/// Largest `model` value kept.
const MAX_MODEL_VALUE: usize = 258;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Found {
    #[default]
    Nothing,
    /// One top-level `usage` value, complete.
    Once,
    /// Repeated, too long or cut: usage unreadable, the caller is charged the fail-safe way.
    Unreadable,
}

/// Feeds on the chunks of a JSON answer; [`JsonUsageScanner::usage`] at the end.
#[derive(Debug, Default)]
pub struct JsonUsageScanner {
    /// Bracket depth outside strings; the top-level object's members are at depth 1.
    depth: u32,
    /// The document is an object (not an array or a scalar); known at its first byte.
    top_is_object: Option<bool>,
    in_string: bool,
    escaped: bool,
    /// At depth 1, the next string is a member name.
    expect_key: bool,
    /// The member name being read; `None` once it cannot be `usage` any more.
    key: Option<Vec<u8>>,
    reading_key: bool,
    /// The last member name at depth 1 was `usage`, its value not reached yet.
    usage_key: bool,
    /// The bytes of the `usage` value being read.
    capture: Option<Vec<u8>>,
    value: Vec<u8>,
    found: Found,
    /// The top-level value's closing bracket was read: the answer is complete.
    closed: bool,
    /// The same for the first top-level `model` (a JSON string).
    model_key: bool,
    model_capture: Option<Vec<u8>>,
    model: Option<Vec<u8>>,
}

impl JsonUsageScanner {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn feed(&mut self, chunk: &[u8]) {
        let mut i = 0;
        while let Some(&b) = chunk.get(i) {
            if self.closed {
                // Nothing after the document's end is part of it.
                return;
            }
            if self.in_string
                && !self.reading_key
                && self.capture.is_none()
                && self.model_capture.is_none()
                && !self.escaped
            {
                // Fast path: skip string content up to the next quote or backslash.
                match chunk
                    .get(i..)
                    .and_then(|rest| rest.iter().position(|c| *c == b'"' || *c == b'\\'))
                {
                    Some(n) => i += n,
                    None => return,
                }
                let Some(&q) = chunk.get(i) else { return };
                self.byte(q);
                i += 1;
                continue;
            }
            self.byte(b);
            i += 1;
        }
    }

    fn byte(&mut self, b: u8) {
        if let Some(m) = self.model_capture.as_mut() {
            m.push(b);
            if m.len() > MAX_MODEL_VALUE {
                self.model_capture = None;
            }
        }
        if let Some(c) = self.capture.as_mut() {
            c.push(b);
            if c.len() > MAX_USAGE_VALUE {
                self.capture = None;
                self.found = Found::Unreadable;
            }
        }
        if self.in_string {
            if self.escaped {
                self.escaped = false;
            } else if b == b'\\' {
                self.escaped = true;
            } else if b == b'"' {
                self.in_string = false;
                if self.reading_key {
                    self.reading_key = false;
                    let key = self.key.take();
                    self.usage_key = key.as_deref() == Some(b"usage");
                    self.model_key = key.as_deref() == Some(b"model");
                }
                return;
            }
            if self.reading_key {
                if let Some(k) = self.key.as_mut() {
                    if b == b'\\' || k.len() >= 5 {
                        // Escaped or longer names are not Azure's `usage`.
                        self.key = None;
                    } else {
                        k.push(b);
                    }
                }
            }
            return;
        }
        match b {
            b'"' => {
                self.in_string = true;
                if self.depth == 1 && self.expect_key && self.top_is_object == Some(true) {
                    self.expect_key = false;
                    self.reading_key = true;
                    self.key = Some(Vec::new());
                }
            }
            b'{' | b'[' => {
                if self.depth == 0 && self.top_is_object.is_none() {
                    self.top_is_object = Some(b == b'{');
                    self.expect_key = true;
                }
                self.depth = self.depth.saturating_add(1);
            }
            b'}' | b']' => {
                if self.depth == 1 {
                    self.end_value();
                    self.closed = self.top_is_object.is_some();
                }
                self.depth = self.depth.saturating_sub(1);
            }
            b':' if self.depth == 1 && std::mem::take(&mut self.model_key) => {
                // Only the first `model` counts.
                self.model_capture = self.model.is_none().then(Vec::new);
            }
            b':' if self.depth == 1 && std::mem::take(&mut self.usage_key) => {
                if self.found == Found::Nothing {
                    self.capture = Some(Vec::new());
                } else {
                    self.found = Found::Unreadable;
                }
            }
            b',' if self.depth == 1 => {
                self.end_value();
                self.expect_key = true;
            }
            _ => {}
        }
    }

    /// The member value at depth 1 ended (at `,` or the closing `}`, which the capture holds).
    fn end_value(&mut self) {
        if let Some(mut m) = self.model_capture.take() {
            m.pop();
            self.model = Some(m);
        }
        if let Some(mut c) = self.capture.take() {
            c.pop();
            self.value = c;
            self.found = Found::Once;
        }
    }

    /// The usage of the answer, if it had one readable top-level `usage` object.
    pub fn usage(&self) -> Option<Usage> {
        if self.found != Found::Once {
            return None;
        }
        usage::usage_object(&self.value)
    }

    /// The last byte of the document (its top-level object's or array's closing bracket) was
    /// read: the answer is complete whatever the connection does next. Brackets inside
    /// strings do not count.
    pub fn closed(&self) -> bool {
        self.closed
    }

    /// The answer's top-level `model`, if it is a non-empty string.
    pub fn model(&self) -> Option<String> {
        let raw = self.model.as_deref()?;
        serde_json::from_slice::<String>(raw)
            .ok()
            .filter(|m| !m.is_empty())
    }

    /// The answer had a `usage` member that could not be read (repeated or oversized).
    pub fn unreadable(&self) -> bool {
        self.found == Found::Unreadable || self.capture.is_some()
    }
}

/// Usage of a whole JSON body through the scanner (as the filter reads answers).
pub fn scan(body: &[u8]) -> Option<Usage> {
    let mut s = JsonUsageScanner::new();
    s.feed(body);
    s.usage()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunked(body: &[u8], n: usize) -> Option<Usage> {
        let mut s = JsonUsageScanner::new();
        for c in body.chunks(n.max(1)) {
            s.feed(c);
        }
        s.usage()
    }

    #[test]
    fn agrees_with_the_whole_body_parser_on_every_api_and_every_split() {
        let bodies: [&[u8]; 5] = [
            br#"{"object":"chat.completion","choices":[{"message":{"content":"a \"usage\": {\"prompt_tokens\":1} }"}}],"usage":{"prompt_tokens":11,"completion_tokens":7,"total_tokens":18}}"#,
            br#"{"object":"list","data":[{"embedding":[0.1,-0.2],"usage":{"prompt_tokens":999}}],"usage" : {"prompt_tokens":5,"total_tokens":5} }"#,
            br#"{"object":"response","usage":{"input_tokens":9,"output_tokens":3,"total_tokens":12},"x":1}"#,
            br#"{"type":"message","content":[{"text":"\\"}],"usage":{"input_tokens":10,"output_tokens":4,"cache_read_input_tokens":2}}"#,
            br#"{"usage":null,"error":{}}"#,
        ];
        for body in bodies {
            let want = usage::from_json(body);
            for n in [1, 2, 3, 7, 64, body.len()] {
                assert_eq!(
                    chunked(body, n),
                    want,
                    "{} in chunks of {n}",
                    String::from_utf8_lossy(body)
                );
            }
        }
        assert_eq!(scan(bodies[1]).map(|u| u.total()), Some(5));
    }

    #[test]
    fn the_top_level_model_is_kept() {
        let body = br#"{"choices":[{"message":{"model":"inner"}}],"model" : "gpt-4o-2024-11-20","usage":{"prompt_tokens":1}}"#;
        for n in [1, 2, 5, body.len()] {
            let mut s = JsonUsageScanner::new();
            for c in body.chunks(n) {
                s.feed(c);
            }
            assert_eq!(
                s.model().as_deref(),
                Some("gpt-4o-2024-11-20"),
                "chunks of {n}"
            );
            assert_eq!(s.usage().map(|u| u.total()), Some(1));
        }
        for body in [
            &br#"{"model":"","usage":null}"#[..],
            br#"{"model":7}"#,
            br#"{"data":{"model":"x"}}"#,
        ] {
            let mut s = JsonUsageScanner::new();
            s.feed(body);
            assert_eq!(s.model(), None, "{}", String::from_utf8_lossy(body));
        }
        let long = format!(
            r#"{{"model":"{}","usage":{{"prompt_tokens":2}}}}"#,
            "m".repeat(300)
        );
        let mut s = JsonUsageScanner::new();
        s.feed(long.as_bytes());
        assert_eq!(s.model(), None, "too long to keep");
        assert_eq!(s.usage().map(|u| u.total()), Some(2));
    }

    #[test]
    fn a_twenty_megabyte_answer_is_read_without_holding_it() {
        let mut s = JsonUsageScanner::new();
        s.feed(br#"{"object":"list","data":["#);
        let item =
            br#"{"object":"embedding","index":0,"embedding":"AAAAAAAAAAAAAAAAAAAAAAAA\"usage\""},"#;
        for _ in 0..(20 * 1024 * 1024 / item.len()) {
            s.feed(item);
        }
        s.feed(br#"{}],"model":"e","usage":{"prompt_tokens":123456,"total_tokens":123456}}"#);
        assert_eq!(s.usage().map(|u| u.total()), Some(123_456));
        assert!(s.value.len() < 100);
    }

    #[test]
    fn the_last_byte_of_the_document_ends_it_and_no_bracket_in_a_string_does() {
        let body = br#"{"choices":[{"message":{"content":"} ] }\" {\"usage\":{}} }"}}],"usage":{"prompt_tokens":4,"completion_tokens":2}}"#;
        for split in 0..=body.len() {
            let (a, b) = body.split_at(split);
            let mut s = JsonUsageScanner::new();
            s.feed(a);
            assert_eq!(s.closed(), split == body.len(), "cut at {split}");
            s.feed(b);
            assert!(s.closed());
            assert_eq!(s.usage(), Some(Usage::tokens(4, 2)), "split at {split}");
        }
        // Nothing after the end is read: a second document cannot change the usage.
        let mut s = JsonUsageScanner::new();
        s.feed(br#"{"usage":{"prompt_tokens":4}} {"usage":{"prompt_tokens":1}}"#);
        assert_eq!((s.closed(), s.usage()), (true, Some(Usage::tokens(4, 0))));
        // An array closes too; whitespace or nothing never does.
        for (body, closed) in [
            (&b"[1, {\"a\": []}]"[..], true),
            (b"  ", false),
            (b"", false),
            (b"{\"a\":{}", false),
        ] {
            let mut s = JsonUsageScanner::new();
            s.feed(body);
            assert_eq!(s.closed(), closed, "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn repeated_oversized_or_cut_usage_is_unreadable() {
        let twice = br#"{"usage":{"prompt_tokens":1},"usage":{"prompt_tokens":2}}"#;
        let mut s = JsonUsageScanner::new();
        s.feed(twice);
        assert_eq!(s.usage(), None);
        assert!(s.unreadable());
        let big = format!(
            r#"{{"usage":{{"prompt_tokens":1,"pad":"{}"}}}}"#,
            "x".repeat(MAX_USAGE_VALUE)
        );
        let mut s = JsonUsageScanner::new();
        s.feed(big.as_bytes());
        assert!(s.usage().is_none() && s.unreadable());
        let mut s = JsonUsageScanner::new();
        s.feed(br#"{"usage":{"prompt_tokens":1"#);
        assert!(s.usage().is_none() && s.unreadable());
        // Not an object, no usage, garbage.
        for body in [
            &br#"[{"usage":{"prompt_tokens":1}}]"#[..],
            b"{}",
            b"<html>",
            b"",
        ] {
            let mut s = JsonUsageScanner::new();
            s.feed(body);
            assert_eq!(s.usage(), None);
            assert!(!s.unreadable());
        }
    }
}
