//! Token usage read from Azure's answers: whole JSON bodies, and server-sent event streams
//! scanned chunk by chunk as they pass (nothing is held back from the caller).
//!
//! Shapes (../shared/AZURE-WIRE.md section 4): Chat Completions / Embeddings
//! `usage.{prompt_tokens,completion_tokens,total_tokens}`; Responses API
//! `usage.{input_tokens,output_tokens,total_tokens}` (streamed in `response.completed` as
//! `response.usage`); Anthropic `usage.{input_tokens,output_tokens,cache_*}` (streamed in
//! `message_start` as `message.usage` and in `message_delta` as `usage`, output cumulative).
//!
//! Details, where the API reports them: cached input (`prompt_tokens_details.cached_tokens`,
//! `input_tokens_details.cached_tokens`, Anthropic `cache_read_input_tokens`) and reasoning
//! output (`completion_tokens_details.reasoning_tokens`,
//! `output_tokens_details.reasoning_tokens`). Both are parts of the input and output figures,
//! not additions to them.

use serde::Deserialize;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// All input tokens, cached ones included.
    pub prompt_tokens: u64,
    /// All output tokens, reasoning ones included.
    pub completion_tokens: u64,
    /// Input tokens read from the prompt cache (part of `prompt_tokens`), when reported.
    pub cached_prompt_tokens: Option<u64>,
    /// Output tokens spent on reasoning (part of `completion_tokens`), when reported.
    pub reasoning_tokens: Option<u64>,
}

impl Usage {
    /// Input and output tokens, no details.
    pub fn tokens(prompt_tokens: u64, completion_tokens: u64) -> Usage {
        Usage {
            prompt_tokens,
            completion_tokens,
            ..Usage::default()
        }
    }

    pub fn total(&self) -> u64 {
        self.prompt_tokens.saturating_add(self.completion_tokens)
    }
}

/// `prompt_tokens_details` / `input_tokens_details`.
#[derive(Deserialize, Default)]
struct InputDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

/// `completion_tokens_details` / `output_tokens_details`.
#[derive(Deserialize, Default)]
struct OutputDetails {
    #[serde(default)]
    reasoning_tokens: Option<u64>,
}

#[derive(Deserialize, Default)]
struct RawUsage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
    #[serde(default)]
    total_tokens: Option<u64>,
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default, alias = "input_tokens_details")]
    prompt_tokens_details: Option<InputDetails>,
    #[serde(default, alias = "output_tokens_details")]
    completion_tokens_details: Option<OutputDetails>,
}

impl RawUsage {
    fn to_usage(&self) -> Usage {
        let prompt = self
            .prompt_tokens
            .or(self.input_tokens)
            .unwrap_or(0)
            .saturating_add(self.cache_read_input_tokens.unwrap_or(0))
            .saturating_add(self.cache_creation_input_tokens.unwrap_or(0));
        let completion = self
            .completion_tokens
            .or(self.output_tokens)
            .or_else(|| self.total_tokens.map(|t| t.saturating_sub(prompt)))
            .unwrap_or(0);
        let cached = self
            .prompt_tokens_details
            .as_ref()
            .and_then(|d| d.cached_tokens)
            .or(self.cache_read_input_tokens)
            .map(|c| c.min(prompt));
        let reasoning = self
            .completion_tokens_details
            .as_ref()
            .and_then(|d| d.reasoning_tokens)
            .map(|r| r.min(completion));
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            cached_prompt_tokens: cached,
            reasoning_tokens: reasoning,
        }
    }
}

#[derive(Deserialize)]
struct WithUsage {
    #[serde(default)]
    usage: Option<RawUsage>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    response: Option<Box<WithUsage>>,
    #[serde(default)]
    message: Option<Box<WithUsage>>,
    /// Chat chunks: an empty array with a `usage` object is the usage-only last chunk.
    #[serde(default)]
    choices: Option<Vec<serde::de::IgnoredAny>>,
}

/// Stream events after which nothing the bill depends on follows.
const TERMINAL_EVENTS: [&str; 6] = [
    "message_stop",
    "response.completed",
    "response.incomplete",
    "response.failed",
    "transcript.text.done",
    "speech.audio.done",
];

