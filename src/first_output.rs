//! The first output of a streamed answer, for time to first token (OpenTelemetry's
//! `gen_ai.server.time_to_first_token` is to the first *output* token, not to the first byte)
//! and the model that answered (`gen_ai.response.model`). Host-free; fed the chunks of a
//! server-sent event stream as they pass.
//!
//! Azure's streams begin with events that carry no output (../shared/AZURE-WIRE.md section 8):
//! Azure OpenAI's first chunk is a `prompt_filter_results` chunk with empty `choices`, then a
//! chunk with `"delta":{"role":"assistant","content":""}`; Anthropic's are `message_start`,
//! `content_block_start` and `ping`; the Responses API's `response.created`,
//! `response.in_progress`, `response.output_item.added`, `response.content_part.added`. A
//! reasoning model can spend seconds between those and its first token. What counts as output:
//!
//! - Chat Completions: a choice whose `delta` has non-empty `content`, `refusal` or
//!   `reasoning_content` (Foundry's reasoning models), or any `tool_calls` / `function_call`
//!   / `audio`; legacy Completions: a choice with non-empty `text`;
//! - Anthropic Messages: a `content_block_delta` event (text, tool input, thinking);
//! - Responses: an event whose type is `response.<...>.delta` (output text, refusal,
//!   function-call arguments, reasoning text or summary, audio, ...).
//!
//! Only the events before the first output are parsed (a handful per stream); after it the
//! detector is done and costs nothing.

use serde::de::IgnoredAny;
use serde::Deserialize;

/// Longest event line kept while waiting for its end. Token-less events are small; a longer
/// one is taken for output.
const MAX_LINE: usize = 64 * 1024;

/// Longest model name kept.
const MAX_MODEL: usize = 256;

#[derive(Deserialize)]
struct Event<'a> {
    #[serde(default, rename = "type", borrow)]
    kind: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    model: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    choices: Option<Vec<Choice>>,
    /// Anthropic's `message_start`: `message.model`.
    #[serde(default, borrow)]
    message: Option<Nested<'a>>,
    /// The Responses API's `response.created`: `response.model`.
    #[serde(default, borrow)]
    response: Option<Nested<'a>>,
}

#[derive(Deserialize)]
struct Nested<'a> {
    #[serde(default, borrow)]
    model: Option<std::borrow::Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Choice {
    #[serde(default)]
    delta: Option<Delta>,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize)]
struct Delta {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    refusal: Option<String>,
    #[serde(default)]
    reasoning_content: Option<String>,
    #[serde(default)]
    tool_calls: Option<IgnoredAny>,
    #[serde(default)]
    function_call: Option<IgnoredAny>,
    #[serde(default)]
    audio: Option<IgnoredAny>,
}

fn non_empty(s: &Option<String>) -> bool {
    s.as_deref().is_some_and(|s| !s.is_empty())
}

/// Present and not `null` (serde reads `null` as `None`).
fn present(v: &Option<IgnoredAny>) -> bool {
    v.is_some()
}

impl Event<'_> {
    fn carries_output(&self) -> bool {
        if let Some(kind) = self.kind.as_deref() {
            if kind == "content_block_delta"
                || (kind.starts_with("response.") && kind.ends_with(".delta"))
            {
                return true;
            }
        }
        self.choices.iter().flatten().any(|c| {
            non_empty(&c.text)
                || c.delta.as_ref().is_some_and(|d| {
                    non_empty(&d.content)
                        || non_empty(&d.refusal)
                        || non_empty(&d.reasoning_content)
                        || present(&d.tool_calls)
                        || present(&d.function_call)
                        || present(&d.audio)
                })
        })
    }

    fn model(&self) -> Option<&str> {
        [
            self.model.as_deref(),
            self.message.as_ref().and_then(|m| m.model.as_deref()),
            self.response.as_ref().and_then(|r| r.model.as_deref()),
        ]
        .into_iter()
        .flatten()
        .find(|m| !m.is_empty())
    }
}

/// Follows a stream until its first output (and the model that answered) is seen.
#[derive(Debug, Default)]
pub struct FirstOutput {
    partial: Vec<u8>,
    output_seen: bool,
    model: Option<String>,
}

impl FirstOutput {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the detector still reads chunks (no output seen yet).
    pub fn waiting(&self) -> bool {
        !self.output_seen
    }

    /// The model that answered, as the stream named it (`gen_ai.response.model`).
    pub fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    /// Reads one chunk; true when this chunk carried the stream's first output.
    pub fn feed(&mut self, mut chunk: &[u8]) -> bool {
        if self.output_seen {
            return false;
        }
        while let Some(pos) = chunk.iter().position(|&b| b == b'\n') {
            let (line, rest) = chunk.split_at(pos);
            chunk = rest.get(1..).unwrap_or_default();
            // A token-less event is never this long: an event this size is output (the
            // same however the stream was cut).
            let found = if self.partial.len() + line.len() > MAX_LINE {
                true
            } else if self.partial.is_empty() {
                self.line(line)
            } else {
                let mut full = std::mem::take(&mut self.partial);
                full.extend_from_slice(line);
                self.line(&full)
            };
            if found {
                return self.seen();
            }
        }
        if self.partial.len() + chunk.len() > MAX_LINE {
            return self.seen();
        }
        self.partial.extend_from_slice(chunk);
        false
    }

    fn seen(&mut self) -> bool {
        self.output_seen = true;
        self.partial = Vec::new();
        true
    }

