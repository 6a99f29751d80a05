//! Phase admit, global mode (`rate_limits.global`): the rate limit service is asked whether
//! the workload's budget allows the request (the request pauses for the answer), and the
//! answer's real usage is reported to it at the charge.

use super::HttpFilter;
use crate::errors::FilterError;
use crate::host::metrics::Family;
use crate::host::tokens;
use crate::rls::{self, CheckOutcome};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use std::time::Duration;

/// gRPC UNAVAILABLE: what a call that could not even be dispatched amounts to.
const GRPC_UNAVAILABLE: u32 = 14;

/// The checks of one request in flight: tokens in `domain`, money in `cost_domain` when
/// configured. The request goes on when both have answered, as the worse answer says.
pub(super) struct GlobalCheck {
    credential: usize,
    /// gRPC call tokens not answered yet, and whether each is the cost check.
    pending: Vec<(u32, bool)>,
    /// The worse outcome so far, and whether it is the cost check's.
    outcome: Option<(CheckOutcome, bool)>,
}

impl GlobalCheck {
    fn merge(&mut self, outcome: CheckOutcome, cost: bool) {
        self.outcome = Some(match self.outcome.take() {
            None => (outcome, cost),
            Some((old, old_cost)) => {
                let worse = old.clone().worse(outcome);
                let cost = if worse == old { old_cost } else { cost };
                (worse, cost)
            }
        });
    }
}

impl HttpFilter {
    /// Asks the rate limit service whether the workload's budgets allow the request (tokens,
    /// and money when `cost_domain` is set: two calls at once), and pauses it until the
    /// answers (`on_grpc_call_response`). The calls belong to this request, so a caller that
    /// goes away cancels them.
    pub(super) fn check_global(
        &mut self,
        global: &rls::Global,
        model: &str,
        credential: usize,
    ) -> Result<Action, FilterError> {
        let mut calls = vec![(
            global.check_call(&self.workload, model, self.global_estimate),
            false,
        )];
        if let Some(estimate) = self.global_cost_estimate {
            calls.extend(
                global
                    .cost_check_call(&self.workload, model, estimate)
                    .map(|c| (c, true)),
            );
        }
        let mut check = GlobalCheck {
            credential,
            pending: Vec::new(),
            outcome: None,
        };
        for (call, cost) in calls {
            match self.dispatch_grpc_call(
                &global.cluster,
                call.service,
                call.method,
                Vec::new(),
                Some(&call.message),
                Duration::from_millis(global.timeout_ms),
            ) {
                Ok(token) => check.pending.push((token, cost)),
                Err(status) => {
                    log::warn!(
                        "azure-llm-filter: cannot call the rate limit service on cluster `{}` ({status:?}): is the cluster defined, with HTTP/2?",
                        global.cluster
                    );
                    check.merge(global.check_outcome(GRPC_UNAVAILABLE, &[]), cost);
                }
            }
        }
        if check.pending.is_empty() {
            let (outcome, cost) = check
                .outcome
                .unwrap_or((CheckOutcome::Admit { degraded: true }, false));
            return self.global_decided(outcome, cost, credential);
        }
        self.global_check = Some(check);
        Ok(Action::Pause)
    }

