//! Part of phase guard: the answer checks (`answer` in the workload's policy).
//!
//! - A JSON answer is held (headers and body) until its text is checked: then released as it
//!   came, or replaced by a 400 `content_filter` (Azure's shape; Anthropic's on the Messages
//!   routes) naming what fired. Its usage was read as it arrived, so it is charged (Azure
//!   billed it) either way. The latency this adds is one Content Safety round trip
//!   (`azure_llm_guardrail_callout_milliseconds`).
//! - A stream passes as it comes; its text is checked in windows of `stream_window_chars`
//!   while it flows. When a window is flagged, the next chunk is replaced by a terminal error
//!   event the SDKs raise on (`data: {"error": ...}` for OpenAI's, `event: error` for
//!   Anthropic's) and nothing more of the stream reaches the caller. The stream's last chunk
//!   (the one with its terminal event, `data: [DONE]`, `message_stop`, `response.completed`,
//!   or its end if none) is held until the last window is checked, so a flagged end never
//!   passes complete: the SDKs stop reading at the terminal event, and Azure may hold the end
//!   of the body long after it. What
//!   may pass before a verdict: the flagged window itself and whatever the model streams
//!   during its check (README "Guardrails" on the trade-off).

use super::HttpFilter;
use crate::guard::answer::{self, SseText, Windows};
use crate::guard::safety;
use crate::guard::verdict::{self, Decision, Direction};
use crate::guard::Policy;
use crate::meter::Meter;
use crate::routing::Operation;
use proxy_wasm::traits::HttpContext;
use proxy_wasm::types::Action;

/// How an answer is followed for its checks.
pub(super) enum AnswerWatch {
    /// A JSON answer, held: `seen` bytes of the buffered body were read; `ended` once its end
    /// is in and its check out.
    Json {
        seen: usize,
        checking: bool,
    },
    Stream(Box<StreamWatch>),
}

pub(super) struct StreamWatch {
    text: SseText,
    windows: Windows,
    /// The error that ends the stream, once a window was flagged (or the service failed
    /// closed).
    ended_by: Option<Vec<u8>>,
    /// The terminal event went out; the rest of the stream is dropped.
    ended: bool,
    /// The stream's last chunk is held (its length) until the last checks answer.
    held_end: Option<usize>,
}

/// Operations whose answers carry text to check (not embeddings, images or audio).
fn has_text_answer(op: Operation) -> bool {
    matches!(
        op,
        Operation::ChatCompletions
            | Operation::Completions
            | Operation::Responses
            | Operation::Messages
    )
}

impl HttpFilter {
    /// Response headers of a 2xx answer: follow it if the policy checks answers. True when
    /// the headers must be held (a JSON answer).
    pub(super) fn guard_answer_start(&mut self) -> bool {
        let Some(guard) = self.guard.as_mut() else {
            return false;
        };
        let ok = self
            .response_status
            .is_some_and(|s| (200..300).contains(&s));
        if !guard.policy.checks_answer() || !ok || !has_text_answer(guard.op()) {
            return false;
        }
        match &self.meter {
            Meter::Json(_) => {
                guard.answer = Some(AnswerWatch::Json {
                    seen: 0,
                    checking: false,
                });
                // The body may be replaced by a refusal.
                self.set_http_response_header("content-length", None);
                true
            }
            Meter::Sse(_) => {
                let size = guard.policy.stream_window_chars;
                guard.answer = Some(AnswerWatch::Stream(Box::new(StreamWatch {
                    text: SseText::default(),
                    windows: Windows::new(size),
                    ended_by: None,
                    ended: false,
                    held_end: None,
                })));
                false
            }
            // Not text (or encoded): nothing to check.
            _ => false,
        }
    }

    pub(super) fn guard_holds_answer(&self) -> bool {
        matches!(
            self.guard.as_ref().and_then(|g| g.answer.as_ref()),
            Some(AnswerWatch::Json { .. })
        )
    }

    pub(super) fn guard_watches_stream(&self) -> bool {
        matches!(
            self.guard.as_ref().and_then(|g| g.answer.as_ref()),
            Some(AnswerWatch::Stream(_))
        )
    }

