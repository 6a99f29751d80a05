//! Phase charge: once per request, when the answer ends (or the request does), the usage the
//! meter saw is charged to the local counters and the global rate limit service, and recorded
//! in metrics and access-log properties.

use super::HttpFilter;
use crate::host::{limits, now_ms};

impl HttpFilter {
    /// Charges the answer's usage. Once per request.
    pub(super) fn charge(&mut self) {
        if self.charged || self.routed.is_none() {
            return;
        }
        self.charged = true;
        let Some(u) = self.meter.usage() else { return };
        if !self.counters.is_empty() {
            limits::charge_tokens(&self.counters, now_ms() / 1000, u.total());
        }
        self.charge_global(u.total());
        self.property(
            "azure_llm_prompt_tokens",
            u.prompt_tokens.to_string().as_bytes(),
        );
        self.property(
            "azure_llm_completion_tokens",
            u.completion_tokens.to_string().as_bytes(),
        );
        if let (Some((model, backend)), Ok(mut s)) = (&self.routed, self.state.try_borrow_mut()) {
            s.metrics.count_tokens(
                &self.workload,
                model,
                backend,
                u.prompt_tokens,
                u.completion_tokens,
            );
        }
    }
}