    /// The rate limit service's answer to one of this request's checks.
    pub(super) fn global_answered(
        &mut self,
        token_id: u32,
        status_code: u32,
        response_size: usize,
    ) {
        let Some(cost) = self.global_check.as_mut().and_then(|check| {
            let at = check.pending.iter().position(|(t, _)| *t == token_id)?;
            Some(check.pending.remove(at).1)
        }) else {
            return;
        };
        let body = if status_code == 0 && response_size > 0 {
            self.get_grpc_call_response_body(0, response_size)
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        let config = self.state.borrow().config.clone();
        let outcome = match &config.rate_limits.global {
            Some(global) => global.check_outcome(status_code, &body),
            None => CheckOutcome::Admit { degraded: false },
        };
        let Some(check) = self.global_check.as_mut() else {
            return;
        };
        check.merge(outcome, cost);
        if !check.pending.is_empty() {
            return;
        }
        let Some(GlobalCheck {
            credential,
            outcome: Some((outcome, cost)),
            ..
        }) = self.global_check.take()
        else {
            return;
        };
        match self.global_decided(outcome, cost, credential) {
            Ok(Action::Continue) => self.resume_http_request(),
            // Waits for its token: the root context resumes it.
            Ok(_) => {}
            Err(e) => {
                self.reply_error(&e);
            }
        }
    }

    /// Acts on the rate limit service's answer (or its failure).
    fn global_decided(
        &mut self,
        outcome: CheckOutcome,
        cost: bool,
        credential: usize,
    ) -> Result<Action, FilterError> {
        match outcome {
            CheckOutcome::Admit { degraded } => {
                let decision = if degraded {
                    log::warn!(
                        "azure-llm-filter: rate limit service failed; request of `{}` let through (failure_mode allow)",
                        self.workload
                    );
                    "global_failed_open"
                } else {
                    "global_allowed"
                };
                self.count(Family::RateLimit, decision);
                self.property("azure_llm_ratelimit", decision.as_bytes());
                let config = self.state.borrow().config.clone();
                self.attach_credential(&config, credential)
            }
            CheckOutcome::OverLimit { retry_after_s } if cost => {
                let code = "cost_quota_exceeded";
                self.count(Family::RateLimit, code);
                self.property("azure_llm_ratelimit", code.as_bytes());
                Err(FilterError::new(
                    403,
                    "rate_limit_error",
                    code,
                    format!(
                        "the cost budget of workload `{}` is spent (global limit); retry after {retry_after_s} seconds",
                        self.workload
                    ),
                )
                .with_retry_after(retry_after_s))
            }
            CheckOutcome::OverLimit { retry_after_s } => {
                let code = "rate_limit_exceeded";
                self.count(Family::RateLimit, code);
                self.property("azure_llm_ratelimit", code.as_bytes());
                Err(FilterError::new(
                    429,
                    "rate_limit_error",
                    code,
                    format!(
                        "the token budget of workload `{}` is spent (global limit); retry after {retry_after_s} seconds",
                        self.workload
                    ),
                )
                .with_retry_after(retry_after_s))
            }
            CheckOutcome::Unavailable { reason } => {
                log::warn!(
                    "azure-llm-filter: {reason}; request of `{}` refused (failure_mode deny)",
                    self.workload
                );
                let decision = "global_failed_closed";
                self.count(Family::RateLimit, decision);
                self.property("azure_llm_ratelimit", decision.as_bytes());
                Err(FilterError::unavailable(
                    "rate_limit_service_unavailable",
                    "the rate limit service did not answer; retry later",
                )
                .with_retry_after(1))
            }
        }
    }

    /// Queues the charge (what the request cost, see phase charge) for the root context,
    /// which sends it on its next tick (at once). A call made from this context would be
    /// cancelled when the request ends, which is exactly when charges are made.
    pub(super) fn charge_global(&mut self, tokens: u64, cost_pico: Option<u64>) {
        let Some((model, _)) = &self.routed else {
            return;
        };
        let Ok(mut state) = self.state.try_borrow_mut() else {
            return;
        };
        let config = state.config.clone();
        let Some(global) = &config.rate_limits.global else {
            return;
        };
        let tokens_call = global.charge_call(&self.workload, model, tokens, self.global_estimate);
        let cost_call = cost_pico
            .zip(self.global_cost_estimate)
            .and_then(|(c, e)| global.cost_charge_call(&self.workload, model, c, e));
        let calls: Vec<_> = tokens_call.into_iter().chain(cost_call).collect();
        if !calls.is_empty() {
            state.rls_charges.extend(calls);
            tokens::request_tick_now(&mut state);
        }
    }
}