impl WithUsage {
    /// The event ends its stream (see [`SseUsageScanner::ended`]).
    fn is_terminal(&self) -> bool {
        match self.kind.as_deref() {
            Some(kind) => TERMINAL_EVENTS.contains(&kind),
            None => self.choices.as_ref().is_some_and(Vec::is_empty) && self.usage.is_some(),
        }
    }
}

/// Reads one `usage` value (an object, or `null`) of any API: the single place where usage
/// fields are interpreted (JSON answers through [`crate::usage_json`], and whole bodies here).
pub fn usage_object(value: &[u8]) -> Option<Usage> {
    serde_json::from_slice::<Option<RawUsage>>(value)
        .ok()
        .flatten()
        .map(|u| u.to_usage())
}

/// Usage of a whole non-streamed JSON answer, if it reports one (the filter reads answers
/// with [`crate::usage_json::JsonUsageScanner`]; this is its reference in tests and fuzzing).
pub fn from_json(body: &[u8]) -> Option<Usage> {
    let parsed: WithUsage = serde_json::from_slice(body).ok()?;
    parsed.usage.map(|u| u.to_usage())
}

/// Longest SSE line kept while waiting for its end. Usage events are small; a longer line is a
/// content chunk and is skipped.
const MAX_LINE: usize = 256 * 1024;

/// Scans an SSE stream for usage, one chunk at a time.
#[derive(Debug, Default)]
pub struct SseUsageScanner {
    partial: Vec<u8>,
    skipping_long_line: bool,
    usage: Option<Usage>,
    /// Anthropic reports input in `message_start` and output in `message_delta`.
    anthropic_input: Option<u64>,
    anthropic_output: Option<u64>,
    /// Anthropic's cache reads, reported with the input.
    anthropic_cached: Option<u64>,
    /// The stream's terminal event was seen (see [`SseUsageScanner::ended`]).
    ended: bool,
}

impl SseUsageScanner {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn feed(&mut self, mut chunk: &[u8]) {
        if self.ended {
            return;
        }
        while let Some(pos) = chunk.iter().position(|&b| b == b'\n') {
            let (line, rest) = chunk.split_at(pos);
            chunk = rest.get(1..).unwrap_or_default();
            if self.skipping_long_line {
                self.skipping_long_line = false;
                self.partial.clear();
                continue;
            }
            if self.partial.is_empty() {
                self.line(line);
            } else {
                let mut full = std::mem::take(&mut self.partial);
                full.extend_from_slice(line);
                self.line(&full);
            }
        }
        if self.skipping_long_line {
            return;
        }
        if self.partial.len() + chunk.len() > MAX_LINE {
            self.partial.clear();
            self.skipping_long_line = true;
        } else {
            self.partial.extend_from_slice(chunk);
        }
    }

    /// The stream's terminal event was seen, so the answer is complete whatever the connection
    /// does next (a client may close as soon as it has read it, before the end of the body
    /// reaches Envoy): `data: [DONE]` (Chat Completions, Completions, Foundry models), a
    /// usage-only chunk (`choices: []` and a `usage` object: the last chunk an
    /// `include_usage` stream sends before `[DONE]`), Anthropic's `message_stop`, the
    /// Responses API's `response.completed` / `response.incomplete` / `response.failed`, and
    /// the audio APIs' `transcript.text.done` / `speech.audio.done`. Only a whole `data:`
    /// line counts, parsed as the event's own JSON: text inside an event is JSON-escaped, so
    /// no content can look like a terminal event. Lines after it are not read.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// The usage seen so far (the final figures once the stream ended).
    pub fn usage(&self) -> Option<Usage> {
        if self.anthropic_input.is_some() || self.anthropic_output.is_some() {
            return Some(Usage {
                cached_prompt_tokens: self.anthropic_cached,
                ..Usage::tokens(
                    self.anthropic_input.unwrap_or(0),
                    self.anthropic_output.unwrap_or(0),
                )
            });
        }
        self.usage
    }

