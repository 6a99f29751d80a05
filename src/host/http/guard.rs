//! Phase guard (issue 26): the workload's guardrail policy on the prompt. In the body phase,
//! before admission, the local rules (`crate::guard::local`) run on the JSON body: a `block`
//! refuses the request with Azure's content-filter 400 before anything is reserved or sent,
//! a `mask` rewrites the body. The body that leaves is then the filter's own serialisation of
//! the document it checked, so what Azure parses is exactly what was checked (a body with
//! duplicate keys cannot show the checks one prompt and Azure another).
//!
//! After admission, Content Safety checks the (masked) prompt: Prompt Shields and text analysis
//! callouts are dispatched from this request's own context, in parallel, each bounded by the
//! policy's `timeout_ms`; the request pauses until they answer (`on_http_call_response`), then
//! goes on (`proceed`: forward, global, credential) or is refused (400 `content_filter`; its
//! reservation is released by the charge phase). Why from the HTTP context, not the root
//! context that makes the token and JWKS callouts: a check belongs to one request and is
//! worthless once the request is gone, so it should die with it (Envoy cancels a context's
//! callouts when the stream ends), and its answer arrives where the request's state and
//! continuation are. The Content Safety credential's token comes from the shared token cache;
//! the root context fetches it at start and refreshes it ahead of expiry, and a request that
//! finds none (before the first fetch, or in an Entra outage past expiry) takes the policy's
//! failure mode rather than waiting (a paused HTTP context cannot be woken by the root to
//! dispatch its own callouts; ARCHITECTURE.md).
//!
//! Without a policy for the workload nothing here runs: one lookup.

use super::HttpFilter;
use crate::config::Config;
use crate::errors::FilterError;
use crate::estimate::Estimate;
use crate::guard::config::{FailureMode, ServiceAuth};
use crate::guard::prompt::{self, PromptText};
use crate::guard::safety::{self, Api, Call, Outcome};
use crate::guard::verdict::{self, Check, Decision, Direction, Finding};
use crate::guard::{local, Policy};
use crate::host::now_ms;
use crate::host::tokens::{self, TokenLookup};
use crate::metrics;
use crate::multipart;
use crate::routing::{Operation, RoutePlan};
use crate::usage_record as record;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use std::rc::Rc;
use std::time::Duration;

/// A request's guardrail state (only for workloads with a policy).
pub(super) struct GuardState {
    pub(super) policy: Rc<Policy>,
    op: Operation,
    /// Everything the checks found, in order (metrics are counted as they are found).
    pub(super) findings: Vec<Finding>,
    /// The prompt's text for the service checks, from the body phase until admission.
    prompt: Option<PromptText>,
    /// Content Safety calls in flight: (callout token, operation, sent at ms).
    pub(super) in_flight: Vec<(u32, Api, u64)>,
    /// What is being checked: the prompt, or the answer.
    pub(super) checking: Direction,
    /// What the answers of the current check found (recorded when it is decided).
    pub(super) pending: Vec<Finding>,
    /// The current check could not be completed: why.
    pub(super) failed: Option<&'static str>,
    /// How a paused prompt check goes on: (operation, model, estimate).
    resume: Option<(Operation, String, Estimate)>,
    /// The answer checks' state (src/host/http/guard_answer.rs).
    pub(super) answer: Option<super::guard_answer::AnswerWatch>,
}

impl GuardState {
    pub(super) fn op(&self) -> Operation {
        self.op
    }

    /// The request is paused for Content Safety's verdict on its prompt.
    pub(super) fn waits_for_service(&self) -> bool {
        self.resume.is_some()
    }
}

impl HttpFilter {
    /// The workload's policy, if the config has guardrails and one applies.
    pub(super) fn guard_policy(&self, config: &Config) -> Option<Rc<Policy>> {
        config.guardrails.as_ref()?.policy(&self.workload).cloned()
    }

    /// Starts the request's guardrail state when a policy applies: the policy, if it checks
    /// prompts.
    fn guard_start(&mut self, config: &Config, op: Operation) -> Option<Rc<Policy>> {
        let policy = self.guard_policy(config)?;
        self.guard = Some(Box::new(GuardState {
            policy: policy.clone(),
            op,
            findings: Vec::new(),
            prompt: None,
            in_flight: Vec::new(),
            checking: Direction::Prompt,
            pending: Vec::new(),
            failed: None,
            resume: None,
            answer: None,
        }));
        policy.checks_prompt().then_some(policy)
    }

