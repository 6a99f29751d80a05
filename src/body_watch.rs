//! Requests paused for their body, watched so that every caller gets an answer, and the right
//! one.
//!
//! In body routing mode the filter holds a request's headers until it has read the body. Two
//! different things can then go wrong, and they are different people's faults:
//!
//! - **No body callback at all**: Envoy delivers a body to a filter that paused on headers only
//!   with `allow_on_headers_stop_iteration: true`. Without it the request would hang forever:
//!   500 `filter_misconfigured`, naming the option (the operator's fault).
//! - **A body that started and stalled** (a `content-length` larger than what is sent, a client
//!   that stopped writing): 408 `request_body_timeout` (the caller's fault).
//!
//! A body that never starts looks like the first case until this worker has seen one body
//! callback after a header pause: from then on the option is known to be set, and a body that
//! does not come is the caller's (408 too). A body that trickles in forever (a byte every
//! half second) keeps this idle watch quiet; Envoy's `request_timeout` (set in the shipped
//! configs) bounds the whole request.

use crate::errors::{Dialect, FilterError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    context_id: u32,
    deadline_ms: u64,
    /// A body callback came for this request.
    started: bool,
    dialect: Dialect,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BodyWatch {
    entries: Vec<Entry>,
    /// A body callback followed a header pause on this worker: the option is set.
    callbacks_seen: bool,
}

impl BodyWatch {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// True once a body callback showed that Envoy delivers bodies to this filter.
    pub fn callbacks_seen(&self) -> bool {
        self.callbacks_seen
    }

    /// A request paused for its body: answer it at `deadline_ms` if no body comes.
    pub fn watch(&mut self, context_id: u32, deadline_ms: u64, dialect: Dialect) {
        self.done(context_id);
        self.entries.push(Entry {
            context_id,
            deadline_ms,
            started: false,
            dialect,
        });
    }

    /// Part of the body arrived: the next part is due by `deadline_ms`.
    pub fn progressed(&mut self, context_id: u32, deadline_ms: u64) {
        self.callbacks_seen = true;
        if let Some(e) = self.entries.iter_mut().find(|e| e.context_id == context_id) {
            e.started = true;
            e.deadline_ms = deadline_ms;
        }
    }

    /// The whole body is here, or the request went away: stop watching it.
    pub fn done(&mut self, context_id: u32) {
        self.entries.retain(|e| e.context_id != context_id);
    }

    /// The requests whose body is overdue at `now_ms`, each with its answer; `timeout_ms` is
    /// the configured wait, for the message.
    pub fn take_expired(&mut self, now_ms: u64, timeout_ms: u64) -> Vec<(u32, FilterError)> {
        let callbacks_seen = self.callbacks_seen;
        let mut expired = Vec::new();
        self.entries.retain(|e| {
            if now_ms < e.deadline_ms {
                return true;
            }
            expired.push((
                e.context_id,
                overdue(e.started, callbacks_seen, timeout_ms).in_dialect(e.dialect),
            ));
            false
        });
        expired
    }
}

/// The answer to a request whose body is overdue.
fn overdue(started: bool, callbacks_seen: bool, timeout_ms: u64) -> FilterError {
    match (started, callbacks_seen) {
        (true, _) => FilterError::new(
            408,
            "invalid_request_error",
            "request_body_timeout",
            format!("the request body stalled: nothing more arrived for {timeout_ms} ms"),
        ),
        (false, true) => FilterError::new(
            408,
            "invalid_request_error",
            "request_body_timeout",
            format!("the request body did not arrive within {timeout_ms} ms"),
        ),
        (false, false) => FilterError::internal(
            "filter_misconfigured",
            "the proxy did not pass the request body to the azure-llm-filter: \
             the Wasm plugin needs allow_on_headers_stop_iteration: true",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_body_callback_ever_blames_the_configuration() {
        let mut w = BodyWatch::default();
        w.watch(1, 100, Dialect::OpenAi);
        assert!(w.take_expired(99, 3000).is_empty());
        let e = w.take_expired(100, 3000);
        assert_eq!(e.len(), 1);
        assert_eq!(
            (e[0].0, e[0].1.status, e[0].1.code),
            (1, 500, "filter_misconfigured")
        );
        assert!(w.is_empty());
    }

    #[test]
    fn a_stalled_body_is_the_callers_fault() {
        let mut w = BodyWatch::default();
        w.watch(1, 100, Dialect::Anthropic);
        w.progressed(1, 250);
        assert!(w.take_expired(200, 150).is_empty(), "re-armed by progress");
        let e = w.take_expired(250, 150);
        assert_eq!((e[0].1.status, e[0].1.code), (408, "request_body_timeout"));
        assert!(e[0].1.message.contains("stalled"));
        assert_eq!(e[0].1.dialect, Dialect::Anthropic);
    }

    #[test]
    fn once_bodies_are_known_to_flow_a_missing_one_is_408() {
        let mut w = BodyWatch::default();
        w.watch(1, 100, Dialect::OpenAi);
        w.progressed(1, 100);
        w.done(1);
        assert!(w.callbacks_seen());
        w.watch(2, 300, Dialect::OpenAi);
        let e = w.take_expired(300, 200);
        assert_eq!((e[0].0, e[0].1.status), (2, 408));
        assert!(e[0].1.message.contains("did not arrive"));
    }

    #[test]
    fn finished_or_gone_requests_are_not_answered() {
        let mut w = BodyWatch::default();
        w.watch(1, 100, Dialect::OpenAi);
        w.watch(2, 100, Dialect::OpenAi);
        w.done(1);
        w.progressed(3, 50); // not watched: nothing to re-arm
        let e = w.take_expired(1000, 10);
        assert_eq!(e.iter().map(|(id, _)| *id).collect::<Vec<_>>(), vec![2]);
    }
}
