//! Phase credential: the backend credential's Entra token (cached in shared data for every
//! worker) replaces any caller authorization, or the request pauses until the root context
//! has fetched one (`host::tokens::resume_with_token` resumes it).

use super::HttpFilter;
use crate::config::Config;
use crate::errors::FilterError;
use crate::host::metrics::Family;
use crate::host::now_ms;
use crate::host::phase::{self, Phase};
use crate::host::tokens::{self, TokenLookup};
use crate::host::worker::Waiter;
use proxy_wasm::traits::HttpContext;
use proxy_wasm::types::Action;

impl HttpFilter {
    /// The request is admitted: attach the credential's token, or pause until it comes.
    pub(super) fn attach_credential(
        &mut self,
        config: &Config,
        credential: usize,
    ) -> Result<Action, FilterError> {
        let _phase = phase::enter(Phase::Credential);
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
                    dialect: self.dialect,
                    // Another target of the pool may serve it (`tokens::fail_waiter`).
                    moves_on: self.via_pool_cluster(),
                });
                Ok(Action::Pause)
            }
            TokenLookup::Unavailable(_) if self.via_pool_cluster() => {
                // The first target cannot get a token, another of the order may serve: the
                // upstream filter treats the first attempt like any other and goes on
                // without a token there (its 503 moves the request on).
                drop(state);
                crate::host::pool::hand_over_without_token();
                Ok(Action::Continue)
            }
            TokenLookup::Unavailable(e) => Err(e),
        }
    }
}