    /// The request's JSON body, before routing rewrites it: the local rules. `Ok(Some(body))`
    /// is the body to send instead (masked, and in any case re-serialised from what was
    /// checked); `Err` the refusal.
    pub(super) fn guard_prompt(
        &mut self,
        config: &Config,
        op: Operation,
        body: &[u8],
    ) -> Result<Option<Vec<u8>>, FilterError> {
        let Some(policy) = self.guard_start(config, op) else {
            return Ok(None);
        };
        let mut document: serde_json::Value = serde_json::from_slice(body).map_err(|_| {
            FilterError::bad_request("invalid_json", "request body is not a valid JSON object")
        })?;
        if prompt::has_token_ids(op, &document) {
            // No check reads token ids: the prompt would pass every one unread.
            return Err(FilterError::bad_request(
                "prompt_not_text",
                "the content policy of this workload checks prompts: send the prompt as text, not token ids",
            ));
        }
        let outcome = local::apply(&policy, &mut document);
        self.guard_found(outcome.findings);
        if outcome.blocked {
            return Err(self.guard_refusal(Direction::Prompt));
        }
        if policy.checks_prompt_with_service() {
            let text = prompt::extract(op, &document);
            if let Some(g) = self.guard.as_mut() {
                g.prompt = Some(text);
            }
        }
        serde_json::to_vec(&document).map(Some).map_err(|_| {
            FilterError::internal("rewrite_failed", "could not rewrite the request body")
        })
    }

    /// A multipart body (transcriptions, translations): its `prompt` field, the only text
    /// of the form the model reads, under the local rules (masked in place) and, after
    /// admission, Content Safety. `Ok(Some(body))`: the body to send instead.
    pub(super) fn guard_form(
        &mut self,
        config: &Config,
        op: Operation,
        content_type: &str,
        body: &[u8],
    ) -> Result<Option<Vec<u8>>, FilterError> {
        let Some(policy) = self.guard_start(config, op) else {
            return Ok(None);
        };
        let fields = multipart::text_fields(content_type, body, "prompt")
            .map_err(multipart::FormError::to_filter_error)?;
        let not_text = || {
            FilterError::bad_request(
                "prompt_not_text",
                "the content policy of this workload checks prompts: the form needs at most one `prompt` field, plain UTF-8 text without a file name or Content-Transfer-Encoding",
            )
        };
        let field = match fields.as_slice() {
            [] => return Ok(None),
            [one] => one,
            _ => return Err(not_text()),
        };
        let text = field.text.clone().ok_or_else(not_text)?;
        let mut value = serde_json::Value::String(text);
        let outcome = local::apply(&policy, &mut value);
        self.guard_found(outcome.findings);
        if outcome.blocked {
            return Err(self.guard_refusal(Direction::Prompt));
        }
        let text = value.as_str().unwrap_or_default().to_string();
        if policy.checks_prompt_with_service() {
            if let Some(g) = self.guard.as_mut() {
                g.prompt = Some(PromptText {
                    user: vec![text.clone()],
                    documents: Vec::new(),
                });
            }
        }
        if !outcome.changed {
            return Ok(None);
        }
        let mut masked = Vec::with_capacity(body.len());
        masked.extend_from_slice(body.get(..field.range.start).unwrap_or_default());
        masked.extend_from_slice(text.as_bytes());
        masked.extend_from_slice(body.get(field.range.end..).unwrap_or_default());
        // The masked form must read the same (a replacement that made a delimiter would not).
        match multipart::text_fields(content_type, &masked, "prompt") {
            Ok(again)
                if again.len() == 1
                    && again.first().and_then(|f| f.text.as_deref()) == Some(text.as_str()) =>
            {
                Ok(Some(masked))
            }
            _ => Err(self.guard_refusal(Direction::Prompt)),
        }
    }

    /// Records findings: counted now, listed in the usage record (`azure_llm_guardrail`).
    pub(super) fn guard_found(&mut self, found: Vec<Finding>) {
        if found.is_empty() {
            return;
        }
        if let Ok(mut s) = self.state.try_borrow_mut() {
            for f in &found {
                s.metrics.count(
                    metrics::guardrail(
                        f.direction.name(),
                        f.check.kind(),
                        f.check.category(),
                        f.decision.name(),
                    ),
                    1,
                );
            }
        }
        for f in &found {
            log::debug!(
                "azure-llm-filter: guardrail {} for workload `{}`",
                f.label(),
                self.workload
            );
        }
        let Some(guard) = self.guard.as_mut() else {
            return;
        };
        guard.findings.extend(found);
        let summary = verdict::record(&guard.findings);
        self.property(record::GUARDRAIL, summary.as_bytes());
    }

