//! Root context: one per worker VM. Parses the config, and owns token fetching: it dispatches
//! the Entra callouts (so they outlive any single request), writes results to the shared
//! slots, and resumes or fails the requests that wait for a token.

use super::http::HttpFilter;
use super::keys;
use super::now_ms;
use super::tokens::{self, TICK_IDLE_MS, TICK_WHILE_BODIES_WATCHED_MS, TICK_WHILE_WAITING_MS};
use super::upstream::UpstreamFilter;
use super::worker::{LocalToken, WorkerState};
use crate::config::{resolve_secrets, Config};
use crate::entra::{self, CalloutRequest, FetchStep, TokenFailure, TokenFetch};
use crate::errors::FilterError;
use crate::failover::Role;
use crate::metrics;
use crate::token_cache::RetryPolicy;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

pub struct FilterRoot {
    id: u32,
    state: Option<Rc<RefCell<WorkerState>>>,
}

impl Context for FilterRoot {
    /// The answer to a global-mode charge: only failures matter (the tokens are lost).
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, _response_size: usize) {
        let Some(state) = self.state.clone() else {
            return;
        };
        let mut state = state.borrow_mut();
        if state.rls_charges_in_flight.remove(&token_id) && status_code != 0 {
            log::warn!(
                "azure-llm-filter: rate limit service lost a charge (gRPC status {status_code})"
            );
            state
                .metrics
                .count(metrics::ratelimit("global_charge_failed"), 1);
        }
    }

    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        let Some(state) = self.state.clone() else {
            return;
        };
        let mut state = state.borrow_mut();
        let status = self
            .call_response_header(":status")
            .and_then(|s| s.parse::<u32>().ok());
        if let Some(fetch) = state.jwks_in_flight.remove(&token_id) {
            let body = self
                .get_http_call_response_body(0, body_size)
                .unwrap_or_default();
            if let keys::Next::Fetch(next, req) =
                keys::finish(&mut state, fetch, status, &body, now_ms())
            {
                self.dispatch_jwks(&mut state, next, &req);
            }
            return;
        }
        let Some((credential, mut fetch, sent_at)) = state.fetches_in_flight.remove(&token_id)
        else {
            return;
        };
        let retry_after = self.call_response_header("retry-after");
        let wanted = fetch
            .wanted_header()
            .and_then(|h| self.call_response_header(h));
        let body = self
            .get_http_call_response_body(0, body_size)
            .unwrap_or_default();
        let now_s = now_ms() / 1000;
        match fetch.on_response_with(
            status,
            retry_after.as_deref(),
            wanted.as_deref(),
            &body,
            now_s,
        ) {
            FetchStep::Next(req) => self.dispatch_step(&mut state, credential, fetch, req),
            FetchStep::Done(result) => finish_fetch(&mut state, credential, result, sent_at),
        }
    }
}

