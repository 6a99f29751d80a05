//! Phase meter: the answer's headers are cleaned (what the operator keeps from callers; the
//! workload's own rate-limit headers instead of Azure's) and its body is followed by a
//! `crate::meter::Meter` for the usage it reports.

use super::HttpFilter;
use crate::host::now_ms;
use crate::meter::Meter;
use crate::ratelimit;
use proxy_wasm::traits::HttpContext;

impl HttpFilter {
    /// Response headers of a routed request.
    pub(super) fn meter_response_headers(&mut self) {
        // What Azure says passes through, except what the operator keeps from callers and
        // the filter's own routing header; rate-limit headers are the workload's, not Azure's.
        let config = self.state.borrow().config.clone();
        for name in &config.response_headers_to_remove {
            self.set_http_response_header(name, None);
        }
        for (name, value) in ratelimit::headers(&self.standings, now_ms() / 1000) {
            self.set_http_response_header(name, Some(&value));
        }
        let content_type = self
            .get_http_response_header("content-type")
            .unwrap_or_default();
        self.meter = Meter::for_content_type(&content_type);
    }

    /// One chunk of the answer. With `Continue` the buffer holds just this chunk: it is read
    /// as it passes.
    pub(super) fn meter_response_body(&mut self, body_size: usize) {
        if body_size > 0 && self.meter.reads_body() {
            let chunk = self
                .get_http_response_body(0, body_size)
                .unwrap_or_default();
            self.meter.feed(&chunk);
        }
    }
}
