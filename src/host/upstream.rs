//! The upstream HTTP filter of a failover pool (`"role": "upstream"`): Envoy runs one per
//! attempt, on the aggregate cluster of the pool, after it picked the attempt's host. The
//! listener filter already rewrote the request for the first target it tries; an attempt
//! Envoy sends to another target (a retry, or the first attempt when Envoy's outlier
//! detection skipped an ejected one) is rewritten here for that target (`:authority`,
//! `:path`, the backend's headers, the target's Entra token). The body's `model` is set for
//! every attempt whose target reads it from the body. What the target answered, or that it
//! never answered, is recorded in shared data as the target's health.
//!
//! It never decides whether a request may go (the listener filter did) and never charges
//! usage (the listener filter charges the answer the caller gets, once, and the attempts
//! listed in `LOST_PROPERTY`). The request headers it sees are the ones the previous attempt
//! left (Envoy shares them between attempts), so it rewrites from the listener filter's
//! hand-over, never from the headers.

use super::metrics::Family;
use super::now_ms;
use super::pool::{self, Handover, HANDOVER_PROPERTY, LOST_PROPERTY, TARGET_PROPERTY};
use super::tokens::{self, TokenLookup};
use super::worker::{Waiter, WorkerState};
use crate::config::Config;
use crate::errors::FilterError;
use crate::failover::{self, Outcome, TargetHealth};
use crate::metrics;
use crate::routing::{self, RoutePlan};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use std::cell::RefCell;
use std::rc::Rc;

/// The endpoint metadata naming the target of a host:
/// `metadata: {filter_metadata: {azure_llm: {backend: <backend name>}}}`.
const TARGET_METADATA: [&str; 5] = [
    "xds",
    "upstream_host_metadata",
    "filter_metadata",
    "azure_llm",
    "backend",
];

/// The attempt's target, once known.
struct Attempt {
    backend: String,
    /// Shared-data key of the target's health.
    health_key: String,
    credential: usize,
    /// The listener filter rewrote the request for another target: headers and token are
    /// this target's to set.
    rewrite: bool,
    /// A healthy answer has nothing to clear in the target's health.
    clean: bool,
    /// The body's `model` must become this.
    body_model: Option<String>,
}

pub struct UpstreamFilter {
    context_id: u32,
    state: Rc<RefCell<WorkerState>>,
    attempt: Option<Attempt>,
    /// Paused until the whole body is here (to set its `model`).
    body_pending: bool,
    /// Paused until the target's token is here (the root context resumes the attempt).
    token_pending: bool,
    /// The whole request went on to the target (headers and body let through, token
    /// attached): an attempt that ends without an answer then says something about it.
    released: bool,
    /// Response headers came.
    answered: bool,
    /// The attempt went on without its target's token (the fetch failed, or the wait for it
    /// timed out): the target's refusal becomes this error, a 5xx Envoy's router retries on
    /// the pool's next target.
    tokenless: Option<FilterError>,
    /// The answer's body is replaced by this (the error of a tokenless attempt).
    replace_body: Option<String>,
}

impl UpstreamFilter {
    pub fn new(context_id: u32, state: Rc<RefCell<WorkerState>>) -> UpstreamFilter {
        UpstreamFilter {
            context_id,
            state,
            attempt: None,
            body_pending: false,
            token_pending: false,
            released: false,
            answered: false,
            tokenless: None,
            replace_body: None,
        }
    }

    fn fail(&mut self, error: &FilterError) -> Action {
        log::warn!(
            "azure-llm-filter (upstream): answering {} ({}): {}",
            error.status,
            error.code,
            error.message
        );
        if let Ok(mut s) = self.state.try_borrow_mut() {
            s.metrics.count_fixed(Family::Requests, error.code);
        }
        tokens::send_error(error);
        Action::Pause
    }