impl RootContext for FilterRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        let mut config = match Config::parse(&bytes) {
            Ok(c) => c,
            Err(e) => {
                log::error!("azure-llm-filter: {e}");
                return false;
            }
        };
        let secrets = match resolve_secrets(&config, |k| std::env::var(k).ok()) {
            Ok(s) => s,
            Err(e) => {
                log::error!("azure-llm-filter: {e}");
                return false;
            }
        };
        if config.role == Role::Upstream {
            // Per-attempt rewrites only: callers were authenticated and admitted by the
            // listener's filter (no JWKS fetches, no counters here).
            config.auth = None;
            config.rate_limits = Default::default();
            config.guardrails = None;
        }
        let guard_key = match config
            .guardrails
            .as_ref()
            .map(|g| g.resolve_key(|k| std::env::var(k).ok()))
        {
            Some(Err(e)) => {
                log::error!("azure-llm-filter: {e}");
                return false;
            }
            Some(Ok(key)) => key,
            None => None,
        };
        let mut state = WorkerState::new(config, secrets);
        state.guard_key = guard_key;
        for key in &state.slot_keys {
            tokens::ensure_slot(key);
        }
        // Content Safety's credential is fetched at once: a guarded request does not wait for
        // a token (src/host/http/guard.rs), so it should be there before traffic comes.
        let guard_credential = state.config.guardrails.as_ref().and_then(|g| {
            match g.content_safety.as_ref().map(|cs| &cs.auth) {
                Some(crate::guard::config::ServiceAuth::Credential(i)) => Some(*i),
                _ => None,
            }
        });
        if let Some(w) = guard_credential.and_then(|i| state.fetch_wanted.get_mut(i)) {
            *w = true;
        }
        // The listener's filter fetches the tokens of failover pools' targets at once.
        let pool_tokens = state.config.role == Role::Downstream && state.want_pool_tokens();
        // With remote JWT providers, tick at once to fetch their keys before traffic comes.
        let first_tick = if state.auth.is_some() || guard_credential.is_some() || pool_tokens {
            1
        } else {
            TICK_IDLE_MS
        };
        state.tick_period_ms = first_tick;
        self.set_tick_period(Duration::from_millis(first_tick));
        log::info!(
            "azure-llm-filter: configured {} backend(s), {} model(s), {} credential(s)",
            state.config.backends.len(),
            state.config.models.len(),
            state.config.credentials.len()
        );
        self.state = Some(Rc::new(RefCell::new(state)));
        true
    }

    fn on_tick(&mut self) {
        let Some(state) = self.state.clone() else {
            return;
        };
        let mut state = state.borrow_mut();
        let now = now_ms();
        for credential in 0..state.config.credentials.len() {
            self.service_credential(&mut state, credential, now);
        }
        for (fetch, req) in keys::service(&mut state, now) {
            self.dispatch_jwks(&mut state, fetch, &req);
        }
        self.send_rls_charges(&mut state);
        let ages: Vec<(String, u64)> = state
            .local_tokens
            .iter()
            .zip(state.config.credentials.iter())
            .filter(|(t, _)| !t.token.is_empty())
            .map(|(t, c)| (c.name.clone(), t.usable_until_ms.saturating_sub(now) / 1000))
            .collect();
        for (name, left) in ages {
            state.metrics.gauge(metrics::token_expires_in(&name), left);
        }
        let timed_out = state.take_expired_waiters(now);
        if !timed_out.is_empty() {
            log::warn!(
                "azure-llm-filter: {} request(s) timed out waiting for an Entra token",
                timed_out.len()
            );
            let err = FilterError::unavailable(
                "backend_token_timeout",
                "timed out waiting for a Microsoft Entra ID token for the backend",
            )
            .with_retry_after(1);
            for w in &timed_out {
                tokens::fail_waiter(&mut state, w, &err);
            }
        }
        let timeout_ms = state.config.body_wait_timeout_ms;
        let stuck = state.body_watch.take_expired(now, timeout_ms);
        for (context_id, err) in stuck {
            if err.code == "filter_misconfigured" {
                log::error!(
                    "azure-llm-filter: a request got no body callback: set \
                     allow_on_headers_stop_iteration: true in the Wasm plugin config \
                     (or use routing_mode \"header\")"
                );
            } else {
                log::info!("azure-llm-filter: request {context_id}: {}", err.message);
            }
            if proxy_wasm::hostcalls::set_effective_context(context_id).is_ok() {
                state
                    .metrics
                    .count_fixed(super::metrics::Family::Requests, err.code);
                tokens::send_error(&err);
            }
        }
        // Body watches are kept for every request that waits for its body (usually for well
        // under a millisecond): their deadlines are seconds away, so they need no fast tick.
        let wanted = if !state.waiters.is_empty() {
            TICK_WHILE_WAITING_MS
        } else if !state.body_watch.is_empty() {
            TICK_WHILE_BODIES_WATCHED_MS
        } else {
            TICK_IDLE_MS
        };
        if state.tick_period_ms != wanted {
            state.tick_period_ms = wanted;
            let _ = proxy_wasm::hostcalls::set_effective_context(self.context_id());
            self.set_tick_period(Duration::from_millis(wanted));
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let state = self.state.clone()?;
        let role = state
            .try_borrow()
            .map_or(Role::Downstream, |s| s.config.role);
        if role == Role::Upstream {
            return Some(Box::new(UpstreamFilter::new(context_id, state)));
        }
        Some(Box::new(HttpFilter::new(context_id, state)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

impl FilterRoot {
    /// A header of a callout's answer; one that is not UTF-8 reads as absent (the SDK's
    /// string reader would panic on it).
    fn call_response_header(&self, name: &str) -> Option<String> {
        self.get_http_call_response_header_bytes(name)
            .and_then(|b| String::from_utf8(b).ok())
    }

    pub fn new(id: u32) -> FilterRoot {
        FilterRoot { id, state: None }
    }

    /// The root acts on HTTP contexts' behalf (resuming them), which moves the host's
    /// effective context; this moves it back before the root's own host calls.
    fn context_id(&self) -> u32 {
        self.id
    }

    /// Looks at one credential's shared slot when this worker has a reason to: requests
    /// waiting, a fetch asked for, or a refresh due for the token it uses.
    fn service_credential(&mut self, state: &mut WorkerState, credential: usize, now: u64) {
        let asked = std::mem::take(&mut state.fetch_wanted[credential]);
        let local = &state.local_tokens[credential];
        let refresh_due = !local.token.is_empty() && now >= local.refresh_at_ms;
        if !asked && !refresh_due && !state.has_waiters(credential) {
            return;
        }
        let key = state.slot_keys[credential].clone();
        let (slot, _) = tokens::read_slot(&key);
        if let Some(token) = slot.usable_token(now) {
            let token = token.to_string();
            state.local_tokens[credential] = LocalToken::from_slot(&slot);
            for w in state.take_waiters(credential) {
                tokens::resume_with_token(&w, &token);
            }
        } else if let Some(wait_ms) = slot.cold_backoff_remaining_ms(now) {
            let err = tokens::token_unavailable(wait_ms);
            for w in state.take_waiters(credential) {
                tokens::fail_waiter(state, &w, &err);
            }
        }
        if state.fetch_in_flight(credential) || !slot.needs_fetch(now) {
            return;
        }
        let timeout_ms = state.config.credentials[credential].fetch_budget_ms();
        let leased = tokens::update_slot(&key, |s| {
            s.needs_fetch(now).then(|| s.with_lease(now, timeout_ms))
        });
        if leased.is_none() {
            return; // another worker took the lease
        }
        self.start_fetch(state, credential);
    }

    /// Sends the queued global-mode charges from the root context, so that they outlive the
    /// requests they charge.
    fn send_rls_charges(&mut self, state: &mut WorkerState) {
        if state.rls_charges.is_empty() {
            return;
        }
        let Some(global) = state.config.rate_limits.global.clone() else {
            state.rls_charges.clear();
            return;
        };
        for call in std::mem::take(&mut state.rls_charges) {
            match self.dispatch_grpc_call(
                &global.cluster,
                call.service,
                call.method,
                Vec::new(),
                Some(&call.message),
                Duration::from_millis(global.timeout_ms),
            ) {
                Ok(token) => {
                    state.rls_charges_in_flight.insert(token);
                }
                Err(status) => {
                    log::warn!(
                        "azure-llm-filter: cannot send a charge to the rate limit service on cluster `{}` ({status:?})",
                        global.cluster
                    );
                    state
                        .metrics
                        .count(metrics::ratelimit("global_charge_failed"), 1);
                }
            }
        }
    }

    fn dispatch_jwks(
        &mut self,
        state: &mut WorkerState,
        fetch: keys::JwksFetch,
        req: &crate::auth::JwksRequest,
    ) {
        let _ = proxy_wasm::hostcalls::set_effective_context(self.context_id());
        let headers = vec![
            (":method", "GET"),
            (":path", req.path.as_str()),
            (":authority", req.authority.as_str()),
            ("accept", "application/json"),
        ];
        match self.dispatch_http_call(
            &req.cluster,
            headers,
            None,
            vec![],
            Duration::from_millis(req.timeout_ms),
        ) {
            Ok(token_id) => {
                state.jwks_in_flight.insert(token_id, fetch);
            }
            Err(status) => {
                log::warn!(
                    "azure-llm-filter: JWKS dispatch to cluster {:?} failed ({status:?}); is the cluster defined in Envoy?",
                    req.cluster
                );
                keys::finish(state, fetch, None, &[], now_ms());
            }
        }
    }

    fn start_fetch(&mut self, state: &mut WorkerState, credential: usize) {
        let (Some(cred), Some(secret)) = (
            state.config.credentials.get(credential),
            state.secrets.get(credential),
        ) else {
            return;
        };
        match TokenFetch::start(cred, secret, now_ms() / 1000) {
            Ok((fetch, req)) => self.dispatch_step(state, credential, fetch, req),
            Err(failure) => finish_fetch(state, credential, Err(failure), now_ms()),
        }
    }

    fn dispatch_step(
        &mut self,
        state: &mut WorkerState,
        credential: usize,
        fetch: TokenFetch,
        req: CalloutRequest,
    ) {
        let _ = proxy_wasm::hostcalls::set_effective_context(self.context_id());
        let sent_at = now_ms();
        match self.dispatch_http_call(
            &req.cluster,
            req.host_headers(),
            Some(&req.body),
            vec![],
            Duration::from_millis(req.timeout_ms),
        ) {
            Ok(token_id) => {
                state
                    .fetches_in_flight
                    .insert(token_id, (credential, fetch, sent_at));
            }
            Err(status) => {
                let failure = TokenFailure::callout_failed(&format!(
                    "dispatch to cluster {:?} failed ({status:?}); is the cluster defined in Envoy?",
                    req.cluster
                ));
                finish_fetch(state, credential, Err(failure), sent_at);
            }
        }
    }
}

/// Stores the outcome of a fetch and lets the waiting requests go on or fail. `sent_at`: when
/// the fetch's last callout was sent (a granted token's lifetime counts from then).
fn finish_fetch(
    state: &mut WorkerState,
    credential: usize,
    result: Result<entra::TokenGrant, TokenFailure>,
    sent_at: u64,
) {
    let now = now_ms();
    let key = state.slot_keys[credential].clone();
    let name = state.config.credentials[credential].name.clone();
    match result {
        Ok(grant) => {
            let expires_in = grant.expires_in_s;
            let written = tokens::update_slot(&key, |s| {
                Some(s.on_success(sent_at.min(now), grant.access_token.clone(), expires_in))
            });
            log::info!("azure-llm-filter: credential {name}: Entra token obtained, expires in {expires_in} s");
            state.metrics.count(metrics::token_fetches(&name, "ok"), 1);
            state
                .metrics
                .gauge(metrics::token_expires_in(&name), expires_in);
            if let Some(slot) = written {
                state.local_tokens[credential] = LocalToken::from_slot(&slot);
            }
            let token = grant.access_token;
            for w in state.take_waiters(credential) {
                tokens::resume_with_token(&w, &token);
            }
        }
        Err(failure) => {
            log::warn!(
                "azure-llm-filter: credential {name}: token request failed: {}",
                failure.summary()
            );
            let summary = failure.code.clone();
            let slot = tokens::update_slot(&key, |s| {
                Some(s.on_failure(
                    now,
                    failure.retry_after_ms,
                    summary.clone(),
                    RetryPolicy::default(),
                ))
            });
            // Counted once the slot says so: whoever reads the count (an operator, a test)
            // may rely on every worker leaving the credential's targets out by then.
            state
                .metrics
                .count(metrics::token_fetches(&name, &failure.code), 1);
            let Some(slot) = slot else { return };
            if let Some(token) = slot.usable_token(now) {
                let token = token.to_string();
                for w in state.take_waiters(credential) {
                    tokens::resume_with_token(&w, &token);
                }
            } else {
                let wait_ms = slot.cold_backoff_remaining_ms(now).unwrap_or(0);
                let err = tokens::token_unavailable(wait_ms);
                for w in state.take_waiters(credential) {
                    tokens::fail_waiter(state, &w, &err);
                }
            }
        }
    }
}
