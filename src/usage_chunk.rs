//! Takes the usage-only chunk the filter caused out of a streamed answer.
//!
//! To meter a streamed chat or legacy completion, the filter asks Azure for
//! `stream_options.include_usage: true`. Azure then ends the stream with one more chunk,
//! `{"choices": [], "usage": {...}}`. A caller that did not ask for it (or sent
//! `include_usage: false`) does not expect it: code reading `chunk.choices[0]` breaks on it. The
//! host feeds the stream's original bytes to the usage scanner (so the usage still counts) and
//! sends on what [`UsageChunkStripper`] returns: the same bytes without that event.
//!
//! The stripper is a small state machine over Server-Sent Events (WHATWG HTML §9.2: an event
//! ends at an empty line; lines end with CRLF, LF or CR). It passes on every complete event at
//! once and holds back only an incomplete trailing event, so streaming keeps its latency. It
//! drops an event only when it is whole and its data is a JSON object with an empty `choices`
//! array and an object `usage` — nothing else, whatever the stream looks like (Azure's own
//! first chunk, `{"choices": [], "prompt_filter_results": ...}`, stays). Bytes it keeps are
//! passed on unchanged, so the output never depends on how the stream was cut into chunks.

/// An incomplete event longer than this is not an SSE stream the filter knows: the stripper
/// gives up and passes everything through unchanged from then on (bounding what it holds).
pub const MAX_HELD_BYTES: usize = 256 * 1024;

#[derive(Debug, Default, Clone)]
pub struct UsageChunkStripper {
    /// The incomplete trailing event, held until its end arrives.
    held: Vec<u8>,
    /// Gave up (an event too large to hold): everything passes from here on.
    passthrough: bool,
    /// Events removed so far.
    stripped: usize,
}

impl UsageChunkStripper {
    pub fn new() -> Self {
        Self::default()
    }

    /// Events removed so far (0 or 1 for a well-formed Azure stream).
    pub fn stripped(&self) -> usize {
        self.stripped
    }

    /// Takes the next piece of the stream; returns the bytes to send on now.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<u8> {
        if self.passthrough {
            return chunk.to_vec();
        }
        self.held.extend_from_slice(chunk);
        let complete = complete_prefix_len(&self.held);
        let rest = self.held.split_off(complete);
        let events = std::mem::replace(&mut self.held, rest);
        if self.held.len() > MAX_HELD_BYTES {
            self.passthrough = true;
            let mut out = self.keep(&events);
            out.append(&mut self.held);
            return out;
        }
        self.keep(&events)
    }

    /// The end of the stream: whatever is held goes on as it is (an event without its empty
    /// line is never dispatched by a client anyway, so it is not looked at).
    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.held)
    }

    /// The complete events of `events`, without the usage-only ones.
    fn keep(&mut self, events: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(events.len());
        let mut start = 0;
        while let Some(rest) = events.get(start..).filter(|r| !r.is_empty()) {
            let len = event_len(rest);
            let event = rest.get(..len).unwrap_or(rest);
            if is_usage_only(event) {
                self.stripped += 1;
            } else {
                out.extend_from_slice(event);
            }
            start += len.max(1);
        }
        out
    }
}

/// Where the line starting at `buf[0]` ends: (content length, terminator length); `None` when
/// no terminator is in `buf` yet. A CR at the very end is not taken as a terminator yet: it may
/// be the first half of a CRLF.
fn line(buf: &[u8]) -> Option<(usize, usize)> {
    let i = buf.iter().position(|&b| b == b'\n' || b == b'\r')?;
    match (buf.get(i), buf.get(i + 1)) {
        (Some(b'\r'), Some(b'\n')) => Some((i, 2)),
        (Some(b'\r'), None) => None,
        _ => Some((i, 1)),
    }
}

/// Length of the longest prefix of `buf` made of complete events (each ending with its empty
/// line).
fn complete_prefix_len(buf: &[u8]) -> usize {
    let mut pos = 0;
    let mut complete = 0;
    while let Some((content, term)) = buf.get(pos..).and_then(line) {
        pos += content + term;
        if content == 0 {
            complete = pos;
        }
    }
    complete
}

/// Length of the first event of `events` (which holds only complete events), its empty line
/// included.
fn event_len(events: &[u8]) -> usize {
    let mut pos = 0;
    while let Some((content, term)) = events.get(pos..).and_then(line) {
        pos += content + term;
        if content == 0 {
            return pos;
        }
    }
    // Not reached for complete events; take the rest so the caller always moves on.
    events.len()
}