    /// A held JSON answer's body: read as it grows (Envoy buffers it), checked at its end.
    pub(super) fn guard_held_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let seen = match self.guard.as_mut().and_then(|g| g.answer.as_mut()) {
            Some(AnswerWatch::Json { seen, checking }) => {
                if *checking {
                    return Action::Pause;
                }
                let from = *seen;
                *seen = body_size;
                from
            }
            _ => return Action::Continue,
        };
        self.meter_response_body(seen, body_size);
        self.answer_settled(end_of_stream);
        if !end_of_stream {
            return Action::Pause;
        }
        let body = self
            .get_http_response_body(0, body_size)
            .unwrap_or_default();
        let text = answer::json_text(&body);
        let Some(policy) = self.guard.as_ref().map(|g| g.policy.clone()) else {
            return Action::Continue;
        };
        let calls = safety::answer_calls(&policy, &text);
        if calls.is_empty() {
            return Action::Continue;
        }
        let config = self.state.borrow().config.clone();
        match self.guard_dispatch(&config, &policy, Direction::Answer, calls) {
            Ok(0) => Action::Continue,
            Ok(_) => {
                if let Some(AnswerWatch::Json { checking, .. }) =
                    self.guard.as_mut().and_then(|g| g.answer.as_mut())
                {
                    *checking = true;
                }
                Action::Pause
            }
            Err(why) => {
                if self.guard_failed(&policy, Direction::Answer, why).is_err() {
                    self.replace_held_answer(&verdict::unavailable(why), body_size);
                }
                Action::Continue
            }
        }
    }

    /// Replaces the held JSON answer by an error (its headers are still held).
    fn replace_held_answer(&mut self, error: &crate::errors::FilterError, body_size: usize) {
        let error = error.clone().in_dialect(self.dialect);
        self.set_http_response_header(":status", Some(&error.status.to_string()));
        for (name, value) in error.headers() {
            self.set_http_response_header(name, Some(&value));
        }
        self.set_http_response_body(0, body_size, error.body().as_bytes());
    }

    /// One chunk of a watched stream (after the meter and the usage-chunk strip; `size` is
    /// its length now).
    pub(super) fn guard_stream_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        let (ended_by, ended) = match self.guard.as_mut().and_then(|g| g.answer.as_mut()) {
            Some(AnswerWatch::Stream(w)) => (w.ended_by.clone(), w.ended),
            _ => return Action::Continue,
        };
        if ended {
            self.set_http_response_body(0, size, b"");
            return Action::Continue;
        }
        if let Some(event) = ended_by {
            self.end_stream(size, &event);
            return Action::Continue;
        }
        let chunk = if size > 0 {
            self.get_http_response_body(0, size).unwrap_or_default()
        } else {
            Vec::new()
        };
        let mut windows = Vec::new();
        // The stream's last words: at its terminal event (the caller's SDK reads no further,
        // so a verdict after it would stop nothing) or at the end of the body.
        let mut last = end_of_stream;
        if let Some(AnswerWatch::Stream(w)) = self.guard.as_mut().and_then(|g| g.answer.as_mut()) {
            let mut text = String::new();
            w.text.feed(&chunk, &mut text);
            windows.extend(w.windows.push(&text));
            last |= w.text.ended();
            if last {
                windows.extend(w.windows.finish());
            }
        }
        for window in windows {
            self.check_window(&window);
        }
        let in_flight = self.guard.as_ref().is_some_and(|g| !g.in_flight.is_empty());
        let flagged = match self.guard.as_mut().and_then(|g| g.answer.as_mut()) {
            Some(AnswerWatch::Stream(w)) => {
                if last && in_flight && w.ended_by.is_none() {
                    w.held_end = Some(size);
                }
                w.ended_by.clone()
            }
            _ => None,
        };
        if let Some(event) = flagged {
            // The service failed closed at once.
            self.end_stream(size, &event);
            return Action::Continue;
        }
        if last && in_flight {
            // The last window is being checked: the terminal event (and the rest of the
            // body, buffered by Envoy) waits for the verdict.
            return Action::Pause;
        }
        Action::Continue
    }

    /// The stream's end is held for its last check.
    pub(super) fn guard_holds_stream_end(&self) -> bool {
        matches!(
            self.guard.as_ref().and_then(|g| g.answer.as_ref()),
            Some(AnswerWatch::Stream(w)) if w.held_end.is_some()
        )
    }

    /// More of a held stream end: Envoy buffers it with what was held (`body_size` is the
    /// whole buffer, the terminal event already read), released or replaced with it.
    pub(super) fn guard_held_stream_end(&mut self, body_size: usize) -> Action {
        if let Some(AnswerWatch::Stream(w)) = self.guard.as_mut().and_then(|g| g.answer.as_mut()) {
            w.held_end = Some(body_size);
        }
        Action::Pause
    }

    /// Sends one window of the stream to Content Safety.
    fn check_window(&mut self, window: &str) {
        let Some(policy) = self.guard.as_ref().map(|g| g.policy.clone()) else {
            return;
        };
        let calls = safety::answer_calls(&policy, window);
        let config = self.state.borrow().config.clone();
        if let Err(why) = self.guard_dispatch(&config, &policy, Direction::Answer, calls) {
            if self.guard_failed(&policy, Direction::Answer, why).is_err() {
                self.flag_stream(&verdict::unavailable(why));
            }
        }
    }

    /// From now on the stream ends with `error`.
    fn flag_stream(&mut self, error: &crate::errors::FilterError) {
        let event = answer::terminal_event(&error.clone().in_dialect(self.dialect));
        if let Some(AnswerWatch::Stream(w)) = self.guard.as_mut().and_then(|g| g.answer.as_mut()) {
            if w.ended_by.is_none() {
                w.ended_by = Some(event);
            }
        }
    }

    /// Replaces the current chunk by the terminal event.
    fn end_stream(&mut self, size: usize, event: &[u8]) {
        self.set_http_response_body(0, size, event);
        if let Some(AnswerWatch::Stream(w)) = self.guard.as_mut().and_then(|g| g.answer.as_mut()) {
            w.ended = true;
        }
        log::debug!(
            "azure-llm-filter: stream of workload `{}` ended by the guardrails",
            self.workload
        );
    }

    /// The answer's check is decided.
    pub(super) fn answer_checked(&mut self, policy: &Policy) {
        let Some(guard) = self.guard.as_mut() else {
            return;
        };
        let found = std::mem::take(&mut guard.pending);
        let failed = guard.failed.take();
        let blocked = found.iter().any(|f| f.decision == Decision::Blocked);
        self.guard_found(found);
        let refusal = if blocked {
            Some(self.guard_refusal(Direction::Answer))
        } else {
            failed.and_then(|why| {
                self.guard_failed(policy, Direction::Answer, why)
                    .err()
                    .map(|_| verdict::unavailable(why))
            })
        };
        match self.guard.as_ref().and_then(|g| g.answer.as_ref()) {
            Some(AnswerWatch::Json { .. }) => {
                if let Some(e) = refusal {
                    let size = match self.guard.as_ref().and_then(|g| g.answer.as_ref()) {
                        Some(AnswerWatch::Json { seen, .. }) => *seen,
                        _ => 0,
                    };
                    self.replace_held_answer(&e, size);
                }
                if let Some(g) = self.guard.as_mut() {
                    g.answer = None;
                }
                self.resume_http_response();
            }
            Some(AnswerWatch::Stream(_)) => {
                if let Some(e) = &refusal {
                    self.flag_stream(e);
                }
                let held = match self.guard.as_mut().and_then(|g| g.answer.as_mut()) {
                    Some(AnswerWatch::Stream(w)) => {
                        w.held_end.take().map(|n| (n, w.ended_by.clone()))
                    }
                    _ => None,
                };
                if let Some((size, ended_by)) = held {
                    if let Some(event) = ended_by {
                        self.end_stream(size, &event);
                    }
                    self.resume_http_response();
                }
            }
            None => {}
        }
    }
}
