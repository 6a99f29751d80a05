//! HTTP context: one per request. Strips caller credentials, answers discovery, finds the
//! model (path, header or body), rewrites `:authority` / `:path` / the routing header (and the
//! body where the backend needs it) and adds the backend's Entra token, pausing the request
//! while the token is fetched.

use super::limits;
use super::metrics::Family;
use super::now_ms;
use super::tokens::{self, TokenLookup};
use super::worker::{Waiter, WorkerState};
use crate::auth::AuthError;
use crate::config::{Config, RoutingMode};
use crate::discovery;
use crate::errors::FilterError;
use crate::metrics;
use crate::ratelimit::{self, Counter, Standing};
use crate::rls::{self, CheckOutcome};
use crate::routing::{self, Inbound, Operation, RoutePlan};
use crate::usage::{self, SseUsageScanner, Usage};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

/// Caller credentials that must never reach Azure: the filter authenticates to Azure itself.
const CALLER_CREDENTIAL_HEADERS: [&str; 3] = ["authorization", "api-key", "x-api-key"];

/// The first value of header `name` (names compared case-insensitively).
fn first_header<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// A request waiting for its body.
struct PendingBody {
    op: Operation,
    /// Model named by the path or the model header, which wins over the body's.
    known_model: Option<String>,
}

/// How the response's usage is read.
enum UsageReader {
    None,
    /// A JSON answer, copied as it passes (bounded) and parsed at its end.
    Json(Vec<u8>),
    /// A server-sent event stream, scanned chunk by chunk.
    Sse(SseUsageScanner),
}

/// Largest JSON answer whose usage is read (bigger answers are embeddings of huge batches;
/// their usage is then not charged, and a warning says so).
const MAX_JSON_USAGE_BODY: usize = 8 * 1024 * 1024;

/// Who is calling, until caller authentication names workloads.
const ANONYMOUS_WORKLOAD: &str = "anonymous";

pub struct HttpFilter {
    context_id: u32,
    state: Rc<RefCell<WorkerState>>,
    pending: Option<PendingBody>,
    /// Set once the filter answered the request itself.
    answered: bool,
    workload: String,
    /// Rate-limit counters of this request and their standing at admission.
    counters: Vec<Counter>,
    standings: Vec<Standing>,
    usage: UsageReader,
    charged: bool,
    /// (model, backend) of a routed request, for metrics and access-log properties.
    routed: Option<(String, String)>,
    /// The request is paused for the rate limit service's answer; it then needs a token of
    /// this credential.
    global_check: Option<usize>,
    /// `access_log_properties` of the config this request started with.
    access_log_properties: bool,
}

/// gRPC UNAVAILABLE: what a call that could not even be dispatched amounts to.
const GRPC_UNAVAILABLE: u32 = 14;

impl HttpFilter {
    pub fn new(context_id: u32, state: Rc<RefCell<WorkerState>>) -> HttpFilter {
        let access_log_properties = state
            .try_borrow()
            .map_or(true, |s| s.config.access_log_properties);
        HttpFilter {
            access_log_properties,
            context_id,
            state,
            pending: None,
            answered: false,
            workload: ANONYMOUS_WORKLOAD.to_string(),
            counters: Vec::new(),
            standings: Vec::new(),
            usage: UsageReader::None,
            charged: false,
            routed: None,
            global_check: None,
        }
    }

    fn reply_error(&mut self, error: &FilterError) -> Action {
        self.answered = true;
        self.count(Family::Requests, error.code);
        log::debug!(
            "azure-llm-filter: answering {} ({})",
            error.status,
            error.code
        );
        tokens::send_error(error);
        Action::Pause
    }

    fn reply_json(&mut self, body: &str) -> Action {
        self.answered = true;
        self.count(Family::Requests, "discovery");
        self.send_http_response(
            200,
            vec![("content-type", "application/json")],
            Some(body.as_bytes()),
        );
        Action::Pause
    }

    fn discovery(&mut self, config: &Config, inbound: &Inbound) -> Action {
        match inbound {
            Inbound::ListModels => self.reply_json(&discovery::list_models(config)),
            Inbound::ListDeployments => self.reply_json(&discovery::list_deployments(config)),
            Inbound::GetDeployment(name) => match discovery::get_deployment(config, name) {
                Ok(body) => self.reply_json(&body),
                Err(e) => self.reply_error(&e),
            },
            Inbound::Api { .. } => Action::Continue,
        }
    }

