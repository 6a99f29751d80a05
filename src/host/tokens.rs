//! Token slots in Envoy shared data, and handing tokens to paused requests.

use super::shared;
use super::worker::{bearer, LocalToken, Waiter, WorkerState};
use crate::errors::FilterError;
use crate::token_cache::TokenSlot;
use proxy_wasm::hostcalls;
use proxy_wasm::types::MapType;
use std::time::Duration;

/// How often the root context looks at the shared slots while requests wait (they may wait
/// for a token another worker is fetching).
pub const TICK_WHILE_WAITING_MS: u64 = 10;
/// While requests wait for their body (`crate::body_watch`): a 408 may come this much late.
pub const TICK_WHILE_BODIES_WATCHED_MS: u64 = 100;
/// Idle tick: expires nothing time-critical, only keeps the fast path honest.
pub const TICK_IDLE_MS: u64 = 500;

pub fn read_slot(key: &str) -> (TokenSlot, Option<u32>) {
    let (bytes, cas) = shared::read(key);
    (
        bytes
            .and_then(|b| TokenSlot::decode(&b))
            .unwrap_or_default(),
        cas,
    )
}

/// Creates the slot if it does not exist yet (create-if-absent, so a lease another worker
/// already wrote is never lost).
pub fn ensure_slot(key: &str) {
    shared::create(key, &TokenSlot::default().encode());
}

/// Compare-and-swap update: `change` sees the current slot and returns the new one, or `None`
/// to leave it. Returns the slot written.
pub fn update_slot(
    key: &str,
    change: impl Fn(&TokenSlot) -> Option<TokenSlot>,
) -> Option<TokenSlot> {
    let written = shared::update(key, &TokenSlot::default().encode(), |bytes| {
        change(&TokenSlot::decode(bytes).unwrap_or_default()).map(|s| s.encode())
    })?;
    TokenSlot::decode(&written)
}

/// What a request gets when it asks for its credential's token.
pub enum TokenLookup {
    /// The upstream `authorization` value (`Bearer <token>`).
    Ready(String),
    /// No token yet: pause, a fetch has been asked for.
    Wait,
    Unavailable(FilterError),
}

pub fn token_for_request(state: &mut WorkerState, credential: usize, now_ms: u64) -> TokenLookup {
    let Some(local) = state.local_tokens.get(credential) else {
        return TokenLookup::Unavailable(FilterError::internal(
            "config_error",
            "unknown credential",
        ));
    };
    if let Some(t) = local.fresh(now_ms) {
        return TokenLookup::Ready(t.to_string());
    }
    let Some(key) = state.slot_keys.get(credential) else {
        return TokenLookup::Unavailable(FilterError::internal(
            "config_error",
            "unknown credential",
        ));
    };
    let (slot, _) = read_slot(key);
    if slot.needs_fetch(now_ms) {
        want_fetch(state, credential);
    }
    if let Some(t) = slot.usable_token(now_ms) {
        let token = bearer(t);
        if let Some(l) = state.local_tokens.get_mut(credential) {
            *l = LocalToken::from_slot(&slot);
        }
        return TokenLookup::Ready(token);
    }
    if let Some(wait_ms) = slot.cold_backoff_remaining_ms(now_ms) {
        return TokenLookup::Unavailable(token_unavailable(wait_ms));
    }
    want_fetch(state, credential);
    TokenLookup::Wait
}

/// Whether a request sent now with `credential` gets a token, now or from a fetch that has
/// not failed yet: false while the credential's fetches fail and no usable token is left (a
/// failover pool then leaves its target out). Reads the shared slot only when this worker
/// has no usable copy, and asks for a fetch when one is due.
pub fn credential_ok(state: &mut WorkerState, credential: usize, now_ms: u64) -> bool {
    let Some(local) = state.local_tokens.get(credential) else {
        return false;
    };
    if !local.token.is_empty() && now_ms < local.usable_until_ms {
        return true;
    }
    let Some(key) = state.slot_keys.get(credential) else {
        return false;
    };
    let (slot, _) = read_slot(key);
    if slot.usable_token(now_ms).is_some() {
        if let Some(l) = state.local_tokens.get_mut(credential) {
            *l = LocalToken::from_slot(&slot);
        }
        return true;
    }
    if slot.needs_fetch(now_ms) {
        want_fetch(state, credential);
    }
    slot.failures == 0
}

/// Asks the root context to start a fetch on its next tick, and makes that tick come now.
/// (A callout must be dispatched from the root context: one made by an HTTP context dies with
/// the request that made it, and would strand every other request waiting for the token.)
pub fn want_fetch(state: &mut WorkerState, credential: usize) {
    if let Some(w) = state.fetch_wanted.get_mut(credential) {
        *w = true;
    }
    request_tick_now(state);
}

/// Makes the root context's next tick come now (it resets the period itself).
pub fn request_tick_now(state: &mut WorkerState) {
    if state.tick_period_ms != 1 {
        state.tick_period_ms = 1;
        let _ = hostcalls::set_tick_period(Duration::from_millis(1));
    }
}

pub fn token_unavailable(retry_in_ms: u64) -> FilterError {
    FilterError::unavailable(
        "backend_token_unavailable",
        "could not obtain a Microsoft Entra ID token for the backend; retry later",
    )
    .with_retry_after(retry_in_ms.div_ceil(1000).max(1))
}

/// Lets a paused request go on with its token.
pub fn resume_with_token(waiter: &Waiter, token: &str) {
    if let Err(e) = hostcalls::set_effective_context(waiter.context_id) {
        log::debug!(
            "azure-llm-filter: request {} gone before its token came ({e:?})",
            waiter.context_id
        );
        return; // the request is gone (caller disconnected)
    }
    let set = hostcalls::set_map_value(
        MapType::HttpRequestHeaders,
        "authorization",
        Some(&bearer(token)),
    );
    let resumed = hostcalls::resume_http_request();
    log::debug!(
        "azure-llm-filter: request {} resumed with token ({set:?}, {resumed:?})",
        waiter.context_id
    );
}

/// Answers a paused request with an error, in its API's shape; a request another target of
/// a failover pool may serve goes on without a token instead (see [`Waiter::moves_on`]).
pub fn fail_waiter(state: &mut WorkerState, waiter: &Waiter, error: &FilterError) {
    if hostcalls::set_effective_context(waiter.context_id).is_err() {
        return;
    }
    if waiter.moves_on {
        // Its own answer would reach the caller as it is: Envoy's router sends an upstream
        // filter's local reply downstream and never retries it, nor a reset. Sent without a
        // token (the `authorization` the attempt carries is another target's), the target
        // refuses it, and the upstream filter turns that refusal into this 503, which the
        // router retries on the pool's next target (`retry_on: 5xx`).
        let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, "authorization", None);
        if state.config.role == crate::failover::Role::Upstream {
            state.tokenless.push((waiter.context_id, error.clone()));
        } else {
            // The listener filter's request waited for its first target's token: the
            // upstream filter takes that attempt over.
            super::pool::hand_over_without_token();
        }
        let resumed = hostcalls::resume_http_request();
        log::debug!(
            "azure-llm-filter: attempt {} goes on without its token ({}, {resumed:?})",
            waiter.context_id,
            error.code
        );
        return;
    }
    send_error(&error.clone().in_dialect(waiter.dialect));
}

/// Sends a local reply on the current effective context.
pub fn send_error(error: &FilterError) {
    let headers = error.headers();
    let header_refs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let _ = hostcalls::send_http_response(error.status, header_refs, Some(error.body().as_bytes()));
}
