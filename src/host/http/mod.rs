//! HTTP context: one per request. Its life is a pipeline of phases, one module each, called
//! from the proxy-wasm callbacks below:
//!
//! | phase        | module            | callback                         |
//! |--------------|-------------------|----------------------------------|
//! | authenticate | `authenticate`    | request headers                  |
//! | route        | `route`           | request headers, or request body |
//! | guard        | `guard`           | request body (local rules); after admission (Content Safety callouts, answered in `on_http_call_response`) |
//! | admit        | `admit`, `global` | after routing (global: gRPC answer) |
//! | forward      | `forward`         | after admission                  |
//! | pool         | `pool`            | routing, forward and the answer of a failover pool |
//! | credential   | `credential`      | after forwarding headers are set |
//! | meter        | `meter`, `strip`  | response headers and body        |
//! | charge       | `charge`          | end of the answer, or on_log     |
//!
//! Every decision is made by the host-free modules (`crate::routing`, `crate::ratelimit`,
//! `crate::rls`, `crate::meter`, `crate::auth`); the phases here call the host and keep the
//! request's state in `HttpFilter`.

mod admit;
mod authenticate;
mod charge;
mod credential;
mod forward;
mod global;
mod guard;
mod guard_answer;
mod meter;
mod observe;
mod pool;
mod route;
mod strip;

use super::headers;
use super::limits::Taken;
use super::metrics::Family;
use super::phase::{self, Phase};
use super::tokens;
use super::worker::WorkerState;
use crate::config::Config;
use crate::errors::{Dialect, FilterError};
use crate::estimate::Estimate;
use crate::header_map::HeaderMap;
use crate::meter::Meter;
use crate::ratelimit::Standing;
use crate::routing::config::RoutingMode;
use crate::routing::{self, Inbound, Operation, RoutePlan};
use crate::usage_chunk::UsageChunkStripper;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use std::cell::RefCell;
use std::rc::Rc;

/// A request waiting for its body.
struct PendingBody {
    op: Operation,
    /// Model named by the path or the model header, which wins over the body's.
    known_model: Option<String>,
}

/// Who is calling, until caller authentication names workloads.
const ANONYMOUS_WORKLOAD: &str = "anonymous";

/// One request's state, filled in phase by phase.
pub struct HttpFilter {
    context_id: u32,
    state: Rc<RefCell<WorkerState>>,
    /// The request headers as the caller sent them (read once, in the header phase; the
    /// later phases look here instead of asking the host again).
    request_headers: Rc<HeaderMap>,
    /// route: the request waits for its body.
    pending: Option<PendingBody>,
    /// Set once the filter answered the request itself.
    answered: bool,
    /// authenticate: the caller's workload.
    workload: String,
    /// admit: what this request holds in its rate-limit counters, and their standing at
    /// admission (its reservation included).
    taken: Vec<Taken>,
    standings: Vec<Standing>,
    /// global: the estimate the rate limit service was asked about (what the fail-safe charge
    /// reports there).
    global_estimate: u64,
    /// admit: the completion limit the request set, when its answer teaches the workload's
    /// learned allowance (src/allowance.rs); learned from at the charge.
    teaches: Option<Option<u64>>,
    /// meter: the answer's headers (read once), how the answer's usage is read; its status;
    /// whether its body reached its end.
    response_headers: Rc<HeaderMap>,
    meter: Meter,
    response_status: Option<u32>,
    answer_complete: bool,
    /// charge: done (once per request).
    charged: bool,
    /// forward: (model, backend) of a routed request, for metrics and access-log properties.
    routed: Option<(String, String)>,
    /// global: the request is paused for the rate limit service's answers (tokens, money);
    /// it then needs a token of this credential.
    global_check: Option<global::GlobalCheck>,
    /// global: the estimate's cost (pico-units) the cost domain was asked about.
    global_cost_estimate: Option<u64>,
    /// `access_log_properties` of the config this request started with.
    access_log_properties: bool,
    /// pool: set when the model is served by a failover pool.
    pool: Option<pool::PoolRequest>,
    /// The error shape of the API called (Anthropic's on the Messages routes).
    dialect: Dialect,
    /// meter: the filter asked Azure for stream usage the caller did not ask for; the
    /// usage-only chunk this causes is taken out of the answer.
    strip_usage_chunk: Option<UsageChunkStripper>,
    /// observe: timings and what the usage record keeps until charge time.
    observed: observe::Observed,
    /// guard: the workload's guardrail policy and what it found (None: no policy applies).
    guard: Option<Box<guard::GuardState>>,
}