/// True for a whole event whose data is `{"choices": [], "usage": {...}, ...}`.
fn is_usage_only(event: &[u8]) -> bool {
    // Cheap test first: nearly every event is a delta without these two words together.
    if !contains(event, b"\"usage\"") || !contains(event, b"\"choices\"") {
        return false;
    }
    let mut data = Vec::new();
    let mut pos = 0;
    while let Some((content, term)) = event.get(pos..).and_then(line) {
        let l = event.get(pos..pos + content).unwrap_or_default();
        pos += content + term;
        if let Some(value) = l.strip_prefix(b"data") {
            // `data:value`, `data: value`, or `data` alone (an empty value).
            let value = match value {
                [] => value,
                [b':', b' ', rest @ ..] | [b':', rest @ ..] => rest,
                _ => continue, // a field named e.g. `database`
            };
            if !data.is_empty() {
                data.push(b'\n');
            }
            data.extend_from_slice(value);
        }
    }
    let Ok(serde_json::Value::Object(v)) = serde_json::from_slice::<serde_json::Value>(&data)
    else {
        return false;
    };
    matches!(v.get("choices"), Some(serde_json::Value::Array(c)) if c.is_empty())
        && matches!(v.get("usage"), Some(serde_json::Value::Object(_)))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILTER: &str = "data: {\"choices\":[],\"created\":0,\"id\":\"\",\"prompt_filter_results\":[{\"prompt_index\":0}]}\n\n";
    const DELTA: &str = "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"finish_reason\":null}],\"usage\":null}\n\n";
    const FINISH: &str = "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n";
    const USAGE: &str = "data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":1,\"total_tokens\":6}}\n\n";
    const DONE: &str = "data: [DONE]\n\n";

    fn stream() -> String {
        [FILTER, DELTA, FINISH, USAGE, DONE].concat()
    }

    fn expected() -> String {
        [FILTER, DELTA, FINISH, DONE].concat()
    }

    fn run(chunks: &[&[u8]]) -> (Vec<u8>, usize) {
        let mut s = UsageChunkStripper::new();
        let mut out = Vec::new();
        for c in chunks {
            out.extend(s.feed(c));
        }
        out.extend(s.finish());
        (out, s.stripped())
    }

    #[test]
    fn strips_only_the_usage_chunk() {
        let (out, n) = run(&[stream().as_bytes()]);
        assert_eq!(String::from_utf8(out).unwrap(), expected());
        assert_eq!(n, 1);
    }

    #[test]
    fn every_split_gives_the_same_output() {
        let s = stream();
        let b = s.as_bytes();
        for i in 0..=b.len() {
            for j in i..=b.len() {
                let (out, n) = run(&[&b[..i], &b[i..j], &b[j..]]);
                assert_eq!(String::from_utf8(out).unwrap(), expected(), "split {i} {j}");
                assert_eq!(n, 1);
            }
        }
    }

    #[test]
    fn complete_events_go_on_at_once_only_the_tail_is_held() {
        let mut s = UsageChunkStripper::new();
        let (a, b) = DELTA.split_at(20);
        assert_eq!(s.feed(FILTER.as_bytes()), FILTER.as_bytes());
        assert!(s.feed(a.as_bytes()).is_empty());
        assert_eq!(s.feed(b.as_bytes()), DELTA.as_bytes());
        // The usage event is held until its end shows it is whole, then dropped.
        let (u1, u2) = USAGE.split_at(USAGE.len() - 1);
        assert!(s.feed(u1.as_bytes()).is_empty());
        assert!(s.feed(u2.as_bytes()).is_empty());
        assert_eq!(s.feed(DONE.as_bytes()), DONE.as_bytes());
        assert!(s.finish().is_empty());
    }

    #[test]
    fn line_endings_and_field_forms() {
        for usage in [
            "data:{\"choices\":[],\"usage\":{\"total_tokens\":1}}\r\n\r\n",
            "data: {\"choices\":[],\r\ndata: \"usage\":{\"total_tokens\":1}}\r\r",
            "event: chunk\nid: 7\ndata: {\"usage\":{\"total_tokens\":1},\"choices\":[]}\n\n",
        ] {
            let input = format!("{DELTA}{usage}{DONE}");
            let (out, n) = run(&[input.as_bytes()]);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                format!("{DELTA}{DONE}"),
                "{usage:?}"
            );
            assert_eq!(n, 1);
        }
    }

    #[test]
    fn keeps_everything_else() {
        for keep in [
            FILTER,
            DELTA,
            // Usage next to choices (Foundry's last chunk), or a null usage.
            "data: {\"choices\":[{\"index\":0,\"delta\":{}}],\"usage\":{\"total_tokens\":1}}\n\n",
            "data: {\"choices\":[],\"usage\":null}\n\n",
            // Not JSON, not an object, a comment, a field that only starts with `data`.
            "data: {\"choices\":[],\"usage\":{}\n\n",
            "data: [\"choices\",\"usage\"]\n\n",
            ": {\"choices\":[],\"usage\":{}}\n\n",
            "database: {\"choices\":[],\"usage\":{}}\n\n",
        ] {
            let (out, n) = run(&[keep.as_bytes()]);
            assert_eq!(String::from_utf8(out).unwrap(), keep);
            assert_eq!(n, 0, "{keep:?}");
        }
    }

    #[test]
    fn an_incomplete_tail_passes_at_the_end_unchanged() {
        let tail = "data: {\"choices\":[],\"usage\":{\"total_tokens\":1}}\n";
        let (out, n) = run(&[DELTA.as_bytes(), tail.as_bytes()]);
        assert_eq!(String::from_utf8(out).unwrap(), format!("{DELTA}{tail}"));
        assert_eq!(n, 0);
    }

    #[test]
    fn gives_up_on_events_too_large_to_hold() {
        let mut s = UsageChunkStripper::new();
        let big = vec![b'x'; MAX_HELD_BYTES + 1];
        assert_eq!(s.feed(&big), big);
        assert_eq!(s.feed(USAGE.as_bytes()), USAGE.as_bytes());
        assert!(s.finish().is_empty());
    }
}
