//! Phase meter: the answer's headers are cleaned (what the operator keeps from callers; where
//! local limits apply, the workload's rate-limit headers instead of any of Azure's, except on
//! Azure's own 429) and its body is followed by a `crate::meter::Meter` for the usage it
//! reports.

use super::HttpFilter;
use crate::host::headers;
use crate::host::now_ms;
use crate::host::phase::{self, Phase};
use crate::meter::Meter;
use crate::ratelimit;
use proxy_wasm::traits::HttpContext;
use std::rc::Rc;

impl HttpFilter {
    /// Response headers of a routed request.
    pub(super) fn meter_response_headers(&mut self) {
        let _phase = phase::enter(Phase::Meter);
        let config = self.state.borrow().config.clone();
        // One host call for every header this phase reads.
        let headers = Rc::new(headers::response());
        self.response_headers = headers.clone();
        self.response_status = headers
            .get(":status")
            .and_then(|s| s.trim().parse::<u32>().ok());
        for name in &config.response_headers_to_remove {
            if headers.contains(name) {
                self.set_http_response_header(name, None);
            }
        }
        // Azure's own 429 tells the caller when Azure takes requests again (retry-after,
        // retry-after-ms, x-ratelimit-*): it passes untouched. Otherwise, where local limits
        // apply, the rate-limit headers are the workload's: Azure's figures (the deployment's)
        // go, all of them, requests too, and the workload's replace them.
        if !self.standings.is_empty() && self.response_status != Some(429) {
            let mut azure_names: Vec<&str> = headers
                .names()
                .filter(|k| {
                    k.len() > 12
                        && k.as_bytes()
                            .get(..12)
                            .is_some_and(|p| p.eq_ignore_ascii_case(b"x-ratelimit-"))
                })
                .collect();
            azure_names.dedup();
            for name in azure_names {
                self.set_http_response_header(name, None);
            }
            for (name, value) in ratelimit::headers(&self.standings, now_ms() / 1000) {
                self.set_http_response_header(name, Some(&value));
            }
        }
        let content_type = headers.get("content-type").unwrap_or_default();
        let encoding = headers.get("content-encoding");
        if encoding.is_some() {
            log::debug!("azure-llm-filter: encoded answer ({encoding:?}): its usage is not read");
        }
        self.meter = Meter::for_answer(content_type, encoding);
        let _phase = phase::enter(Phase::Observe);
        self.observe_answer_start(&config, content_type, encoding.is_some());
    }

    /// One chunk of a held answer (`src/host/http/guard.rs` holds a JSON answer until it is
    /// checked): the buffered body's bytes from `from` on are new.
    pub(super) fn meter_response_body(&mut self, from: usize, body_size: usize) {
        let _phase = phase::enter(Phase::Meter);
        if body_size <= from {
            return;
        }
        let chunk = self
            .wants_answer_bytes()
            .then(|| self.get_http_response_body(from, body_size - from))
            .flatten()
            .unwrap_or_default();
        self.meter_chunk(&chunk);
    }

    /// Whether anything reads the answer's bytes as they pass: the meter, the observer (time
    /// to first output, the answer's text) or the usage-chunk strip.
    pub(super) fn wants_answer_bytes(&self) -> bool {
        self.meter.reads_body() || self.observes_answer_text() || self.strip_usage_chunk.is_some()
    }

    /// One chunk of the answer as it passes (with `Continue` the buffer holds just this
    /// chunk), read once for the meter, the observer and the strip (`None`: none of them
    /// needs its bytes).
    pub(super) fn answer_chunk(&self, body_size: usize) -> Option<Vec<u8>> {
        let _phase = phase::enter(Phase::Meter);
        if body_size == 0 || !self.wants_answer_bytes() {
            return None;
        }
        Some(
            self.get_http_response_body(0, body_size)
                .unwrap_or_default(),
        )
    }

    /// The meter and the observer see one chunk of the answer (empty: none to see).
    pub(super) fn meter_chunk(&mut self, chunk: &[u8]) {
        let _phase = phase::enter(Phase::Meter);
        if chunk.is_empty() {
            return;
        }
        if self.meter.reads_body() {
            self.meter.feed(chunk);
        }
        let _phase = phase::enter(Phase::Observe);
        self.observe_chunk(self.observes_answer_text().then_some(chunk));
    }
}
