//! Phase admit (local limits): the workload's rate-limit counters in shared data are read
//! (request counters counted) and the request is refused when a limit is spent: 429 for a
//! rate, 403 for a quota, with `Retry-After`.

use super::HttpFilter;
use crate::config::Config;
use crate::errors::FilterError;
use crate::host::metrics::Family;
use crate::host::{limits, now_ms};
use crate::ratelimit;
use crate::routing::RoutePlan;

impl HttpFilter {
    /// Admits the request against its workload's limits (429 rate / 403 quota).
    pub(super) fn admit(
        &mut self,
        config: &Config,
        plan: &RoutePlan,
        body_len: usize,
    ) -> Result<(), FilterError> {
        let counters = config.rate_limits.applicable(&self.workload, plan.model);
        if counters.is_empty() {
            return Ok(());
        }
        let now_s = now_ms() / 1000;
        let standings = limits::standings(&counters, now_s);
        let estimate = config
            .rate_limits
            .estimate_prompt_tokens
            .then_some(body_len as u64 / 4);
        if let Err(refusal) = ratelimit::admit(&standings, now_s, estimate) {
            let (code, what) = if refusal.status() == 429 {
                ("rate_limit_exceeded", "rate limit")
            } else {
                ("quota_exceeded", "quota")
            };
            self.count(Family::RateLimit, code);
            self.property("azure_llm_ratelimit", code.as_bytes());
            let mut e = FilterError::new(
                refusal.status(),
                "rate_limit_error",
                code,
                format!(
                    "the {} {what} of workload `{}` is spent; retry after {} seconds",
                    refusal.limit.window.name(),
                    self.workload,
                    refusal.retry_after_s
                ),
            )
            .with_retry_after(refusal.retry_after_s);
            e.extra_headers = ratelimit::headers(&standings, now_s);
            return Err(e);
        }
        self.counters = counters;
        self.standings = standings;
        self.count(Family::RateLimit, "allowed");
        self.property("azure_llm_ratelimit", b"allowed");
        Ok(())
    }
}