    /// Checks the caller's credential. `Ok(None)`: anonymous (authentication optional).
    fn authenticate(
        &mut self,
        headers: &[(String, String)],
    ) -> Result<Option<String>, FilterError> {
        let values = |name: &str| -> Vec<&str> {
            headers
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
                .collect()
        };
        let authorization = values("authorization");
        let mut api_keys = values("api-key");
        api_keys.extend(values("x-api-key"));
        let state_rc = self.state.clone();
        let mut state = state_rc.borrow_mut();
        let Some(authn) = state.auth.as_mut() else {
            return Ok(None);
        };
        // Envoy's attribute for the first URI SAN of the downstream peer's certificate: with
        // mTLS (Istio), the caller's SPIFFE identity. Read only when the config can use it.
        let mtls_peer = if authn.config().mtls_peers.is_empty() {
            None
        } else {
            self.get_property(vec!["connection", "uri_san_peer_certificate"])
                .and_then(|b| String::from_utf8(b).ok())
        };
        match authn.authenticate(&authorization, &api_keys, mtls_peer.as_deref(), now_ms()) {
            Ok(caller) => Ok(caller.map(|c| c.workload)),
            Err(e) => {
                log::debug!("azure-llm-filter: caller refused: {}", e.code());
                state.metrics.count(metrics::jwt_rejections(e.code()), 1);
                if let AuthError::UnknownKid { provider } = e {
                    if let Some(flag) = state.jwks_unknown_kid.get_mut(provider) {
                        *flag = true;
                    }
                    tokens::request_tick_now(&mut state);
                }
                let mut err = e.to_filter_error();
                if let Some(v) = e.www_authenticate() {
                    err.extra_headers.push(("www-authenticate", v));
                }
                Err(err)
            }
        }
    }

    fn header_model(config: &Config, headers: &[(String, String)]) -> Option<String> {
        let name = config.model_header.as_deref()?;
        first_header(headers, name)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    }