    fn line(&mut self, line: &[u8]) {
        if self.ended {
            return;
        }
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(data) = line.strip_prefix(b"data:") else {
            return;
        };
        if data.trim_ascii() == b"[DONE]" {
            self.ended = true;
            return;
        }
        // Cheap filter: most chunks carry content, neither usage nor the end.
        if !contains(data, b"\"usage\"") && !contains(data, b"message_stop") {
            return;
        }
        let Ok(event) = serde_json::from_slice::<WithUsage>(data) else {
            return;
        };
        self.ended = event.is_terminal();
        match event.kind.as_deref() {
            Some("message_start") => {
                if let Some(u) = event.message.and_then(|m| m.usage) {
                    let usage = u.to_usage();
                    self.anthropic_input = Some(usage.prompt_tokens);
                    self.anthropic_cached = usage.cached_prompt_tokens;
                    if usage.completion_tokens > 0 {
                        self.anthropic_output = Some(usage.completion_tokens);
                    }
                }
            }
            Some("message_delta") => {
                if let Some(u) = event.usage {
                    if let Some(out) = u.output_tokens {
                        self.anthropic_output = Some(out);
                    }
                    // Newer Anthropic streams also repeat input figures here.
                    if u.input_tokens.is_some() {
                        let usage = u.to_usage();
                        self.anthropic_input = Some(usage.prompt_tokens);
                        self.anthropic_cached = usage.cached_prompt_tokens;
                    }
                }
            }
            Some("response.completed") | Some("response.incomplete") | Some("response.failed") => {
                if let Some(u) = event.response.and_then(|r| r.usage) {
                    self.usage = Some(u.to_usage());
                }
            }
            _ => {
                if let Some(u) = event.usage {
                    self.usage = Some(u.to_usage());
                }
            }
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shapes() {
        let chat = br#"{"object":"chat.completion","usage":{"prompt_tokens":11,"completion_tokens":7,"total_tokens":18}}"#;
        assert_eq!(from_json(chat), Some(Usage::tokens(11, 7)));
        let emb = br#"{"object":"list","usage":{"prompt_tokens":5,"total_tokens":5}}"#;
        assert_eq!(from_json(emb), Some(Usage::tokens(5, 0)));
        let resp = br#"{"object":"response","usage":{"input_tokens":9,"output_tokens":3,"total_tokens":12}}"#;
        assert_eq!(from_json(resp), Some(Usage::tokens(9, 3)));
        let claude = br#"{"type":"message","usage":{"input_tokens":10,"output_tokens":4,"cache_read_input_tokens":2,"cache_creation_input_tokens":1}}"#;
        assert_eq!(
            from_json(claude),
            Some(Usage {
                cached_prompt_tokens: Some(2),
                ..Usage::tokens(13, 4)
            })
        );
        assert_eq!(from_json(br#"{"error":{"code":"429"}}"#), None);
        assert_eq!(from_json(b"garbage"), None);
        assert_eq!(from_json(br#"{"usage":null}"#), None);
    }

    #[test]
    fn cached_and_reasoning_details() {
        let chat = br#"{"usage":{"prompt_tokens":2006,"completion_tokens":300,"total_tokens":2306,"prompt_tokens_details":{"cached_tokens":1920,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":256,"audio_tokens":0}}}"#;
        assert_eq!(
            from_json(chat),
            Some(Usage {
                cached_prompt_tokens: Some(1920),
                reasoning_tokens: Some(256),
                ..Usage::tokens(2006, 300)
            })
        );
        let resp = br#"{"usage":{"input_tokens":50,"input_tokens_details":{"cached_tokens":32},"output_tokens":40,"output_tokens_details":{"reasoning_tokens":30},"total_tokens":90}}"#;
        assert_eq!(
            from_json(resp),
            Some(Usage {
                cached_prompt_tokens: Some(32),
                reasoning_tokens: Some(30),
                ..Usage::tokens(50, 40)
            })
        );
        // Anthropic: input_tokens excludes the cache; cache reads are the cached part.
        let claude = br#"{"usage":{"input_tokens":10,"output_tokens":4,"cache_read_input_tokens":200,"cache_creation_input_tokens":5}}"#;
        assert_eq!(
            from_json(claude),
            Some(Usage {
                cached_prompt_tokens: Some(200),
                ..Usage::tokens(215, 4)
            })
        );
        // Not reported: None, not zero. Details bigger than their totals are capped.
        assert_eq!(
            from_json(br#"{"usage":{"prompt_tokens":3,"completion_tokens":1}}"#),
            Some(Usage::tokens(3, 1))
        );
        let liar = br#"{"usage":{"prompt_tokens":3,"completion_tokens":1,"prompt_tokens_details":{"cached_tokens":99},"completion_tokens_details":{"reasoning_tokens":99}}}"#;
        assert_eq!(
            from_json(liar),
            Some(Usage {
                cached_prompt_tokens: Some(3),
                reasoning_tokens: Some(1),
                ..Usage::tokens(3, 1)
            })
        );
        // `null` details are no details.
        assert_eq!(
            from_json(br#"{"usage":{"prompt_tokens":3,"prompt_tokens_details":null}}"#),
            Some(Usage::tokens(3, 0))
        );
    }

    #[test]
    fn stream_details() {
        let chat = b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":21,\"completion_tokens\":12,\"prompt_tokens_details\":{\"cached_tokens\":16},\"completion_tokens_details\":{\"reasoning_tokens\":8}}}\n\n";
        assert_eq!(
            scan(&[chat]),
            Some(Usage {
                cached_prompt_tokens: Some(16),
                reasoning_tokens: Some(8),
                ..Usage::tokens(21, 12)
            })
        );
        let claude = b"data: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":5,\"cache_read_input_tokens\":100,\"output_tokens\":1}}}\n\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":9}}\n\n";
        assert_eq!(
            scan(&[claude]),
            Some(Usage {
                cached_prompt_tokens: Some(100),
                ..Usage::tokens(105, 9)
            })
        );
    }

    fn scan(chunks: &[&[u8]]) -> Option<Usage> {
        let mut s = SseUsageScanner::new();
        for c in chunks {
            s.feed(c);
        }
        s.usage()
    }

    #[test]
    fn chat_stream_usage_chunk_split_anywhere() {
        let stream = b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":21,\"completion_tokens\":12,\"total_tokens\":33}}\n\ndata: [DONE]\n\n";
        let want = Some(Usage::tokens(21, 12));
        assert_eq!(scan(&[stream]), want);
        for split in 0..stream.len() {
            let (a, b) = stream.split_at(split);
            assert_eq!(scan(&[a, b]), want, "split at {split}");
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(scan(&bytes), want);
    }

    #[test]
    fn crlf_and_no_usage() {
        let s = b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}\r\n\r\n";
        assert_eq!(scan(&[s]), Some(Usage::tokens(1, 2)));
        assert_eq!(scan(&[b"data: {\"choices\":[]}\n\ndata: [DONE]\n\n"]), None);
    }

    #[test]
    fn responses_api_completed_event() {
        let s = b"event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"usage\":null}}\n\nevent: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"x\"}\n\nevent: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"id\":\"r\",\"usage\":{\"input_tokens\":8,\"output_tokens\":5,\"total_tokens\":13}}}\n\n";
        assert_eq!(scan(&[s]), Some(Usage::tokens(8, 5)));
    }

    #[test]
    fn anthropic_start_and_delta() {
        let s = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"usage\"}}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":15}}\n\n";
        assert_eq!(scan(&[s]), Some(Usage::tokens(25, 15)));
        // A stream cut after message_start still charges what was reported.
        let cut = b"data: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n";
        assert_eq!(scan(&[cut]), Some(Usage::tokens(25, 1)));
    }

    fn ended_after(chunks: &[&[u8]]) -> (bool, Option<Usage>) {
        let mut s = SseUsageScanner::new();
        for c in chunks {
            s.feed(c);
        }
        (s.ended(), s.usage())
    }

    #[test]
    fn the_terminal_event_of_every_stream_shape_ends_it() {
        let chat = b"data: {\"choices\":[],\"prompt_filter_results\":[{}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":21,\"completion_tokens\":12}}\n\ndata: [DONE]\n\n";
        let foundry = b"data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":12}}\n\ndata:[DONE]\r\n\r\n";
        let responses = b"event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"usage\":null}}\n\nevent: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"usage\":{\"input_tokens\":8,\"output_tokens\":5}}}\n\n";
        let anthropic = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":15}}\n\nevent: message_stop\ndata: {\"type\": \"message_stop\"}\n\n";
        let transcript = b"data: {\"type\":\"transcript.text.delta\",\"delta\":\"hi\"}\n\ndata: {\"type\":\"transcript.text.done\",\"text\":\"hi\",\"usage\":{\"input_tokens\":7,\"output_tokens\":2}}\n\n";
        // Each stream, its usage, and the start of its terminal line.
        let cases: [(&[u8], Usage, &str); 5] = [
            (
                chat,
                Usage::tokens(21, 12),
                "data: {\"choices\":[],\"usage\":{",
            ),
            (foundry, Usage::tokens(5, 12), "data:[DONE]"),
            (
                responses,
                Usage::tokens(8, 5),
                "data: {\"type\":\"response.completed\"",
            ),
            (
                anthropic,
                Usage::tokens(25, 15),
                "data: {\"type\": \"message_stop\"}",
            ),
            (
                transcript,
                Usage::tokens(7, 2),
                "data: {\"type\":\"transcript.text.done\"",
            ),
        ];
        for (stream, want, terminal) in cases {
            let text = String::from_utf8_lossy(stream);
            let at = text.find(terminal).unwrap();
            let end = at + text[at..].find('\n').unwrap() + 1;
            for split in 0..=stream.len() {
                let (a, b) = stream.split_at(split);
                let mut s = SseUsageScanner::new();
                s.feed(a);
                // Not before its terminal line has ended, wherever the chunks split.
                assert_eq!(s.ended(), split >= end, "{text} cut at {split}");
                s.feed(b);
                assert_eq!(
                    (s.ended(), s.usage()),
                    (true, Some(want)),
                    "{text} split at {split}"
                );
            }
        }
        // Anthropic's stream is not over at message_delta: its end is message_stop.
        let at_delta = &anthropic[..anthropic.len()
            - "event: message_stop\ndata: {\"type\": \"message_stop\"}\n\n".len()];
        assert_eq!(
            ended_after(&[at_delta]),
            (false, Some(Usage::tokens(25, 15)))
        );
        // `[DONE]` not yet followed by its newline is not seen yet.
        assert!(!ended_after(&[b"data: [DONE]"]).0);
    }

    #[test]
    fn no_content_looks_like_a_terminal_event() {
        // Text that spells every terminal event, as Azure sends text: JSON-escaped inside an
        // event's own JSON.
        let fake = [
            &b"data: {\"choices\":[{\"delta\":{\"content\":\"\\ndata: [DONE]\\n\\n\"}}]}\n\n"[..],
            b"data: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\"{\\\"type\\\":\\\"message_stop\\\"}\"}}\n\n",
            b"data: {\"type\":\"response.output_text.delta\",\"delta\":\"{\\\"type\\\":\\\"response.completed\\\",\\\"usage\\\":{}}\"}\n\n",
            b"data: {\"choices\":[{\"delta\":{\"content\":\"{\\\"choices\\\":[],\\\"usage\\\":{\\\"prompt_tokens\\\":1}}\"}}],\"usage\":null}\n\n",
            // Not a data line, and an event of another stream's shape.
            b"event: message_stop\n\n",
            b": data: [DONE]\n\n",
            b"data: [DONE] and more\n\n",
            b"data: {\"type\":\"message_start\",\"message\":{\"type\":\"message_stop\",\"usage\":{\"input_tokens\":3}}}\n\n",
            // A JSON event nested in an event.
            b"data: {\"type\":\"content_block_start\",\"content_block\":{\"type\":\"message_stop\"}}\n\n",
        ];
        for f in fake {
            assert!(!ended_after(&[f]).0, "{}", String::from_utf8_lossy(f));
        }
        // A stream that ends with [DONE] but no usage is complete without usage (charged its
        // estimate, src/settlement.rs); nothing after the end is read.
        assert_eq!(
            ended_after(&[b"data: {\"choices\":[{}]}\n\ndata: [DONE]\n\n"]),
            (true, None)
        );
        assert_eq!(
            ended_after(&[
                b"data: [DONE]\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\n\n"
            ]),
            (true, None)
        );
    }

    #[test]
    fn long_lines_are_skipped_not_buffered() {
        let mut s = SseUsageScanner::new();
        let big = vec![b'a'; MAX_LINE + 10];
        s.feed(b"data: ");
        s.feed(&big);
        assert!(s.partial.len() <= MAX_LINE);
        s.feed(b"\ndata: {\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n");
        assert_eq!(s.usage(), Some(Usage::tokens(3, 4)));
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..2000 {
            let mut s = SseUsageScanner::new();
            let mut buf = Vec::new();
            for _ in 0..64 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let pick = b"data: {\"usage\":{\"prompt_tokens\":\n\r}[]\"x9-";
                buf.push(pick[(seed % pick.len() as u64) as usize]);
            }
            s.feed(&buf);
            let _ = s.usage();
            let _ = from_json(&buf);
        }
    }
}