impl HttpFilter {
    pub fn new(context_id: u32, state: Rc<RefCell<WorkerState>>) -> HttpFilter {
        let access_log_properties = state
            .try_borrow()
            .map_or(true, |s| s.config.access_log_properties);
        HttpFilter {
            access_log_properties,
            context_id,
            state,
            request_headers: Rc::default(),
            response_headers: Rc::default(),
            pending: None,
            answered: false,
            workload: ANONYMOUS_WORKLOAD.to_string(),
            taken: Vec::new(),
            standings: Vec::new(),
            global_estimate: 0,
            teaches: None,
            meter: Meter::None,
            response_status: None,
            answer_complete: false,
            charged: false,
            routed: None,
            global_check: None,
            global_cost_estimate: None,
            pool: None,
            dialect: Dialect::OpenAi,
            strip_usage_chunk: None,
            observed: observe::Observed::default(),
            guard: None,
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
        if error.dialect == self.dialect {
            tokens::send_error(error);
        } else {
            tokens::send_error(&error.clone().in_dialect(self.dialect));
        }
        Action::Pause
    }

    /// Leaves per-request data in filter state for access logs:
    /// `%FILTER_STATE(wasm.<name>:PLAIN)%`, unless the config turned that off.
    fn property(&self, name: &str, value: &[u8]) {
        if self.access_log_properties {
            let _phase = phase::enter(Phase::Properties);
            self.set_property(vec![name], Some(value));
        }
    }

    /// The request's headers are paused for something other than its body: its token (the
    /// root context resumes it), the rate limit service's answer or Content Safety's (this
    /// context resumes it when they come).
    fn held(&self) -> bool {
        self.global_check.is_some()
            || self.guard.as_ref().is_some_and(|g| g.waits_for_service())
            || self
                .state
                .try_borrow()
                .map_or(true, |s| s.is_waiting(self.context_id))
    }

    fn count(&self, family: Family, label: &'static str) {
        if let Ok(mut s) = self.state.try_borrow_mut() {
            s.metrics.count_fixed(family, label);
        }
    }

    /// The spine of a routed request, once its plan is known: admit (local limits: the
    /// request's `estimate` is reserved), forward (upstream headers), then the global limit if
    /// configured (it pauses for the rate limit service, whose answer continues in `global`),
    /// then the credential (token attached, or the request pauses until the root context has
    /// one).
    fn dispatch(
        &mut self,
        config: &Config,
        plan: &RoutePlan,
        estimate: &Estimate,
    ) -> Result<Action, FilterError> {
        self.admit(config, plan, estimate)?;
        // The guardrails' service checks: the request pauses for Content Safety, then goes on
        // in `proceed` (src/host/http/guard.rs).
        if let Some(paused) = self.check_prompt_with_service(config, plan, estimate)? {
            return Ok(paused);
        }
        self.proceed(config, plan, estimate)
    }

    /// The rest of the spine after admission (and the guardrails' service checks): forward,
    /// the global limit if configured, the credential.
    fn proceed(
        &mut self,
        config: &Config,
        plan: &RoutePlan,
        estimate: &Estimate,
    ) -> Result<Action, FilterError> {
        self.forward(config, plan);
        let credential = plan.backend.credential;
        if let Some(global) = &config.rate_limits.global {
            let _phase = phase::enter(Phase::Global);
            let limits = &config.rate_limits;
            let learned =
                self.learned_completions(estimate, plan.model, limits.learn_completion_reserve);
            let configured = limits.completion_reserve_tokens;
            let allowance = match &learned {
                Some(c) if limits.learn_completion_reserve => c.allowance(configured),
                _ => configured,
            };
            self.global_estimate = estimate.tokens(allowance);
            if global.cost_domain.is_some() {
                // Configuration requires every model's price with a cost domain.
                self.global_cost_estimate = config
                    .pricing
                    .as_ref()
                    .and_then(|p| p.price(plan.model))
                    .map(|price| estimate.cost_for_limit(allowance, price, u64::MAX));
            }
            return self.check_global(global, plan.model, credential);
        }
        self.attach_credential(config, credential)
    }
}

impl Context for HttpFilter {
    /// The rate limit service's answer to this request's check (global mode).
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        let _phase = phase::enter(Phase::Global);
        self.global_answered(token_id, status_code, response_size);
    }