    /// The caller's refusal for what was blocked.
    pub(super) fn guard_refusal(&self, direction: Direction) -> FilterError {
        let findings = self.guard.as_ref().map_or(&[][..], |g| &g.findings[..]);
        verdict::refusal(direction, findings)
    }
}

impl HttpFilter {
    /// After admission: Content Safety on the prompt. `Some(Pause)` while its calls are out;
    /// `None` to go on at once (nothing to check, or the service failed open).
    pub(super) fn check_prompt_with_service(
        &mut self,
        config: &Config,
        plan: &RoutePlan,
        estimate: &Estimate,
    ) -> Result<Option<Action>, FilterError> {
        let Some(guard) = self.guard.as_mut() else {
            return Ok(None);
        };
        let Some(text) = guard.prompt.take() else {
            return Ok(None);
        };
        let policy = guard.policy.clone();
        if text.is_empty() {
            return Ok(None);
        }
        if text.chars() > policy.max_text_chars {
            return self
                .guard_failed(&policy, Direction::Prompt, "too_long")
                .map(|()| None);
        }
        let calls = safety::prompt_calls(&policy, &text);
        match self.guard_dispatch(config, &policy, Direction::Prompt, calls) {
            Ok(0) => Ok(None),
            Ok(_) => {
                if let Some(g) = self.guard.as_mut() {
                    g.resume = Some((g.op, plan.model.to_string(), *estimate));
                }
                Ok(Some(Action::Pause))
            }
            Err(why) => self
                .guard_failed(&policy, Direction::Prompt, why)
                .map(|()| None),
        }
    }

    /// The service could not check: fail open (recorded, the request goes on) or closed.
    pub(super) fn guard_failed(
        &mut self,
        policy: &Policy,
        direction: Direction,
        why: &'static str,
    ) -> Result<(), FilterError> {
        let (decision, result) = match policy.failure_mode {
            FailureMode::FailOpen => (Decision::FailedOpen, Ok(())),
            FailureMode::FailClosed if why == "too_long" => (
                Decision::FailedClosed,
                Err(FilterError::bad_request(
                    "content_filter_prompt_too_long",
                    format!(
                        "the prompt's text exceeds the {} characters the content policy checks",
                        policy.max_text_chars
                    ),
                )),
            ),
            FailureMode::FailClosed => (Decision::FailedClosed, Err(verdict::unavailable(why))),
        };
        log::warn!(
            "azure-llm-filter: guardrail check for workload `{}` not completed ({why}): {}",
            self.workload,
            decision.name()
        );
        self.guard_found(vec![Finding {
            direction,
            check: Check::Unavailable(why),
            decision,
        }]);
        result
    }