    /// Admits the request against its workload's limits (429 rate / 403 quota).
    fn admit(
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

    /// Sets the upstream headers of a plan and attaches the token (or pauses for it).
    fn dispatch(
        &mut self,
        config: &Config,
        plan: &RoutePlan,
        body_len: usize,
    ) -> Result<Action, FilterError> {
        self.admit(config, plan, body_len)?;
        self.routed = Some((plan.model.to_string(), plan.backend.name.clone()));
        // Per-request data for access logs: %FILTER_STATE(wasm.azure_llm_<name>:PLAIN)%.
        for (name, value) in [
            ("azure_llm_model", plan.model),
            ("azure_llm_backend", plan.backend.name.as_str()),
            ("azure_llm_deployment", plan.deployment),
        ] {
            self.property(name, value.as_bytes());
        }
        self.set_http_request_header(":authority", Some(&plan.backend.host));
        self.set_http_request_header(":path", Some(&plan.path));
        self.set_http_request_header(&config.routing_header, Some(&plan.backend.name));
        for (name, value) in &plan.backend.headers {
            self.set_http_request_header(name, Some(value));
        }
        for (name, value) in &plan.default_headers {
            if self.get_http_request_header(name).is_none() {
                self.set_http_request_header(name, Some(value));
            }
        }
        let credential = plan.backend.credential;
        if let Some(global) = &config.rate_limits.global {
            return self.check_global(global, plan.model, credential);
        }
        self.forward(config, credential)
    }

    /// The request is admitted: attach the credential's token, or pause until it comes.
    fn forward(&mut self, config: &Config, credential: usize) -> Result<Action, FilterError> {
        self.count(Family::Requests, "routed");
        let now = now_ms();
        let mut state = self.state.borrow_mut();
        match tokens::token_for_request(&mut state, credential, now) {
            TokenLookup::Ready(authorization) => {
                drop(state);
                self.set_http_request_header("authorization", Some(&authorization));
                Ok(Action::Continue)
            }
            TokenLookup::Wait => {
                log::debug!(
                    "azure-llm-filter: request {} waits for a token",
                    self.context_id
                );
                state.waiters.push(Waiter {
                    context_id: self.context_id,
                    credential,
                    deadline_ms: now + config.token_wait_timeout_ms,
                });
                Ok(Action::Pause)
            }
            TokenLookup::Unavailable(e) => Err(e),
        }
    }

    /// Global mode: asks the rate limit service whether the workload's budget allows the
    /// request, and pauses it until the answer (`on_grpc_call_response`). The call belongs to
    /// this request, so a caller that goes away cancels it.
    fn check_global(
        &mut self,
        global: &rls::Global,
        model: &str,
        credential: usize,
    ) -> Result<Action, FilterError> {
        let call = global.check_call(&self.workload, model);
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
                self.forward(&config, credential)
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

    /// Header-phase routing: the model is in the path or the model header.
    fn route_without_body(
        &mut self,
        config: &Config,
        op: Operation,
        model: &str,
        body_len: usize,
    ) -> Result<Action, FilterError> {
        let plan = routing::plan(config, op, model)?;
        if let Some(deployment) = plan.body_model {
            // The body cannot be rewritten without reading it: the name the caller uses must
            // already be the deployment name.
            if deployment != model {
                return Err(FilterError::bad_request(
                    "alias_needs_body_routing",
                    format!(
                        "in header routing mode call this model by its deployment name `{deployment}`"
                    ),
                ));
            }
        }
        self.dispatch(config, &plan, body_len)
    }

    /// Body-phase routing: reads the model from the body, rewrites the body if the backend
    /// needs it, then dispatches.
    fn route_with_body(
        &mut self,
        config: &Config,
        pending: &PendingBody,
        body: &[u8],
    ) -> Result<Action, FilterError> {
        let op = pending.op;
        if op.is_multipart() {
            let content_type = self
                .get_http_request_header("content-type")
                .unwrap_or_default();
            let model = pending
                .known_model
                .clone()
                .or_else(|| routing::multipart_model(&content_type, body))
                .ok_or_else(missing_model)?;
            return self.route_without_body(config, op, &model, body.len());
        }
        let info = routing::read_body(body)?;
        let model = pending
            .known_model
            .clone()
            .or(info.model.clone())
            .ok_or_else(missing_model)?;
        let plan = routing::plan(config, op, &model)?;
        let include_usage = routing::wants_include_usage(op, plan.backend, &info);
        // A body that already names the backend's model needs no rewrite for it.
        let set_model = plan
            .body_model
            .filter(|m| info.model.as_deref() != Some(*m));
        if let Some(new_body) = routing::rewrite_body(body, set_model, include_usage)? {
            self.set_http_request_body(0, body.len(), &new_body);
            // Headers are still held, so the length can be corrected before they leave.
            self.set_http_request_header("content-length", Some(&new_body.len().to_string()));
        }
        self.dispatch(config, &plan, body.len())
    }
}

fn missing_model() -> FilterError {
    FilterError::bad_request("missing_model", "the request must name a `model`")
}

impl Context for HttpFilter {
    /// The rate limit service's answer to this request's check (global mode).
    fn on_grpc_call_response(&mut self, _token_id: u32, status_code: u32, response_size: usize) {
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
}

impl HttpContext for HttpFilter {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let config = self.state.borrow().config.clone();
        // One host call for every header this phase reads: each call that returns data has
        // Envoy call back into the VM to allocate it.
        let headers = self.get_http_request_headers();
        let method = first_header(&headers, ":method").unwrap_or_default();
        let path = first_header(&headers, ":path").unwrap_or_default();
        let classified = routing::classify(method, path);
        // Authenticate what the filter serves, before the credentials are removed.
        let authenticated = match &classified {
            Ok(Some(_)) if config.auth.is_some() => Some(self.authenticate(&headers)),
            _ => None,
        };
        // Whatever happens next, neither the caller's credentials nor a routing decision the
        // caller made up go any further (removing removes every value of a name).
        for name in CALLER_CREDENTIAL_HEADERS
            .iter()
            .copied()
            .chain([config.routing_header.as_str()])
        {
            if first_header(&headers, name).is_some() {
                self.set_http_request_header(name, None);
            }
        }

        let inbound = match classified {
            Ok(Some(i)) => i,
            Ok(None) => return Action::Continue,
            Err(e) => return self.reply_error(&e),
        };
        match authenticated {
            Some(Err(e)) => return self.reply_error(&e),
            Some(Ok(Some(workload))) => self.workload = workload,
            _ => {}
        }
        let Inbound::Api { op, path_model } = inbound else {
            return self.discovery(&config, &inbound);
        };
        // Known from here on, for the access log of refusals too.
        self.property("azure_llm_workload", self.workload.as_bytes());
        let known_model = path_model.or_else(|| Self::header_model(&config, &headers));
        if config.routing_mode == RoutingMode::Header || end_of_stream {
            let result = match &known_model {
                Some(model) => self.route_without_body(&config, op, model, 0),
                None if end_of_stream => Err(FilterError::bad_request(
                    "missing_body",
                    "this API needs a JSON request body naming a `model`",
                )),
                None => Err(FilterError::bad_request(
                    "missing_model",
                    "header routing mode needs the model in the path (/openai/deployments/{name}/...) or in the model header",
                )),
            };
            return result.unwrap_or_else(|e| self.reply_error(&e));
        }
        let limit = config.max_body_bytes;
        let declared =
            first_header(&headers, "content-length").and_then(|v| v.trim().parse::<usize>().ok());
        if declared.is_some_and(|n| n > limit) {
            return self.reply_error(&FilterError::too_large(limit));
        }
        self.pending = Some(PendingBody { op, known_model });
        self.state
            .borrow_mut()
            .watch_body(self.context_id, || now_ms() + config.body_wait_timeout_ms);
        // The model, hence the backend, is in the body: hold the headers until it is read.
        // This needs `allow_on_headers_stop_iteration: true` in the Wasm plugin config; the
        // body watch answers 500 if the body never comes because it is missing.
        Action::Pause
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.answered || self.routed.is_none() {
            return Action::Continue;
        }
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
            .unwrap_or_default()
            .to_ascii_lowercase();
        self.usage = if content_type.starts_with("text/event-stream") {
            UsageReader::Sse(SseUsageScanner::new())
        } else if content_type.contains("json") {
            UsageReader::Json(Vec::new())
        } else {
            UsageReader::None
        };
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if body_size > 0 && !matches!(self.usage, UsageReader::None) {
            // With Continue, the buffer holds just this chunk: read it as it passes.
            let chunk = self
                .get_http_response_body(0, body_size)
                .unwrap_or_default();
            match &mut self.usage {
                UsageReader::Json(body) => {
                    if body.len() + chunk.len() <= MAX_JSON_USAGE_BODY {
                        body.extend_from_slice(&chunk);
                    } else {
                        log::warn!("azure-llm-filter: answer too large to read its usage");
                        self.usage = UsageReader::None;
                    }
                }
                UsageReader::Sse(scanner) => scanner.feed(&chunk),
                UsageReader::None => {}
            }
        }
        if end_of_stream {
            self.charge();
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        // A stream cut short still pays for what it reported.
        self.charge();
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.answered {
            return Action::Pause;
        }
        let Some(pending) = self.pending.take() else {
            return Action::Continue;
        };
        self.state.borrow_mut().body_arrived(self.context_id);
        let config = self.state.borrow().config.clone();
        if body_size > config.max_body_bytes {
            return self.reply_error(&FilterError::too_large(config.max_body_bytes));
        }
        if !end_of_stream {
            self.pending = Some(pending);
            return Action::Pause; // buffer until the whole body is here
        }
        let body = self.get_http_request_body(0, body_size).unwrap_or_default();
        match self.route_with_body(&config, &pending, &body) {
            Ok(action) => action,
            Err(e) => self.reply_error(&e),
        }
    }
}

impl HttpFilter {
    /// Leaves per-request data in filter state for access logs:
    /// `%FILTER_STATE(wasm.<name>:PLAIN)%`, unless the config turned that off.
    fn property(&self, name: &str, value: &[u8]) {
        if self.access_log_properties {
            self.set_property(vec![name], Some(value));
        }
    }

    fn count(&self, family: Family, label: &'static str) {
        if let Ok(mut s) = self.state.try_borrow_mut() {
            s.metrics.count_fixed(family, label);
        }
    }

    /// Charges the answer's usage to the rate-limit counters, and records it in metrics and
    /// access-log properties. Once per request.
    fn charge(&mut self) {
        if self.charged || self.routed.is_none() {
            return;
        }
        self.charged = true;
        let usage: Option<Usage> = match &self.usage {
            UsageReader::None => None,
            UsageReader::Json(body) => usage::from_json(body),
            UsageReader::Sse(scanner) => scanner.usage(),
        };
        let Some(u) = usage else { return };
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

impl HttpFilter {
    /// Global mode: queues the charge of the real usage for the root context, which sends it
    /// on its next tick (at once). A call made from this context would be cancelled when the
    /// request ends, which is exactly when charges are made.
    fn charge_global(&mut self, tokens: u64) {
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
        if let Some(call) = global.charge_call(&self.workload, model, tokens) {
            state.rls_charges.push(call);
            tokens::request_tick_now(&mut state);
        }
    }
}

impl Drop for HttpFilter {
    fn drop(&mut self) {
        // A request that goes away while waiting must not be resumed later.
        if let Ok(mut s) = self.state.try_borrow_mut() {
            s.forget_context(self.context_id);
        }
    }
}