    /// Content Safety's answer to one of this request's guardrail checks.
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        self.guard_answered(token_id, body_size);
    }
}

impl HttpFilter {
    /// The answer's end, seen in its bytes or as the end of its body, settles it at once: a
    /// client may close as soon as it has read the terminal event, before the end of the body
    /// reaches Envoy (the OpenAI SDKs stop at `data: [DONE]`), and that is no cut stream.
    fn answer_settled(&mut self, end_of_stream: bool) {
        if end_of_stream || self.meter.ended() {
            self.answer_complete = true;
            self.charge();
        }
    }
}

impl HttpContext for HttpFilter {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        // The headers are read once, for every phase: counted as authenticate's.
        let _phase = phase::enter(Phase::Authenticate);
        let config = self.state.borrow().config.clone();
        // One host call for every header the phases read: each call that returns data has
        // Envoy call back into the VM to allocate it.
        let headers = Rc::new(headers::request());
        self.request_headers = headers.clone();
        let method = headers.get(":method").unwrap_or_default();
        let path = headers.get(":path").unwrap_or_default();
        let classified = routing::classify(method, path);
        if let Ok(Some(Inbound::Api { op, .. })) = &classified {
            self.dialect = op.dialect();
        }
        // Authenticate what the filter serves, before the credentials are removed.
        let authenticated = match &classified {
            Ok(Some(_)) if config.auth.is_some() => Some(self.authenticate(&headers)),
            _ => None,
        };
        self.strip_caller_headers(&config, &headers);

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
        {
            let _phase = phase::enter(Phase::Observe);
            self.observe_start(op);
        }
        // Known from here on, for the access log of refusals too.
        self.property("azure_llm_workload", self.workload.as_bytes());
        let known_model = path_model.or_else(|| route::header_model(&config, &headers));
        if config.routing_mode == RoutingMode::Header || end_of_stream {
            return self
                .route_from_headers(&config, op, known_model.as_deref(), end_of_stream)
                .unwrap_or_else(|e| self.reply_error(&e));
        }
        self.wait_for_body(&config, &headers, op, known_model)
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.answered {
            return Action::Pause;
        }
        if self.pending.is_none() && self.held() {
            // Routed in the header phase, and its headers wait: with
            // `allow_on_headers_stop_iteration: true` Envoy still hands over the body, and
            // letting it through would send the held headers too, before the token (or the
            // verdict) is there. The body is buffered until the request is resumed.
            return Action::Pause;
        }
        self.body_arrived(body_size, end_of_stream)
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        if self.answered || self.routed.is_none() {
            return Action::Continue;
        }
        self.meter_response_headers();
        if self.pool.is_some() {
            let _phase = phase::enter(Phase::Pool);
            self.pool_answered();
        }
        self.strip_response_headers();
        self.answer_complete = end_of_stream;
        if !end_of_stream && self.guard_answer_start() {
            // A JSON answer is held until the guardrails checked it.
            return Action::Pause;
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.guard_holds_answer() {
            return self.guard_held_body(body_size, end_of_stream);
        }
        if self.guard_holds_stream_end() {
            // Past the terminal event: nothing left to meter or check.
            self.answer_settled(end_of_stream);
            return self.guard_held_stream_end(body_size);
        }
        // One read of the chunk for every phase that looks at its bytes.
        let chunk = self.answer_chunk(body_size).unwrap_or_default();
        self.meter_chunk(&chunk);
        let size = self.strip_response_body(&chunk, body_size, end_of_stream);
        self.answer_settled(end_of_stream);
        if self.guard_watches_stream() {
            return self.guard_stream_body(size, end_of_stream);
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        // A request that ends otherwise (the caller hung up before the answer's end, the
        // stream was reset) is charged here, the fail-safe way (src/settlement.rs).
        self.charge();
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
