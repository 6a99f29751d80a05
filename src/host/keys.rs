//! Caller-authentication keys: each remote JWT provider's JWKS lives in a shared-data slot
//! (one fetch serves every worker); the root context fetches it on schedule and on unknown
//! `kid`s (rate-limited), and every worker installs new keys when the slot's generation moves.

use super::shared;
use super::worker::WorkerState;
use crate::auth::jwks::JwksState;
use crate::auth::{self, Authenticator, JwksRequest};

/// A JWKS or discovery callout in flight.
#[derive(Debug, Clone, Copy)]
pub struct JwksFetch {
    pub provider: usize,
    pub discovery: bool,
}

pub fn read_state(key: &str) -> JwksState {
    shared::read(key)
        .0
        .and_then(|b| JwksState::decode(&b))
        .unwrap_or_default()
}

pub fn update_state(
    key: &str,
    change: impl Fn(&JwksState) -> Option<JwksState>,
) -> Option<JwksState> {
    let written = shared::update(key, &JwksState::default().encode(), |bytes| {
        change(&JwksState::decode(bytes).unwrap_or_default()).map(|s| s.encode())
    })?;
    JwksState::decode(&written)
}

/// Installs what the provider's shared slot holds if it is newer than this worker's keys (another
/// worker fetched them since this worker's last tick); whether it did. Called before a caller
/// is refused for want of keys (`jwks_unavailable`, an unknown `kid`): the keys may be there
/// for up to a tick (`TICK_IDLE_MS`) before this worker's tick would install them.
pub fn install_shared(authn: &mut Authenticator, provider: usize) -> bool {
    let Some(key) = authn
        .config()
        .providers
        .get(provider)
        .map(|p| p.jwks_slot_key())
    else {
        return false;
    };
    matches!(authn.install_jwks(provider, &read_state(&key)), Ok(true))
}

/// Installs the shared keys of every provider into this worker's authenticator, and returns
/// the fetches this worker should start now (it holds their lease).
pub fn service(state: &mut WorkerState, now_ms: u64) -> Vec<(JwksFetch, JwksRequest)> {
    let mut to_start = Vec::new();
    let Some(authn) = state.auth.as_mut() else {
        return to_start;
    };
    let providers = authn.config().providers.clone();
    for (i, provider) in providers.iter().enumerate() {
        let key = provider.jwks_slot_key();
        let current = read_state(&key);
        if let Err(e) = authn.install_jwks(i, &current) {
            log::warn!(
                "azure-llm-filter: JWKS of provider {} unusable: {}",
                provider.name,
                e.as_str()
            );
        }
        if state.jwks_in_flight.values().any(|f| f.provider == i) {
            continue;
        }
        let unknown_kid = state
            .jwks_unknown_kid
            .get_mut(i)
            .map(std::mem::take)
            .unwrap_or(false);
        let schedule = provider.jwks_schedule();
        let wanted = |s: &JwksState| {
            s.needs_refresh(now_ms)
                || (unknown_kid && s.may_refetch_for_unknown_kid(now_ms, &schedule))
        };
        if auth::jwks_fetch_request(provider, &current).is_none() || !wanted(&current) {
            continue;
        }
        let leased = update_state(&key, |s| {
            wanted(s)
                .then(|| s.with_lease(now_ms, &schedule, unknown_kid && !s.needs_refresh(now_ms)))
        });
        if let Some(leased) = leased {
            if let Some(req) = auth::jwks_fetch_request(provider, &leased) {
                to_start.push((
                    JwksFetch {
                        provider: i,
                        discovery: req.discovery,
                    },
                    req,
                ));
            }
        }
    }
    to_start
}

/// What to do after a JWKS callout answered.
pub enum Next {
    Done,
    /// Discovery told where the keys are: fetch them (the lease is still ours).
    Fetch(JwksFetch, JwksRequest),
}

/// Stores the outcome of a JWKS or discovery callout. `status` None: no answer.
pub fn finish(
    state: &mut WorkerState,
    fetch: JwksFetch,
    status: Option<u32>,
    body: &[u8],
    now_ms: u64,
) -> Next {
    let Some(authn) = state.auth.as_mut() else {
        return Next::Done;
    };
    let Some(provider) = authn.config().providers.get(fetch.provider).cloned() else {
        return Next::Done;
    };
    let key = provider.jwks_slot_key();
    let schedule = provider.jwks_schedule();
    let fail = |why: String| {
        log::warn!(
            "azure-llm-filter: JWKS fetch for provider {} failed: {why}",
            provider.name
        );
        update_state(&key, |s| {
            Some(s.on_fetch_failure(now_ms, why.clone(), &schedule))
        });
        Next::Done
    };
    match status {
        None => return fail("no answer (timeout, connection failure or reset)".into()),
        Some(200) => {}
        Some(s) => return fail(format!("HTTP {s}")),
    }
    if fetch.discovery {
        return match auth::discovery_location(&provider, body) {
            Ok(location) => match update_state(&key, |s| Some(s.on_discovered(location.clone()))) {
                Some(written) => match auth::jwks_fetch_request(&provider, &written) {
                    Some(req) if !req.discovery => Next::Fetch(
                        JwksFetch {
                            provider: fetch.provider,
                            discovery: false,
                        },
                        req,
                    ),
                    _ => fail("discovery gave no usable jwks_uri".into()),
                },
                None => Next::Done,
            },
            Err(why) => fail(format!("discovery document: {why}")),
        };
    }
    let written = update_state(&key, |s| {
        Some(s.on_fetch_success(now_ms, body, &schedule).0)
    });
    if let Some(written) = written {
        if written.failures > 0 {
            log::warn!(
                "azure-llm-filter: JWKS of provider {} rejected: {}",
                provider.name,
                written.last_error
            );
        } else {
            log::info!(
                "azure-llm-filter: JWKS of provider {} loaded (generation {})",
                provider.name,
                written.generation
            );
        }
        if let Err(e) = authn.install_jwks(fetch.provider, &written) {
            log::warn!("azure-llm-filter: JWKS install failed: {}", e.as_str());
        }
    }
    Next::Done
}