    fn line(&mut self, line: &[u8]) -> bool {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(data) = line.strip_prefix(b"data:") else {
            return false;
        };
        let Ok(event) = serde_json::from_slice::<Event<'_>>(data) else {
            return false;
        };
        if self.model.is_none() {
            if let Some(m) = event.model() {
                self.model = Some(truncate(m, MAX_MODEL).to_string());
            }
        }
        event.carries_output()
    }
}

/// `s` cut to at most `max` bytes, on a character boundary.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Index of the chunk (one event each) that carried the first output.
    fn first_output_of(events: &[&str]) -> Option<usize> {
        let mut d = FirstOutput::new();
        events.iter().position(|e| d.feed(e.as_bytes()))
    }

    #[test]
    fn azure_openai_token_less_chunks_are_not_output() {
        let events = [
            "data: {\"choices\":[],\"created\":0,\"id\":\"\",\"model\":\"\",\"object\":\"\",\"prompt_filter_results\":[{\"prompt_index\":0,\"content_filter_results\":{}}]}\n\n",
            "data: {\"choices\":[{\"content_filter_results\":{},\"delta\":{\"content\":\"\",\"refusal\":null,\"role\":\"assistant\"},\"finish_reason\":null,\"index\":0}],\"model\":\"gpt-4o-2024-11-20\",\"object\":\"chat.completion.chunk\"}\n\n",
            "data: {\"choices\":[{\"delta\":{\"content\":\"Hello\"},\"index\":0}],\"model\":\"gpt-4o-2024-11-20\"}\n\n",
        ];
        let mut d = FirstOutput::new();
        assert!(!d.feed(events[0].as_bytes()));
        assert!(!d.feed(events[1].as_bytes()));
        assert_eq!(
            d.model(),
            Some("gpt-4o-2024-11-20"),
            "the empty model is skipped"
        );
        assert!(d.feed(events[2].as_bytes()));
        assert!(!d.waiting());
        assert!(
            !d.feed(events[2].as_bytes()),
            "only the first output counts"
        );
    }

    #[test]
    fn tool_calls_refusals_and_reasoning_are_output() {
        for delta in [
            r#"{"tool_calls":[{"index":0,"id":"call_1","function":{"name":"f","arguments":""}}]}"#,
            r#"{"refusal":"I can't"}"#,
            r#"{"reasoning_content":"Let me think"}"#,
            r#"{"function_call":{"name":"f"}}"#,
        ] {
            let e = format!("data: {{\"choices\":[{{\"delta\":{delta},\"index\":0}}]}}\n\n");
            assert_eq!(first_output_of(&[&e]), Some(0), "{delta}");
        }
        for delta in [
            r#"{"role":"assistant"}"#,
            r#"{"content":null,"tool_calls":null}"#,
            r#"{}"#,
        ] {
            let e = format!("data: {{\"choices\":[{{\"delta\":{delta},\"index\":0}}]}}\n\n");
            assert_eq!(first_output_of(&[&e]), None, "{delta}");
        }
        assert_eq!(
            first_output_of(&[
                "data: {\"choices\":[{\"text\":\"\"}]}\n\n",
                "data: {\"choices\":[{\"text\":\"x\"}]}\n\n"
            ]),
            Some(1),
            "legacy completions"
        );
    }

    #[test]
    fn anthropic_output_is_content_block_delta() {
        let events = [
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-opus-4-5-20251101\",\"usage\":{\"input_tokens\":5,\"output_tokens\":1}}}\n\n",
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
            "event: ping\ndata: {\"type\": \"ping\"}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n",
        ];
        let mut d = FirstOutput::new();
        let at = events.iter().position(|e| d.feed(e.as_bytes()));
        assert_eq!(at, Some(3));
        assert_eq!(d.model(), Some("claude-opus-4-5-20251101"));
    }

    #[test]
    fn responses_output_is_a_delta_event() {
        let events = [
            "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"model\":\"gpt-4o-2024-11-20\",\"output\":[]}}\n\n",
            "event: response.output_item.added\ndata: {\"type\":\"response.output_item.added\",\"item\":{\"type\":\"reasoning\"}}\n\n",
            "event: response.content_part.added\ndata: {\"type\":\"response.content_part.added\",\"part\":{\"type\":\"output_text\",\"text\":\"\"}}\n\n",
            "event: response.reasoning_summary_text.delta\ndata: {\"type\":\"response.reasoning_summary_text.delta\",\"delta\":\"**Plan**\"}\n\n",
        ];
        let mut d = FirstOutput::new();
        assert_eq!(events.iter().position(|e| d.feed(e.as_bytes())), Some(3));
        assert_eq!(d.model(), Some("gpt-4o-2024-11-20"));
    }

    #[test]
    fn events_split_across_chunks_and_crlf() {
        let stream = "data: {\"choices\":[]}\r\n\r\ndata: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\r\n\r\n";
        // The `\n` that ends the event with the output.
        let end = stream.len() - 3;
        for split in 1..stream.len() {
            let (a, b) = stream.as_bytes().split_at(split);
            let mut d = FirstOutput::new();
            let first = d.feed(a);
            let second = d.feed(b);
            // The output is seen in the chunk that completes its line.
            assert_eq!(
                (first, second),
                (split > end, split <= end),
                "split {split}"
            );
        }
    }

    #[test]
    fn garbage_and_oversized_events_never_panic() {
        let mut d = FirstOutput::new();
        assert!(!d.feed(b"data: {not json\n\ndata: [DONE]\n\n: comment\n\n"));
        assert!(d.waiting());
        assert!(
            d.feed(&vec![b'x'; MAX_LINE + 1]),
            "an event this long is output"
        );
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("abc", 5), "abc");
    }
}
