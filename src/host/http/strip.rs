//! Part of phase meter: a stream the filter changed is given back to the caller as asked.
//! When the filter added `stream_options.include_usage` (so the answer can be metered), the
//! usage-only chunk Azure then sends is taken out (`crate::usage_chunk`) after the meter has
//! read it, so the caller sees the stream it asked for and the usage still counts.

use super::HttpFilter;
use crate::host::phase::{self, Phase};
use crate::meter::Meter;
use proxy_wasm::traits::HttpContext;

impl HttpFilter {
    /// Response headers: strip only an event stream; its length changes, so no
    /// `content-length` (Envoy then frames the answer itself).
    pub(super) fn strip_response_headers(&mut self) {
        let _phase = phase::enter(Phase::Strip);
        if self.strip_usage_chunk.is_none() {
            return;
        }
        if matches!(self.meter, Meter::Sse(_)) {
            self.set_http_response_header("content-length", None);
        } else {
            self.strip_usage_chunk = None;
        }
    }

    /// One chunk of the answer (`chunk`: its bytes, as the meter read them), after the meter
    /// read it: sent on without the usage-only event (an incomplete trailing event is held
    /// until its end arrives). Returns the chunk's length after it (`body_size` when nothing
    /// changed).
    pub(super) fn strip_response_body(
        &mut self,
        chunk: &[u8],
        body_size: usize,
        end_of_stream: bool,
    ) -> usize {
        let _phase = phase::enter(Phase::Strip);
        let Some(stripper) = self.strip_usage_chunk.as_mut() else {
            return body_size;
        };
        let mut out = stripper.feed(chunk);
        if end_of_stream {
            out.extend(stripper.finish());
        }
        if out != chunk {
            self.set_http_response_body(0, body_size, &out);
        }
        out.len()
    }
}
