//! State one Envoy worker's VM keeps between callbacks: the validated config, the resolved
//! secrets, a local copy of each credential's token (so the hot path needs no shared-data
//! read), the requests waiting for a token and the token fetches this worker has in flight.
//!
//! Shared by the root context and its HTTP contexts through `Rc<RefCell<..>>`: one VM runs on
//! one thread, so no locking is involved.

use super::keys::JwksFetch;
use super::metrics::Metrics;
use crate::auth::Authenticator;
use crate::body_watch::BodyWatch;
use crate::config::Config;
use crate::entra::credential::ResolvedSecret;
use crate::entra::TokenFetch;
use crate::token_cache::TokenSlot;
use std::collections::HashMap;
use std::rc::Rc;

/// A worker-local copy of a usable token.
#[derive(Clone, Default)]
pub struct LocalToken {
    pub token: String,
    /// `Bearer <token>`, the upstream `authorization` value, built once per token.
    pub authorization: String,
    pub usable_until_ms: u64,
    pub refresh_at_ms: u64,
}

impl LocalToken {
    pub fn from_slot(slot: &TokenSlot) -> LocalToken {
        LocalToken {
            token: slot.token.clone(),
            authorization: bearer(&slot.token),
            usable_until_ms: slot.usable_until_ms,
            refresh_at_ms: slot.refresh_at_ms,
        }
    }

    /// The `authorization` value, while the token may be used and no refresh is due (a due
    /// refresh sends the caller through the shared slot, which may hold a newer token from
    /// another worker).
    pub fn fresh(&self, now_ms: u64) -> Option<&str> {
        (!self.token.is_empty() && now_ms < self.usable_until_ms && now_ms < self.refresh_at_ms)
            .then_some(self.authorization.as_str())
    }
}

/// The upstream `authorization` header value for an Entra access token.
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// A request paused until its credential has a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waiter {
    pub context_id: u32,
    pub credential: usize,
    pub deadline_ms: u64,
    /// The error shape of the request's API, for an answer from the root context.
    pub dialect: crate::errors::Dialect,
    /// A request another target of a failover pool may serve: an upstream attempt, or the
    /// listener filter's request bound for a pool's aggregate cluster. A token that does not
    /// come lets it go on without one (`tokens::fail_waiter`; the upstream filter turns the
    /// target's refusal into a 503: `WorkerState::tokenless`) instead of answering it, so
    /// that Envoy's router can try the next target (it never retries a filter's own answer).
    pub moves_on: bool,
}

pub struct WorkerState {
    pub config: Rc<Config>,
    pub secrets: Vec<ResolvedSecret>,
    /// Shared-data key of each credential's slot.
    pub slot_keys: Vec<String>,
    pub local_tokens: Vec<LocalToken>,
    pub waiters: Vec<Waiter>,
    /// Callout token id -> (credential index, the fetch it belongs to, when the callout was
    /// sent: a granted token's lifetime counts from then).
    pub fetches_in_flight: HashMap<u32, (usize, TokenFetch, u64)>,
    /// Set by an HTTP context that found no token; the root's next tick starts the fetch.
    pub fetch_wanted: Vec<bool>,
    /// The root context's current tick period (1 ms = "tick now, a fetch is wanted").
    pub tick_period_ms: u64,
    /// Requests paused for their body (`crate::body_watch`): every one is answered.
    pub body_watch: BodyWatch,
    /// Caller authentication (None when the config has no `auth`).
    pub auth: Option<Authenticator>,
    /// JWKS callouts in flight, by callout token id.
    pub jwks_in_flight: HashMap<u32, JwksFetch>,
    /// Per provider: a request presented an unknown `kid` (a refetch may be due).
    pub jwks_unknown_kid: Vec<bool>,
    pub metrics: Metrics,
    /// Global mode: charges of finished requests, sent by the root context's next tick.
    pub rls_charges: Vec<crate::rls::RlsCall>,
    /// Charges sent and not answered yet, by gRPC call token.
    pub rls_charges_in_flight: std::collections::HashSet<u32>,
    /// The Content Safety key (`guardrails.content_safety.api_key_env`), if one is used.
    pub guard_key: Option<String>,
    /// Where requests start among equal-priority targets, per pool model (`failover::order`).
    pub pool_rotations: HashMap<String, crate::failover::order::Rotation>,
    /// Upstream attempts the root context let go on without their target's token (its
    /// fetch failed or the wait timed out), with the error they stand for: the upstream
    /// filter turns the target's refusal into it (`host::upstream`).
    pub tokenless: Vec<(u32, crate::errors::FilterError)>,
}

impl WorkerState {
    pub fn new(config: Config, secrets: Vec<ResolvedSecret>) -> WorkerState {
        let n = config.credentials.len();
        let auth = config.auth.clone().map(Authenticator::new);
        let mut metrics = Metrics::default();
        metrics.workloads.cap = config.max_workload_series;
        let providers = config.auth.as_ref().map_or(0, |a| a.providers.len());
        let slot_keys = config
            .credentials
            .iter()
            .map(|c| format!("azure_llm_filter.token.{}.{:016x}", c.name, c.fingerprint()))
            .collect();
        WorkerState {
            config: Rc::new(config),
            secrets,
            slot_keys,
            local_tokens: vec![LocalToken::default(); n],
            waiters: Vec::new(),
            fetches_in_flight: HashMap::new(),
            fetch_wanted: vec![false; n],
            tick_period_ms: 0,
            body_watch: BodyWatch::default(),
            jwks_unknown_kid: vec![false; providers],
            auth,
            jwks_in_flight: HashMap::new(),
            metrics,
            rls_charges: Vec::new(),
            rls_charges_in_flight: std::collections::HashSet::new(),
            guard_key: None,
            pool_rotations: HashMap::new(),
            tokenless: Vec::new(),
        }
    }