    /// Sends the calls; how many went out. Err: none could be made (no credential, no
    /// cluster), the check cannot be done.
    pub(super) fn guard_dispatch(
        &mut self,
        config: &Config,
        policy: &Policy,
        direction: Direction,
        calls: Vec<Call>,
    ) -> Result<usize, &'static str> {
        let Some(cs) = config
            .guardrails
            .as_ref()
            .and_then(|g| g.content_safety.as_ref())
        else {
            return Err("not_configured");
        };
        if calls.is_empty() {
            return Ok(0);
        }
        let (auth_name, auth_value) = match &cs.auth {
            ServiceAuth::KeyEnv(_) => {
                let key = self.state.borrow().guard_key.clone();
                ("ocp-apim-subscription-key", key.ok_or("no_key")?)
            }
            ServiceAuth::Credential(i) => {
                let mut state = self.state.borrow_mut();
                match tokens::token_for_request(&mut state, *i, now_ms()) {
                    TokenLookup::Ready(authorization) => ("authorization", authorization),
                    // A fetch has been asked for; this request does not wait for it.
                    TokenLookup::Wait | TokenLookup::Unavailable(_) => return Err("no_token"),
                }
            }
        };
        let timeout = Duration::from_millis(policy.timeout_ms);
        let mut sent = Vec::with_capacity(calls.len());
        for call in &calls {
            let path = call.api.path(&cs.api_version);
            let headers = vec![
                (":method", "POST"),
                (":path", path.as_str()),
                (":authority", cs.host.as_str()),
                ("content-type", "application/json"),
                (auth_name, auth_value.as_str()),
            ];
            match self.dispatch_http_call(
                &cs.cluster,
                headers,
                Some(call.body.as_bytes()),
                vec![],
                timeout,
            ) {
                Ok(token) => sent.push((token, call.api, now_ms())),
                Err(status) => {
                    log::warn!(
                        "azure-llm-filter: cannot call Content Safety on cluster `{}` ({status:?}): is the cluster defined?",
                        cs.cluster
                    );
                    // The calls already out are ignored when they answer.
                    return Err("unreachable");
                }
            }
        }
        let n = sent.len();
        if let Some(g) = self.guard.as_mut() {
            if g.in_flight.is_empty() {
                // A new check (a stream's windows add to the one under way).
                g.pending.clear();
                g.failed = None;
            }
            g.checking = direction;
            g.in_flight.extend(sent);
        }
        Ok(n)
    }

    /// One Content Safety answer.
    pub(super) fn guard_answered(&mut self, token: u32, body_size: usize) {
        let Some(guard) = self.guard.as_mut() else {
            return;
        };
        let Some(at) = guard.in_flight.iter().position(|(t, _, _)| *t == token) else {
            return;
        };
        let (_, api, sent_ms) = guard.in_flight.remove(at);
        let policy = guard.policy.clone();
        let direction = guard.checking;
        let status = self
            .get_http_call_response_header(":status")
            .and_then(|s| s.trim().parse::<u32>().ok());
        let body = if body_size > 0 {
            self.get_http_call_response_body(0, body_size)
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        let outcome = safety::read(api, direction, &policy, status, &body);
        let result = match &outcome {
            Outcome::Checked(_) => "ok",
            Outcome::Failed(why @ ("timeout" | "unreachable"), _) => why,
            Outcome::Failed(..) => "error",
        };
        if let Ok(mut s) = self.state.try_borrow_mut() {
            s.metrics.histogram(
                metrics::guardrail_callout(api.name(), result),
                now_ms().saturating_sub(sent_ms),
            );
        }
        let Some(guard) = self.guard.as_mut() else {
            return;
        };
        match outcome {
            Outcome::Checked(found) => safety::merge(&mut guard.pending, found),
            Outcome::Failed(why, code) => {
                log::warn!(
                    "azure-llm-filter: Content Safety {} answered {status:?} ({}): {why}",
                    api.name(),
                    code.as_deref().unwrap_or("no error code")
                );
                guard.failed = guard.failed.or(Some(why));
            }
        }
        let blocked = guard
            .pending
            .iter()
            .any(|f| f.decision == Decision::Blocked);
        let closed = guard.failed.is_some() && policy.failure_mode == FailureMode::FailClosed;
        if blocked || closed || guard.in_flight.is_empty() {
            guard.in_flight.clear();
            match direction {
                Direction::Prompt => self.prompt_checked(&policy),
                Direction::Answer => self.answer_checked(&policy),
            }
        }
    }

    /// The prompt check is decided: refuse, or go on with the request.
    fn prompt_checked(&mut self, policy: &Policy) {
        let Some(guard) = self.guard.as_mut() else {
            return;
        };
        let found = std::mem::take(&mut guard.pending);
        let failed = guard.failed.take();
        let resume = guard.resume.take();
        let blocked = found.iter().any(|f| f.decision == Decision::Blocked);
        self.guard_found(found);
        if blocked {
            let e = self.guard_refusal(Direction::Prompt);
            self.reply_error(&e);
            return;
        }
        if let Some(why) = failed {
            if let Err(e) = self.guard_failed(policy, Direction::Prompt, why) {
                self.reply_error(&e);
                return;
            }
        }
        let Some((op, model, estimate)) = resume else {
            return;
        };
        let config = self.state.borrow().config.clone();
        let next = self
            .choose_plan(&config, op, &model)
            .and_then(|plan| self.proceed(&config, &plan, &estimate));
        match next {
            Ok(Action::Continue) => self.resume_http_request(),
            // Waits for the rate limit service or a token: resumed from there.
            Ok(_) => {}
            Err(e) => {
                self.reply_error(&e);
            }
        }
    }
}
