//! Phase admit (local limits): the request's estimate is reserved in every rate-limit counter
//! of its workload and model in shared data, all or none (request counters count it), and the
//! request is refused when one does not fit: 429 for a rate, 403 for a quota, with
//! `Retry-After`. The reservation is settled in phase charge.

use super::HttpFilter;
use crate::allowance::Completions;
use crate::config::Config;
use crate::errors::FilterError;
use crate::estimate::Estimate;
use crate::host::metrics::Family;
use crate::host::phase::{self, Phase};
use crate::host::{limits, now_ms};
use crate::ratelimit::{self, Need, Refusal, Unit};
use crate::routing::RoutePlan;

impl HttpFilter {
    /// Admits the request against its workload's limits (429 rate / 403 quota).
    pub(super) fn admit(
        &mut self,
        config: &Config,
        plan: &RoutePlan,
        estimate: &Estimate,
    ) -> Result<(), FilterError> {
        let _phase = phase::enter(Phase::Admit);
        let limits_config = &config.rate_limits;
        let counters = limits_config.applicable(&self.workload, plan.model);
        if counters.is_empty() {
            return Ok(());
        }
        let now_s = now_ms() / 1000;
        let prompt_estimate = limits_config
            .estimate_prompt_tokens
            .then_some(estimate.prompt_tokens);
        let learned =
            self.learned_completions(estimate, plan.model, counters.iter().any(|c| c.learn));
        let price = config.pricing.as_ref().and_then(|p| p.price(plan.model));
        let estimates: Vec<u64> = counters
            .iter()
            .map(|c| {
                let allowance = c.allowance(learned.as_ref());
                match (c.limit.unit, price) {
                    (Unit::Cost, Some(price)) => {
                        estimate.cost_for_limit(allowance, price, c.limit.max)
                    }
                    // Configuration refuses cost budgets over unpriced models.
                    (Unit::Cost, None) => 1,
                    _ => estimate.tokens_for_limit(allowance, c.limit.max),
                }
            })
            .collect();
        let needs: Vec<Need> = counters
            .iter()
            .zip(&estimates)
            .map(|(c, e)| Need::of(c.limit, limits_config.reserve, *e, prompt_estimate))
            .collect();
        match limits::reserve(&counters, &needs, &estimates, now_s) {
            Ok(admitted) => {
                self.taken = admitted.taken;
                self.standings = admitted.standings;
                self.count(Family::RateLimit, "allowed");
                self.property("azure_llm_ratelimit", b"allowed");
                Ok(())
            }
            Err(refused) => {
                let mut e = self.refusal_error(config, &refused.refusal);
                e.extra_headers = ratelimit::headers(&refused.standings, now_s);
                Err(e)
            }
        }
    }

    /// What the workload's answers with `model` taught (src/allowance.rs), when this
    /// request's reservation depends on it (it sets no completion limit, a counter learns),
    /// and which of its answers teach: one shared-data read per such request.
    pub(super) fn learned_completions(
        &mut self,
        estimate: &Estimate,
        model: &str,
        learning: bool,
    ) -> Option<Completions> {
        if !estimate.completes || !learning {
            return None;
        }
        self.teaches = Some(estimate.requested_completion);
        if estimate.requested_completion.is_some() {
            return None;
        }
        limits::learned(&self.workload, model)
    }

    fn refusal_error(&self, config: &Config, refusal: &Refusal) -> FilterError {
        let (code, what) = match (refusal.limit.unit, refusal.status()) {
            (Unit::Cost, _) => ("cost_quota_exceeded", "cost budget"),
            (_, 429) => ("rate_limit_exceeded", "rate limit"),
            _ => ("quota_exceeded", "quota"),
        };
        self.count(Family::RateLimit, code);
        self.property("azure_llm_ratelimit", code.as_bytes());
        let window = refusal.limit.window.name();
        // Amounts as the caller reads them: tokens, or money in the price table's currency.
        let amount = |n: u64| match refusal.limit.unit {
            Unit::Cost => format!(
                "{} {}",
                crate::pricing::format_pico(n),
                config.pricing.as_ref().map_or("", |p| p.currency.as_str())
            ),
            _ => format!("{n} tokens"),
        };
        let message = match refusal.never_fits {
            Some(need) => format!(
                "this request is estimated at {}, more than the whole {window} {what} of workload `{}` ({}): send a smaller prompt or max_tokens",
                amount(need),
                self.workload,
                amount(refusal.limit.max)
            ),
            None => format!(
                "the {window} {what} of workload `{}` is spent; retry after {} seconds",
                self.workload, refusal.retry_after_s
            ),
        };
        FilterError::new(refusal.status(), "rate_limit_error", code, message)
            .with_retry_after(refusal.retry_after_s)
    }
}
