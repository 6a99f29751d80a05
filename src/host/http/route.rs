//! Phase route: discovery answers, and the model of an API request (path, model header or
//! body) → backend, deployment and upstream path; the body is rewritten where the backend
//! needs it. Ends by handing the plan to `dispatch` (admit → forward → credential).

use super::{HttpFilter, PendingBody};
use crate::config::Config;
use crate::discovery;
use crate::errors::FilterError;
use crate::estimate::Estimate;
use crate::header_map::HeaderMap;
use crate::host::metrics::Family;
use crate::host::now_ms;
use crate::host::phase::{self, Phase};
use crate::routing::{self, Inbound, Operation};
use crate::usage_chunk::UsageChunkStripper;
use proxy_wasm::traits::HttpContext;
use proxy_wasm::types::Action;

/// The model named by the configured model header, if any.
pub(super) fn header_model(config: &Config, headers: &HeaderMap) -> Option<String> {
    let name = config.model_header.as_deref()?;
    headers
        .get(name)
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

fn missing_model() -> FilterError {
    FilterError::bad_request("missing_model", "the request must name a `model`")
}

impl HttpFilter {
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

    /// Discovery requests are answered from the config; API requests go on.
    pub(super) fn discovery(&mut self, config: &Config, inbound: &Inbound) -> Action {
        let _phase = phase::enter(Phase::Route);
        match inbound {
            Inbound::ListModels => self.reply_json(&discovery::list_models(config)),
            Inbound::ListDeployments => self.reply_json(&discovery::list_deployments(config)),
            Inbound::GetDeployment(name) => match discovery::get_deployment(config, name) {
                Ok(body) => self.reply_json(&body),
                Err(e) => self.reply_error(&e),
            },
            Inbound::GetModel(id) => match discovery::get_model(config, id) {
                Ok(body) => self.reply_json(&body),
                Err(e) => self.reply_error(&e),
            },
            Inbound::Api { .. } => Action::Continue,
        }
    }

    /// Routing in the header phase: header routing mode, or a request without a body.
    pub(super) fn route_from_headers(
        &mut self,
        config: &Config,
        op: Operation,
        known_model: Option<&str>,
        end_of_stream: bool,
    ) -> Result<Action, FilterError> {
        let _phase = phase::enter(Phase::Route);
        match known_model {
            Some(model) => {
                // The body passes unread: its declared length is the prompt estimate's base.
                let len = if config.rate_limits.is_empty() && config.rate_limits.global.is_none() {
                    0
                } else {
                    self.request_headers
                        .get("content-length")
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0)
                };
                self.route_without_body(config, op, model, &Estimate::new(op, len, None))
            }
            None if end_of_stream => Err(FilterError::bad_request(
                "missing_body",
                "this API needs a JSON request body naming a `model`",
            )),
            None => Err(FilterError::bad_request(
                "missing_model",
                "header routing mode needs the model in the path (/openai/deployments/{name}/...) or in the model header",
            )),
        }
    }

    /// The model, hence the backend, is in the body: hold the headers until it is read.
    /// This needs `allow_on_headers_stop_iteration: true` in the Wasm plugin config; the body
    /// watch (`crate::body_watch`) answers 500 while no body was ever delivered, and 408 to a
    /// body that stalls or never comes once bodies are known to flow.
    pub(super) fn wait_for_body(
        &mut self,
        config: &Config,
        headers: &HeaderMap,
        op: Operation,
        known_model: Option<String>,
    ) -> Action {
        let _phase = phase::enter(Phase::Route);
        let limit = config.max_body_bytes;
        let declared = headers
            .get("content-length")
            .and_then(|v| v.trim().parse::<usize>().ok());
        if declared.is_some_and(|n| n > limit) {
            return self.reply_error(&FilterError::too_large(limit));
        }
        self.pending = Some(PendingBody { op, known_model });
        self.state.borrow_mut().body_watch.watch(
            self.context_id,
            now_ms() + config.body_wait_timeout_ms,
            self.dialect,
        );
        Action::Pause
    }

    /// A request body chunk: buffered until the whole body is here, then routed.
    pub(super) fn body_arrived(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let _phase = phase::enter(Phase::Route);
        let Some(pending) = self.pending.take() else {
            return Action::Continue;
        };
        let config = self.state.borrow().config.clone();
        {
            // Bodies flow; the rest is due within the wait, or the caller stalled (408).
            let watch = &mut self.state.borrow_mut().body_watch;
            if end_of_stream {
                watch.progressed(self.context_id, 0);
                watch.done(self.context_id);
            } else {
                watch.progressed(self.context_id, now_ms() + config.body_wait_timeout_ms);
            }
        }
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

    /// Routing without a body to rewrite: the model is in the path, the model header, or a
    /// multipart body.
    fn route_without_body(
        &mut self,
        config: &Config,
        op: Operation,
        model: &str,
        estimate: &Estimate,
    ) -> Result<Action, FilterError> {
        let plan = self.choose_plan(config, op, model)?;
        // In a pool's cluster the upstream filter sets each attempt's body model.
        if let Some(deployment) = plan.body_model.filter(|_| !self.via_pool_cluster()) {
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
        self.dispatch(config, &plan, estimate)
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
            return self.route_multipart(config, pending, body);
        }
        let info = routing::read_body(body)?;
        let sent_len = body.len();
        // The guardrails' local rules: the body that leaves may be a masked one.
        let guarded = {
            let _phase = phase::enter(Phase::Guard);
            self.guard_prompt(config, op, body)?
        };
        let body: &[u8] = guarded.as_deref().unwrap_or(body);
        {
            let _phase = phase::enter(Phase::Observe);
            self.observe_prompt(config, body);
        }
        let model = pending
            .known_model
            .clone()
            .or(info.model.clone())
            .ok_or_else(missing_model)?;
        let plan = self.choose_plan(config, op, &model)?;
        let include_usage = routing::wants_include_usage(op, plan.backend, &info);
        // The caller did not ask for the usage chunk this adds: it is taken out again.
        self.strip_usage_chunk = include_usage.then(UsageChunkStripper::new);
        // A body that already names the backend's model needs no rewrite for it; in a pool's
        // cluster the upstream filter sets each attempt's own.
        let set_model = plan
            .body_model
            .filter(|m| info.model.as_deref() != Some(*m) && !self.via_pool_cluster());
        let rewritten = routing::rewrite_body(body, set_model, include_usage)?;
        if let Some(new_body) = rewritten.as_deref().or(guarded.as_deref()) {
            self.set_http_request_body(0, sent_len, new_body);
            // Headers are still held, so the length can be corrected before they leave.
            self.set_http_request_header("content-length", Some(&new_body.len().to_string()));
        }
        let estimate = Estimate::new(op, body.len(), info.requested_completion);
        self.dispatch(config, &plan, &estimate)
    }

    /// A multipart body (audio): its `model` field is read strictly (crate::multipart); the
    /// model the path or header names wins, but a backend that reads the model from the body
    /// must find the same one there, since this body is not rewritten.
    fn route_multipart(
        &mut self,
        config: &Config,
        pending: &PendingBody,
        body: &[u8],
    ) -> Result<Action, FilterError> {
        let op = pending.op;
        let headers = self.request_headers.clone();
        let content_type = headers.get("content-type").unwrap_or_default();
        let form_model = routing::multipart_model(content_type, body)?;
        let model = pending
            .known_model
            .clone()
            .or_else(|| form_model.clone())
            .ok_or_else(missing_model)?;
        let plan = routing::plan(config, op, &model)?;
        if let (Some(deployment), Some(form_model)) = (plan.body_model, &form_model) {
            if form_model != deployment {
                return Err(FilterError::bad_request(
                    "model_mismatch",
                    format!(
                        "the form's `model` field must name the deployment `{deployment}` of the model this request is routed to"
                    ),
                ));
            }
        }
        // The guardrails read the form's `prompt`; a masked one is sent instead.
        let guarded = {
            let _phase = phase::enter(Phase::Guard);
            self.guard_form(config, op, content_type, body)?
        };
        if let Some(new_body) = &guarded {
            self.set_http_request_body(0, body.len(), new_body);
            self.set_http_request_header("content-length", Some(&new_body.len().to_string()));
        }
        self.route_without_body(config, op, &model, &Estimate::new(op, body.len(), None))
    }
}