    /// Asks for a token of every credential a failover pool's targets use, so that the first
    /// spill to a target does not wait for a fetch, and a credential that cannot get a token
    /// is known (and its target left out) before a request needs it.
    pub fn want_pool_tokens(&mut self) -> bool {
        let mut wanted = false;
        for route in self.config.models.values().filter(|m| m.is_pool()) {
            for t in &route.targets {
                let credential = self.config.backends.get(t.backend).map(|b| b.credential);
                if let Some(w) = credential.and_then(|c| self.fetch_wanted.get_mut(c)) {
                    *w = true;
                    wanted = true;
                }
            }
        }
        wanted
    }

    pub fn fetch_in_flight(&self, credential: usize) -> bool {
        self.fetches_in_flight
            .values()
            .any(|(c, _, _)| *c == credential)
    }

    pub fn has_waiters(&self, credential: usize) -> bool {
        self.waiters.iter().any(|w| w.credential == credential)
    }

    /// Removes and returns the waiters of one credential.
    pub fn take_waiters(&mut self, credential: usize) -> Vec<Waiter> {
        let (taken, kept): (Vec<Waiter>, Vec<Waiter>) = self
            .waiters
            .drain(..)
            .partition(|w| w.credential == credential);
        self.waiters = kept;
        taken
    }

    /// Removes and returns the waiters whose deadline has passed.
    pub fn take_expired_waiters(&mut self, now_ms: u64) -> Vec<Waiter> {
        let (expired, kept): (Vec<Waiter>, Vec<Waiter>) = self
            .waiters
            .drain(..)
            .partition(|w| now_ms >= w.deadline_ms);
        self.waiters = kept;
        expired
    }

    /// The request still waits for a token (the root context has not resumed it).
    pub fn is_waiting(&self, context_id: u32) -> bool {
        self.waiters.iter().any(|w| w.context_id == context_id)
    }

    /// The error an upstream attempt stands for if the root context let it go on without
    /// its token.
    pub fn take_tokenless(&mut self, context_id: u32) -> Option<crate::errors::FilterError> {
        let i = self.tokenless.iter().position(|(c, _)| *c == context_id)?;
        Some(self.tokenless.swap_remove(i).1)
    }

    pub fn forget_context(&mut self, context_id: u32) {
        self.waiters.retain(|w| w.context_id != context_id);
        if !self.tokenless.is_empty() {
            self.tokenless.retain(|(c, _)| *c != context_id);
        }
        self.body_watch.done(context_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> WorkerState {
        let v = serde_json::json!({
            "credentials": {"a": {"kind": "client_secret", "tenant_id": "t", "client_id": "c",
                                  "client_secret": "s", "token_cluster": "entra"},
                            "b": {"kind": "client_secret", "tenant_id": "t", "client_id": "d",
                                  "client_secret": "s", "token_cluster": "entra"}},
            "backends": {"x": {"kind": "azure_openai", "host": "h", "api_version": "v", "credential": "a"}},
            "models": {"m": {"backend": "x", "deployment": "d"}}
        });
        let c = Config::parse(v.to_string().as_bytes()).unwrap();
        WorkerState::new(c, vec![])
    }

    #[test]
    fn waiters_by_credential_and_deadline() {
        let mut s = state();
        s.waiters.push(Waiter {
            context_id: 1,
            credential: 0,
            deadline_ms: 100,
            dialect: Default::default(),
            moves_on: false,
        });
        s.waiters.push(Waiter {
            context_id: 2,
            credential: 1,
            deadline_ms: 50,
            dialect: Default::default(),
            moves_on: false,
        });
        s.waiters.push(Waiter {
            context_id: 3,
            credential: 0,
            deadline_ms: 200,
            dialect: Default::default(),
            moves_on: false,
        });
        assert_eq!(s.take_expired_waiters(60).len(), 1);
        assert!(s.has_waiters(0));
        assert!(!s.has_waiters(1));
        let w = s.take_waiters(0);
        assert_eq!(
            w.iter().map(|w| w.context_id).collect::<Vec<_>>(),
            vec![1, 3]
        );
        assert!(s.waiters.is_empty());
    }

    #[test]
    fn slot_keys_differ_per_credential() {
        let s = state();
        assert_ne!(s.slot_keys[0], s.slot_keys[1]);
        assert!(s.slot_keys[0].starts_with("azure_llm_filter.token.a."));
    }

    #[test]
    fn local_token_is_not_fresh_once_refresh_is_due() {
        let t = LocalToken {
            authorization: bearer("t"),
            token: "t".into(),
            usable_until_ms: 100,
            refresh_at_ms: 50,
        };
        assert_eq!(t.fresh(10), Some("Bearer t"));
        assert_eq!(t.fresh(50), None);
        assert_eq!(LocalToken::default().fresh(0), None);
    }
}