    /// The plan of this attempt: the hand-over's model on the target of the picked host, and
    /// the hand-over.
    fn plan<'c>(
        &self,
        config: &'c Config,
    ) -> Result<(RoutePlan<'c>, usize, Handover), FilterError> {
        let misconfigured = |message: String| FilterError::internal("pool_misconfigured", message);
        let handover = self
            .get_property(vec![HANDOVER_PROPERTY])
            .and_then(|b| Handover::decode(&b))
            .ok_or_else(|| {
                misconfigured(
                    "this cluster's upstream azure-llm-filter got a request that the listener's \
                     azure-llm-filter did not route to a pool"
                        .into(),
                )
            })?;
        let backend = self
            .get_property(TARGET_METADATA.to_vec())
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| {
                misconfigured(
                    "the host Envoy picked has no endpoint metadata \
                     filter_metadata.azure_llm.backend naming its backend"
                        .into(),
                )
            })?;
        let route = routing::lookup(config, &handover.model)?;
        let index = route
            .targets
            .iter()
            .position(|t| config.backends.get(t.backend).is_some_and(|b| b.name == backend))
            .ok_or_else(|| {
                misconfigured(format!(
                    "the host Envoy picked belongs to backend `{}`, which is not a target of model `{}`",
                    crate::metrics::sanitize(&backend),
                    handover.model
                ))
            })?;
        let plan = routing::plan_target(config, handover.op, &handover.model, index)?;
        Ok((plan, index, handover))
    }

    /// Sets the attempt's headers; returns what the body needs.
    fn rewrite_headers(&mut self, config: &Config, plan: &RoutePlan) {
        // Headers another target of the pool added on an earlier attempt go first.
        if let Ok(route) = routing::lookup(config, plan.model) {
            for t in &route.targets {
                let Some(b) = config.backends.get(t.backend) else {
                    continue;
                };
                for (name, _) in &b.headers {
                    if !plan.backend.headers.iter().any(|(n, _)| n == name) {
                        self.set_http_request_header(name, None);
                    }
                }
            }
        }
        self.set_http_request_header(":authority", Some(&plan.backend.host));
        self.set_http_request_header(":path", Some(&plan.path));
        for (name, value) in &plan.backend.headers {
            self.set_http_request_header(name, Some(value));
        }
        for (name, value) in &plan.default_headers {
            // As bytes: the SDK's string reader panics on a value that is not UTF-8.
            if self.get_http_request_header_bytes(name).is_none() {
                self.set_http_request_header(name, Some(value));
            }
        }
        self.set_property(vec![TARGET_PROPERTY], Some(plan.backend.name.as_bytes()));
        if config.access_log_properties {
            self.set_property(
                vec!["azure_llm_deployment"],
                Some(plan.deployment.as_bytes()),
            );
        }
    }

    /// Attaches the target's token, or registers the attempt to be resumed with it.
    fn attach_token(&mut self, config: &Config) -> Result<(), FilterError> {
        let Some(credential) = self.attempt.as_ref().map(|a| a.credential) else {
            return Ok(());
        };
        let now = now_ms();
        let mut state = self.state.borrow_mut();
        match tokens::token_for_request(&mut state, credential, now) {
            TokenLookup::Ready(authorization) => {
                drop(state);
                self.set_http_request_header("authorization", Some(&authorization));
                Ok(())
            }
            TokenLookup::Wait => {
                state.waiters.push(Waiter {
                    context_id: self.context_id,
                    credential,
                    deadline_ms: now + config.token_wait_timeout_ms,
                    // The upstream filter does not track the caller's API: OpenAI's shape.
                    dialect: Default::default(),
                    moves_on: true,
                });
                self.token_pending = true;
                Ok(())
            }
            TokenLookup::Unavailable(e) => Err(e),
        }
    }

    /// Tells the listener filter that this attempt on the first target did not serve (an
    /// attempt on another target named itself in `TARGET_PROPERTY` already): without it, the
    /// listener filter takes it that one attempt was made, and reads no attempt count.
    fn report_failure(&self) {
        if let Some(a) = self.attempt.as_ref().filter(|a| !a.rewrite) {
            self.set_property(vec![TARGET_PROPERTY], Some(a.backend.as_bytes()));
        }
    }

    fn count_attempt(&self, outcome: Outcome) {
        self.count_attempt_as(TargetHealth::outcome_label(outcome));
    }

    fn count_attempt_as(&self, label: &str) {
        let Some(a) = &self.attempt else { return };
        if let Ok(mut s) = self.state.try_borrow_mut() {
            s.metrics
                .count(metrics::target_attempts(&a.backend, label), 1);
        }
    }

    /// The request may leave: the target's token is attached (or awaited: the root context
    /// resumes the attempt with it, or without it: `WorkerState::tokenless`).
    fn release(&mut self, config: &Config) -> Action {
        if self.attempt.as_ref().is_some_and(|a| a.rewrite) {
            if let Err(e) = self.attach_token(config) {
                // Answering it here would end the request with this 503 (Envoy's router
                // never retries an upstream filter's own answer) while another target of
                // the pool could serve it: it goes on without a token, and the target's
                // refusal becomes the retriable 503 (`tokenless_answer`). The
                // `authorization` it carries is another target's: it must not leave.
                self.set_http_request_header("authorization", None);
                self.tokenless = Some(e);
            }
        }
        if self.token_pending {
            return Action::Pause;
        }
        self.released = true;
        Action::Continue
    }

    /// The attempt ended without an answer: the connection was refused or timed out, or the
    /// request was sent and reset or timed out before its answer. Either way the target
    /// failed (unless the caller left); one that was sent may be billed by Azure, so the
    /// listener filter charges it (`LOST_PROPERTY`).
    fn unanswered(&mut self) {
        let Some(a) = &self.attempt else { return };
        let caller_left = self
            .get_property(vec!["response", "code_details"])
            .is_some_and(|d| d.starts_with(b"downstream"));
        if caller_left {
            return;
        }
        let config = self.state.borrow().config.clone();
        pool::record(
            &a.health_key,
            Outcome::Unreachable,
            now_ms(),
            &config.failover,
        );
        self.count_attempt(Outcome::Unreachable);
        self.report_failure();
        // A request without its token is refused, not billed.
        if self.tokenless.is_some() {
            return;
        }
        // `upstream.local_address` exists once the connection to the target was made.
        if self
            .get_property(vec!["upstream", "local_address"])
            .is_none()
        {
            return;
        }
        let attempt = self
            .get_property(vec!["upstream", "request_attempt_count"])
            .and_then(|b| b.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()))
            .map(u64::from_le_bytes);
        if let Some(n) = attempt {
            let mut lost = self.get_property(vec![LOST_PROPERTY]).unwrap_or_default();
            if !lost.is_empty() {
                lost.push(b',');
            }
            lost.extend_from_slice(n.to_string().as_bytes());
            self.set_property(vec![LOST_PROPERTY], Some(&lost));
        }
    }

    /// The answer to an attempt sent without its target's token: unless the target served
    /// it anyway, it becomes the error the missing token stands for (503 with Retry-After),
    /// which Envoy's router retries on the pool's next target, and which the caller gets
    /// (in the filter's shape, not the target's 401) when no target is left. The target's
    /// health is not touched: its credential failed, not the target (the token slot records
    /// that, and the listener filter leaves the target out while it lasts).
    fn tokenless_answer(&mut self, error: &FilterError) -> Action {
        let served = self
            .get_http_response_header_bytes(":status")
            .is_some_and(|s| s.first() == Some(&b'2'));
        if served {
            self.released = true;
            return Action::Continue;
        }
        self.set_http_response_header(":status", Some(&error.status.to_string()));
        self.set_http_response_header("content-length", None);
        for (name, value) in error.headers() {
            self.set_http_response_header(name, Some(&value));
        }
        self.replace_body = Some(error.body());
        self.count_attempt_as(TOKENLESS_LABEL);
        log::warn!(
            "azure-llm-filter (upstream): attempt on `{}` had no token ({}): answered {} for the router to retry",
            self.attempt.as_ref().map_or("?", |a| a.backend.as_str()),
            error.code,
            error.status
        );
        Action::Continue
    }
}

