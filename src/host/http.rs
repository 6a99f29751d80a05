//! HTTP context: one per request. Strips caller credentials, reads the model from the body,
//! rewrites `:authority` / `:path` / the routing header and adds the backend's Entra token,
//! pausing the request while the token is fetched.

use super::now_ms;
use super::tokens::{self, TokenLookup};
use super::worker::{Waiter, WorkerState};
use crate::errors::FilterError;
use crate::routing::{self, InboundApi};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use std::cell::RefCell;
use std::rc::Rc;

/// Caller credentials that must never reach Azure: the filter authenticates to Azure itself.
const CALLER_CREDENTIAL_HEADERS: [&str; 3] = ["authorization", "api-key", "x-api-key"];

pub struct HttpFilter {
    context_id: u32,
    state: Rc<RefCell<WorkerState>>,
    api: Option<InboundApi>,
    /// Set once the filter answered the request itself.
    answered: bool,
}

impl HttpFilter {
    pub fn new(context_id: u32, state: Rc<RefCell<WorkerState>>) -> HttpFilter {
        HttpFilter {
            context_id,
            state,
            api: None,
            answered: false,
        }
    }

    fn reply(&mut self, error: &FilterError) -> Action {
        self.answered = true;
        log::debug!(
            "azure-llm-filter: answering {} ({})",
            error.status,
            error.code
        );
        tokens::send_error(error);
        Action::Pause
    }

    /// Routes a complete request body and attaches the token (or pauses for it).
    fn route_body(&mut self, api: InboundApi, body: &[u8]) -> Result<Action, FilterError> {
        let model = routing::model_from_body(body)?;
        let state_rc = self.state.clone();
        let mut state = state_rc.borrow_mut();
        let config = state.config.clone();
        let decision = routing::route(&config, api, &model)?;
        self.set_http_request_header(":authority", Some(&decision.backend.host));
        self.set_http_request_header(":path", Some(&decision.path));
        self.set_http_request_header(&config.routing_header, Some(&decision.backend.name));
        let credential = decision.backend.credential;
        let now = now_ms();
        match tokens::token_for_request(&mut state, credential, now) {
            TokenLookup::Ready(token) => {
                self.set_http_request_header("authorization", Some(&format!("Bearer {token}")));
                Ok(Action::Continue)
            }
            TokenLookup::Wait => {
                log::debug!("azure-llm-filter: request {} waits for a token", self.context_id);
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
}

impl Context for HttpFilter {}

impl HttpContext for HttpFilter {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let routing_header = self.state.borrow().config.routing_header.clone();
        // Whatever happens next, neither the caller's credentials nor a routing decision the
        // caller made up go any further.
        for name in CALLER_CREDENTIAL_HEADERS {
            self.set_http_request_header(name, None);
        }
        self.set_http_request_header(&routing_header, None);

        let method = self.get_http_request_header(":method").unwrap_or_default();
        let path = self.get_http_request_header(":path").unwrap_or_default();
        let Some(api) = routing::classify(&method, &path) else {
            return Action::Continue;
        };
        if end_of_stream {
            return self.reply(&FilterError::bad_request(
                "missing_body",
                "this API needs a JSON request body naming a `model`",
            ));
        }
        let limit = self.state.borrow().config.max_body_bytes;
        let declared = self
            .get_http_request_header("content-length")
            .and_then(|v| v.trim().parse::<usize>().ok());
        if declared.is_some_and(|n| n > limit) {
            return self.reply(&FilterError::too_large(limit));
        }
        self.api = Some(api);
        // The model, hence the backend, is in the body: hold the headers until it is read.
        // This needs `allow_on_headers_stop_iteration: true` in the Wasm filter config.
        Action::Pause
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(api) = self.api else {
            return Action::Continue;
        };
        if self.answered {
            return Action::Pause;
        }
        let limit = self.state.borrow().config.max_body_bytes;
        if body_size > limit {
            return self.reply(&FilterError::too_large(limit));
        }
        if !end_of_stream {
            return Action::Pause; // buffer until the whole body is here
        }
        let body = self.get_http_request_body(0, body_size).unwrap_or_default();
        match self.route_body(api, &body) {
            Ok(action) => action,
            Err(e) => self.reply(&e),
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
