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

impl HttpFilter {
    /// Asks the rate limit service whether the workload's budget allows the request, and
    /// pauses it until the answer (`on_grpc_call_response`). The call belongs to this
    /// request, so a caller that goes away cancels it.
    pub(super) fn check_global(
        &mut self,
        global: &rls::Global,
        model: &str,
        credential: usize,
    ) -> Result<Action, FilterError> {
        let call = global.check_call(&self.workload, model, self.global_estimate);
        match self.dispatch_grpc_call(
            &global.cluster,
            call.service,
            call.method,
            Vec::new(),
            Some(&call.message),
            Duration::from_millis(global.timeout_ms),
        ) {
            Ok(_) => {
                self.global_check = Some(credential);
                Ok(Action::Pause)
            }
            Err(status) => {
                log::warn!(
                    "azure-llm-filter: cannot call the rate limit service on cluster `{}` ({status:?}): is the cluster defined, with HTTP/2?",
                    global.cluster
                );
                let outcome = global.check_outcome(GRPC_UNAVAILABLE, &[]);
                self.global_decided(outcome, credential)
            }
        }
    }

    /// The rate limit service's answer to this request's check.
    pub(super) fn global_answered(&mut self, status_code: u32, response_size: usize) {
        let Some(credential) = self.global_check.take() else {
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
        match self.global_decided(outcome, credential) {
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
    pub(super) fn charge_global(&mut self, tokens: u64) {
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
        if let Some(call) = global.charge_call(&self.workload, model, tokens, self.global_estimate)
        {
            state.rls_charges.push(call);
            tokens::request_tick_now(&mut state);
        }
    }
}