/// A `:status` value's number (0 if it is not three digits).
fn parse_status(s: &[u8]) -> u32 {
    match s {
        [a, b, c] if s.iter().all(u8::is_ascii_digit) => {
            u32::from(a - b'0') * 100 + u32::from(b - b'0') * 10 + u32::from(c - b'0')
        }
        _ => 0,
    }
}

/// `azure_llm_target_attempts` outcome of an attempt that went without its target's token.
pub const TOKENLESS_LABEL: &str = "no_token";

impl Context for UpstreamFilter {
    fn on_done(&mut self) -> bool {
        // (An attempt the root context resumed with its token and that then got no answer is
        // not recorded: this filter cannot tell it from one the root context refused.)
        if self.released && !self.answered {
            self.unanswered();
        }
        true
    }
}

impl HttpContext for UpstreamFilter {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let config = self.state.borrow().config.clone();
        let (plan, index, handover) = match self.plan(&config) {
            Ok(p) => p,
            Err(e) => return self.fail(&e),
        };
        // The listener filter rewrote the request for the first target it tries: an attempt
        // there needs no header of its own (the common case: nothing fails over).
        let rewrite = handover.rewritten_for != Some(index);
        if rewrite {
            self.rewrite_headers(&config, &plan);
        }
        self.attempt = Some(Attempt {
            backend: plan.backend.name.clone(),
            health_key: failover::health_key(&plan.backend.name, plan.deployment),
            credential: plan.backend.credential,
            rewrite,
            clean: handover.is_clean(index),
            // A multipart form (audio) is passed on as it is, like the listener filter does.
            body_model: plan
                .body_model
                .filter(|_| !handover.op.is_multipart())
                .map(str::to_string),
        });
        if self
            .attempt
            .as_ref()
            .is_some_and(|a| a.body_model.is_some())
            && !end_of_stream
        {
            // The body's model is this target's deployment: hold the headers until the body
            // (replayed by Envoy) is rewritten and its length is known.
            self.set_http_request_header("content-length", None);
            self.body_pending = true;
            return Action::Pause;
        }
        self.release(&config)
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !self.body_pending {
            // Body callbacks come while the headers wait for a token: hold them too, or the
            // attempt would leave without its token (until the root context resumed it).
            if self.token_pending {
                let waiting = self
                    .state
                    .try_borrow()
                    .map_or(true, |s| s.is_waiting(self.context_id));
                if waiting {
                    return Action::Pause;
                }
                self.token_pending = false;
            }
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        self.body_pending = false;
        let config = self.state.borrow().config.clone();
        let model = self.attempt.as_ref().and_then(|a| a.body_model.clone());
        if let Some(model) = model {
            let body = self.get_http_request_body(0, body_size).unwrap_or_default();
            match routing::set_body_model(&body, &model) {
                Ok(Some(new_body)) => {
                    self.set_http_request_body(0, body_size, &new_body);
                    self.set_http_request_header(
                        "content-length",
                        Some(&new_body.len().to_string()),
                    );
                }
                Ok(None) => {
                    self.set_http_request_header("content-length", Some(&body.len().to_string()));
                }
                Err(e) => return self.fail(&e),
            }
        }
        self.release(&config)
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.answered = true;
        if self.tokenless.is_none() && self.token_pending {
            // Resumed by the root context: with its token, or without (`fail_waiter`).
            self.tokenless = self
                .state
                .try_borrow_mut()
                .ok()
                .and_then(|mut s| s.take_tokenless(self.context_id));
        }
        if let Some(error) = self.tokenless.clone() {
            return self.tokenless_answer(&error);
        }
        if !self.released {
            // This filter's own answer (a refusal, a token that never came), or an attempt
            // the root context resumed with its token: only the latter is the target's.
            let from_target = self
                .get_property(vec!["response", "code_details"])
                .is_some_and(|d| d == b"via_upstream");
            if !from_target {
                return Action::Continue;
            }
            self.released = true;
        }
        let Some(attempt) = &self.attempt else {
            return Action::Continue;
        };
        // As bytes: the SDK's string readers panic on a value that is not UTF-8 (a VM abort).
        let header = |name: &str| {
            self.get_http_response_header_bytes(name)
                .and_then(|v| String::from_utf8(v).ok())
        };
        let status = self
            .get_http_response_header_bytes(":status")
            .map_or(0, |s| parse_status(&s));
        let wait = if status == 429 {
            failover::retry_after_ms(
                header("retry-after-ms").as_deref(),
                header("retry-after").as_deref(),
            )
        } else {
            None
        };
        let outcome = Outcome::of_status(status, wait);
        // A healthy answer of a healthy target changes nothing; an answer is final, so the
        // listener filter counts it.
        if outcome == Outcome::Answered && attempt.clean {
            return Action::Continue;
        }
        let config = self.state.borrow().config.clone();
        pool::record(&attempt.health_key, outcome, now_ms(), &config.failover);
        if outcome != Outcome::Answered {
            self.count_attempt(outcome);
            self.report_failure();
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(body) = &self.replace_body else {
            return Action::Continue;
        };
        if !end_of_stream {
            return Action::Pause;
        }
        let body = body.clone();
        self.set_http_response_body(0, body_size, body.as_bytes());
        Action::Continue
    }
}

impl Drop for UpstreamFilter {
    fn drop(&mut self) {
        // An attempt that goes away while waiting (caller gone, per-try timeout) must not be
        // resumed later.
        if let Ok(mut s) = self.state.try_borrow_mut() {
            s.forget_context(self.context_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_status;

    #[test]
    fn status_numbers() {
        assert_eq!(parse_status(b"200"), 200);
        assert_eq!(parse_status(b"429"), 429);
        assert_eq!(parse_status(b"503"), 503);
        assert_eq!(parse_status(b"20"), 0);
        assert_eq!(parse_status(b"2000"), 0);
        assert_eq!(parse_status(b"2a0"), 0);
        assert_eq!(parse_status(b""), 0);
    }
}
