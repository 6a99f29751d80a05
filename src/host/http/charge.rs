//! Phase charge: once per request, when the answer ends (or the request does), the request's
//! reservations are settled with what it cost (src/settlement.rs: its real usage, the estimate
//! when the usage could not be read, nothing for an error) in the local counters and the
//! global rate limit service, and its usage recorded in metrics and access-log properties.
//! This is the one place a request's cost is decided: hooks that need it go here
//! (`observe_end`: the request's histograms, cost and usage record).

use super::HttpFilter;
use crate::allowance;
use crate::host::metrics::Family;
use crate::host::phase::{self, Phase};
use crate::host::{limits, now_ms};
use crate::ratelimit::Unit;
use crate::settlement::{Ending, Settlement};
use crate::usage::Usage;
use proxy_wasm::traits::Context;

/// `response.code_details` of Envoy's 504 when the upstream did not answer in time (the
/// route's timeout, Envoy 1.40's name first; a try's timeout).
const UPSTREAM_TIMEOUT_DETAILS: [&[u8]; 3] = [
    b"response_timeout",
    b"upstream_response_timeout",
    b"upstream_per_try_timeout",
];

impl HttpFilter {
    /// Charges the request. Once per request.
    pub(super) fn charge(&mut self) {
        if self.charged {
            return;
        }
        if self.routed.is_none() {
            // Admitted, never forwarded: a guardrail refused it after admission, or the
            // caller left while it was checked. Nothing went to Azure: its tokens go back.
            if !self.taken.is_empty() {
                self.charged = true;
                limits::release(&self.taken, now_ms() / 1000);
                self.count(Family::RateLimit, "charge_released");
                self.property("azure_llm_charge", b"released");
            }
            return;
        }
        self.charged = true;
        let _phase = phase::enter(Phase::Charge);
        let usage = self.meter.usage();
        {
            let _phase = phase::enter(Phase::Observe);
            self.observe_end(usage);
        }
        let settlement = self.settlement(usage);
        if !settlement.is_exact() {
            log::debug!(
                "azure-llm-filter: request of `{}` charged the fail-safe way ({})",
                self.workload,
                settlement.label()
            );
        }
        let seen_cost = self.usage_cost(usage);
        // Attempts of a failover pool that reached a target and were never answered (a
        // reset, a timeout) before the one the caller got: Azure may bill each.
        let lost = self.lost_attempts();
        if lost > 0 {
            log::debug!(
                "azure-llm-filter: request of `{}` charged its estimate for {lost} unanswered attempt(s)",
                self.workload
            );
        }
        if !self.taken.is_empty() {
            limits::settle(&self.taken, now_ms() / 1000, |t| {
                let charged = match t.counter.limit.unit {
                    Unit::Cost => settlement.cost(t.estimate, seen_cost),
                    _ => settlement.tokens(t.estimate),
                };
                // A lost attempt costs what the request was estimated to (tokens or money).
                charged.saturating_add(lost.saturating_mul(t.estimate))
            });
        }
        let global_cost = self.global_cost_estimate.map(|e| {
            settlement
                .cost(e, seen_cost)
                .saturating_add(lost.saturating_mul(e))
        });
        self.charge_global(
            settlement
                .tokens(self.global_estimate)
                .saturating_add(lost.saturating_mul(self.global_estimate)),
            global_cost,
        );
        if !self.taken.is_empty() || self.global_estimate > 0 {
            // How often the fail-safe rules decide a charge is worth watching.
            self.count(
                Family::RateLimit,
                match settlement {
                    Settlement::Exact(_) => "charged_usage",
                    Settlement::AtLeastEstimate { .. } => "charged_estimate",
                    Settlement::Release => "charge_released",
                },
            );
            self.property("azure_llm_charge", settlement.label().as_bytes());
        }
        if let Some(u) = usage {
            self.record_usage(&u);
            self.teach(&settlement, &u);
        }
    }

    /// An answer whose usage was read teaches the workload's learned allowance with its model
    /// (src/allowance.rs), if it tells how long answers run.
    fn teach(&self, settlement: &Settlement, u: &Usage) {
        let (Some(requested), Some((model, _))) = (self.teaches, &self.routed) else {
            return;
        };
        if settlement.is_exact() && allowance::teaches(requested, u.completion_tokens) {
            limits::learn(&self.workload, model, u.completion_tokens);
        }
    }

    /// What `usage` costs at the model's prices, in pico-units (for cost budgets).
    fn usage_cost(&self, usage: Option<Usage>) -> Option<u64> {
        let (model, _) = self.routed.as_ref()?;
        let u = usage?;
        let state = self.state.try_borrow().ok()?;
        let price = state.config.pricing.as_ref()?.price(model)?;
        Some(u64::try_from(price.cost_pico(&u)).unwrap_or(u64::MAX))
    }

    /// How the request ended, for its budget.
    fn settlement(&self, usage: Option<Usage>) -> Settlement {
        // The filter answered itself after admission (a global refusal, no token): nothing
        // went to Azure.
        if self.answered {
            return Settlement::Release;
        }
        // No answer seen: the caller left. Azure may bill the request if it was sent (an
        // upstream host was picked), not if it never left Envoy.
        if self.response_status.is_none()
            && self.get_property(vec!["upstream", "address"]).is_none()
        {
            return Settlement::Release;
        }
        // Envoy gave up waiting for Azure's answer (the route's or a try's timeout): its 504
        // is not Azure's error, and Azure may bill the request it received, so it is charged
        // like a caller gone after sending (the estimate), not released.
        let status = if self.answered_by_upstream_timeout() {
            None
        } else {
            self.response_status
        };
        Settlement::of(&Ending {
            status,
            complete: self.answer_complete,
            usage,
        })
    }

    /// The answer is Envoy's own 504 for an upstream that did not answer in time.
    fn answered_by_upstream_timeout(&self) -> bool {
        self.response_status == Some(504)
            && self
                .get_property(vec!["response", "code_details"])
                .is_some_and(|d| UPSTREAM_TIMEOUT_DETAILS.contains(&d.as_slice()))
    }

    /// The answer's own usage in access-log properties and token metrics.
    fn record_usage(&mut self, u: &Usage) {
        self.property(
            "azure_llm_prompt_tokens",
            u.prompt_tokens.to_string().as_bytes(),
        );
        if self.has_output() {
            self.property(
                "azure_llm_completion_tokens",
                u.completion_tokens.to_string().as_bytes(),
            );
        }
        if let (Some((model, backend)), Ok(mut s)) = (&self.routed, self.state.try_borrow_mut()) {
            s.metrics.count_usage(&self.workload, model, backend, u);
        }
    }
}
