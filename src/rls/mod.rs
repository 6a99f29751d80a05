//! Global token budgets through a rate limit service (RLS): the gRPC messages and the
//! check/charge scheme. Pure Rust (no host calls); `src/host` makes the calls.
//!
//! Local mode (`src/ratelimit.rs`) keeps counters in one Envoy's shared data. Global mode keeps
//! them in an RLS shared by every Envoy — Limitador with Redis storage, or envoyproxy/ratelimit —
//! so that a workload's budget holds across replicas.
//!
//! # Messages
//!
//! Every call sends an `envoy.service.ratelimit.v3.RateLimitRequest` and gets an
//! `envoy.service.ratelimit.v3.RateLimitResponse` back (field numbers checked against the
//! official protos, as generated in the `envoy-types` crate):
//!
//! ```text
//! RateLimitRequest      1 domain: string
//!                       2 descriptors: repeated envoy.extensions.common.ratelimit.v3.RateLimitDescriptor
//!                           RateLimitDescriptor  1 entries: repeated Entry { 1 key: string, 2 value: string }
//!                       3 hits_addend: uint32
//! RateLimitResponse     1 overall_code: Code (0 UNKNOWN, 1 OK, 2 OVER_LIMIT)
//!                       2 statuses: repeated DescriptorStatus
//!                           DescriptorStatus  1 code: Code
//!                                             2 current_limit: RateLimit { 3 name: string,
//!                                                  1 requests_per_unit: uint32, 2 unit: Unit }
//!                                             3 limit_remaining: uint32
//!                                             4 duration_until_reset: google.protobuf.Duration
//!                                                  { 1 seconds: int64, 2 nanos: int32 }
//!                                             5 quota (skipped)
//!                       3 response_headers_to_add: repeated HeaderValue { 1 key, 2 value, 3 raw_value }
//!                       4 request_headers_to_add, 5 raw_body, 6 dynamic_metadata, 7 quota (skipped)
//! Unit: 0 UNKNOWN, 1 SECOND, 2 MINUTE, 3 HOUR, 4 DAY, 5 MONTH, 6 YEAR, 7 WEEK
//! ```
//!
//! The host sends the bytes with proxy-wasm's `dispatch_grpc_call(cluster, service, method,
//! vec![], Some(&message), timeout)` (Envoy frames the gRPC message; the cluster must speak
//! HTTP/2) and reads the answer in `on_grpc_call_response(token, status_code, size)` with
//! `get_grpc_call_response_body(0, size)`. [`RlsCall`] carries service, method and message.
//!
//! # Descriptors
//!
//! Each call carries two descriptors, always in this order:
//!
//! ```text
//! descriptors[0] = [("workload", <workload>), ("model", <model>)]
//! descriptors[1] = [("workload", <workload>)]
//! ```
//!
//! - Limitador builds one context from the whole list, and its limits name positions in CEL:
//!   `variables: ["descriptors[0].workload"]` is a budget per workload,
//!   `conditions: ["descriptors[0].model == 'gpt-4o']` narrows it to a model,
//!   `conditions: ["descriptors[0].workload == 'team-a']` to one workload. Each limit counts
//!   once per call, whatever the number of descriptors.
//! - envoyproxy/ratelimit matches each descriptor on its own: `key: workload` (no value: one
//!   counter per workload) with a nested `key: model` limits descriptor 0, a lone `key: workload`
//!   limits descriptor 1.
//!
//! # Check with the estimate, charge what the answer cost
//!
//! The filter must refuse a request whose estimate (src/estimate.rs) does not fit the budget
//! before it goes upstream (so an admitted stream is never cut), and charge what the answer
//! cost once it ends (src/settlement.rs: its real usage, or the estimate when none could be
//! read; nothing for Azure's errors). `hits_addend` 0 is no way to "just look": both Limitador
//! and envoyproxy/ratelimit treat 0 as 1. And Limitador's `ShouldRateLimit` is check-and-update
//! *all or nothing*: a call whose `hits_addend` would take any matching counter over its limit
//! answers OVER_LIMIT and adds nothing. A charge sent through `ShouldRateLimit` is therefore
//! dropped exactly when it crosses the budget — the counter stays below the limit and the
//! budget never runs out (and with several limits, the looser ones lose the charge too). So:
//!
//! - [`Protocol::Kuadrant`] (Limitador; the default). Limitador also serves
//!   `kuadrant.service.ratelimit.v1.RateLimitService`, which takes the same messages and which
//!   Kuadrant's own wasm-shim uses for token limits:
//!   - before: `CheckRateLimit` with `hits_addend = estimate`, nothing written. Limitador's
//!     handler (limitador-server `kuadrant_service.rs`) checks `is_rate_limited(delta = 1)`
//!     whatever `hits_addend` says: OVER_LIMIT iff some matching counter has `used >= max`.
//!     A service that honours `hits_addend` refuses `used + estimate > max`.
//!   - after: `Report` with `hits_addend` = the charge: `update_counters`, an unconditional add
//!     to every matching counter, so a request whose answer exceeds its estimate is charged in
//!     full. Nothing is sent for a charge of 0 (Limitador would count 0 as 1).
//!   - **Overshoot that remains**: the check reserves nothing, so requests checked before the
//!     charges of those in flight land are all admitted: at the budget's edge, up to (requests
//!     in flight across the fleet) x (their cost) beyond the budget, as with charge-after in
//!     local mode (with Limitador, any request is admitted while one token is left). Exact
//!     otherwise: no overcharge, the charge is the real usage (the estimate only when none
//!     could be read).
//! - [`Protocol::Envoy`] (envoyproxy/ratelimit, whose counters add `hits_addend` before
//!   comparing, OVER_LIMIT or not; not for Limitador, for the reason above):
//!   - before: `ShouldRateLimit` with `hits_addend = estimate`: refused iff
//!     `used + estimate > max`, and the estimate is added either way — a reservation.
//!   - after: `ShouldRateLimit` with `hits_addend = charge - estimate` when the answer cost more
//!     than its estimate, nothing otherwise.
//!   - **Overshoot that remains**: only each answer's excess over its estimate (concurrent
//!     requests each hold their estimate). But envoyproxy/ratelimit cannot give hits back:
//!     an answer cheaper than its estimate, an Azure error, and a refused check all stay
//!     charged their estimate (refusals even in the counters they did not exceed). Callers
//!     that send `max_tokens` close to what they use keep that overcharge small.
//!
//! Limitador's Redis counters start their window at the first hit (a TTL of `seconds`),
//! unlike the fixed UTC windows of local mode.
//!
//! # Money (`cost_domain`)
//!
//! Hits are integers: a request's cost (pico-units, src/pricing.rs) is sent in a second call,
//! in its own domain, as micro-units rounded up ([`micros_up`]), with the same descriptors and
//! the same check / charge scheme per protocol. The host sends both checks at once and goes
//! on with the worse answer ([`CheckOutcome::worse`]).
//!
//! # Failures
//!
//! A gRPC error, a timeout, an answer that does not decode or an UNKNOWN code is a failure:
//! with `failure_mode: allow` the request goes on (logged), with `deny` it is refused with 503
//! (see [`CheckOutcome`]). A failed charge is logged and lost.

pub mod config;
#[cfg(test)]
mod tests;
pub mod wire;

pub use config::{
    FailureMode, Global, Protocol, RawGlobal, DEFAULT_RETRY_AFTER_S, DEFAULT_TIMEOUT_MS,
};
pub use wire::{
    decode_should_rate_limit_response, encode_should_rate_limit, Code, DescriptorStatus, Duration,
    RateLimit, RlsError, RlsResponse, Unit,
};

/// The standard Envoy rate limit service.
pub const ENVOY_RLS_SERVICE: &str = "envoy.service.ratelimit.v3.RateLimitService";
pub const SHOULD_RATE_LIMIT: &str = "ShouldRateLimit";
/// Limitador's extension service (same request and response messages).
pub const KUADRANT_RLS_SERVICE: &str = "kuadrant.service.ratelimit.v1.RateLimitService";
pub const CHECK_RATE_LIMIT: &str = "CheckRateLimit";
pub const REPORT: &str = "Report";

/// Descriptor keys (see the module docs).
pub const WORKLOAD_KEY: &str = "workload";
pub const MODEL_KEY: &str = "model";

impl Global {
    /// The call that checks whether a request estimated at `estimate` tokens fits, before it
    /// goes upstream.
    pub fn check_call(&self, workload: &str, model: &str, estimate: u64) -> RlsCall {
        check_call(self.protocol, &self.domain, workload, model, estimate)
    }

    /// The call that charges `tokens` after the answer of a request checked with `estimate`;
    /// `None`: nothing to send.
    pub fn charge_call(
        &self,
        workload: &str,
        model: &str,
        tokens: u64,
        estimate: u64,
    ) -> Option<RlsCall> {
        charge_call(
            self.protocol,
            &self.domain,
            workload,
            model,
            tokens,
            estimate,
        )
    }

    /// The check of a request's estimated cost (`estimate_pico`, pico-units) in
    /// `cost_domain`, if configured: `hits_addend` in micro-units, rounded up.
    pub fn cost_check_call(
        &self,
        workload: &str,
        model: &str,
        estimate_pico: u64,
    ) -> Option<RlsCall> {
        let domain = self.cost_domain.as_deref()?;
        Some(check_call(
            self.protocol,
            domain,
            workload,
            model,
            micros_up(estimate_pico),
        ))
    }

    /// The charge of a request's cost (`cost_pico`) in `cost_domain`, checked with
    /// `estimate_pico`; `None`: nothing to send.
    pub fn cost_charge_call(
        &self,
        workload: &str,
        model: &str,
        cost_pico: u64,
        estimate_pico: u64,
    ) -> Option<RlsCall> {
        let domain = self.cost_domain.as_deref()?;
        charge_call(
            self.protocol,
            domain,
            workload,
            model,
            micros_up(cost_pico),
            micros_up(estimate_pico),
        )
    }

    /// What to do with the check's answer (see [`check_outcome`]).
    pub fn check_outcome(&self, grpc_status: u32, body: &[u8]) -> CheckOutcome {
        check_outcome(grpc_status, body, self.failure_mode, self.retry_after_s)
    }
}

/// Pico-units as the micro-units an RLS counts (hits are integers), rounded up: a request is
/// never charged less than it cost, and at most one micro-unit more.
pub fn micros_up(pico: u64) -> u64 {
    pico.div_ceil(1_000_000)
}

/// One gRPC call for `dispatch_grpc_call`.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RlsCall {
    pub service: &'static str,
    pub method: &'static str,
    pub message: Vec<u8>,
}

/// The descriptors of a request (see the module docs).
pub fn descriptors(workload: &str, model: &str) -> Vec<Vec<(String, String)>> {
    vec![
        vec![
            (WORKLOAD_KEY.to_string(), workload.to_string()),
            (MODEL_KEY.to_string(), model.to_string()),
        ],
        vec![(WORKLOAD_KEY.to_string(), workload.to_string())],
    ]
}

/// `hits_addend` of a check: the estimate (at least 1, at most what the field holds).
fn check_hits(estimate: u64) -> u32 {
    u32::try_from(estimate.max(1)).unwrap_or(u32::MAX)
}

/// The check before the request: does `estimate` fit?
pub fn check_call(
    protocol: Protocol,
    domain: &str,
    workload: &str,
    model: &str,
    estimate: u64,
) -> RlsCall {
    let (service, method) = match protocol {
        Protocol::Kuadrant => (KUADRANT_RLS_SERVICE, CHECK_RATE_LIMIT),
        Protocol::Envoy => (ENVOY_RLS_SERVICE, SHOULD_RATE_LIMIT),
    };
    RlsCall {
        service,
        method,
        message: encode_should_rate_limit(
            domain,
            &descriptors(workload, model),
            check_hits(estimate),
        ),
    }
}

/// The charge of `tokens` after the answer of a request checked with `estimate`; `None` when
/// there is nothing to add.
pub fn charge_call(
    protocol: Protocol,
    domain: &str,
    workload: &str,
    model: &str,
    tokens: u64,
    estimate: u64,
) -> Option<RlsCall> {
    let (service, method, hits) = match protocol {
        Protocol::Kuadrant => (KUADRANT_RLS_SERVICE, REPORT, tokens),
        // The check already added the estimate.
        Protocol::Envoy => (
            ENVOY_RLS_SERVICE,
            SHOULD_RATE_LIMIT,
            tokens.saturating_sub(u64::from(check_hits(estimate))),
        ),
    };
    if hits == 0 {
        return None; // the RLS would count 0 as 1
    }
    let hits = u32::try_from(hits).unwrap_or(u32::MAX);
    Some(RlsCall {
        service,
        method,
        message: encode_should_rate_limit(domain, &descriptors(workload, model), hits),
    })
}

/// What the host does with the answer to a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckOutcome {
    /// Let the request through. `degraded`: the RLS failed and `failure_mode` is allow (log it;
    /// the request is still charged afterwards, the charge may fail as well).
    Admit { degraded: bool },
    /// The budget is spent: 429 with `Retry-After`.
    OverLimit { retry_after_s: u64 },
    /// The RLS failed and `failure_mode` is deny: 503.
    Unavailable { reason: String },
}

impl CheckOutcome {
    /// The outcome of a request checked in two domains (tokens and money): the worse one
    /// (a failure that refuses, then a refusal, then a degraded admission).
    pub fn worse(self, other: CheckOutcome) -> CheckOutcome {
        let rank = |o: &CheckOutcome| match o {
            CheckOutcome::Admit { degraded: false } => 0,
            CheckOutcome::Admit { degraded: true } => 1,
            CheckOutcome::OverLimit { .. } => 2,
            CheckOutcome::Unavailable { .. } => 3,
        };
        if rank(&other) > rank(&self) {
            other
        } else {
            self
        }
    }
}

/// Decides on a check's answer. `grpc_status`: the status of `on_grpc_call_response` (0 OK);
/// `body`: the response message (empty when the call failed).
pub fn check_outcome(
    grpc_status: u32,
    body: &[u8],
    failure_mode: FailureMode,
    fallback_retry_after_s: u64,
) -> CheckOutcome {
    let failed = |reason: String| match failure_mode {
        FailureMode::Allow => CheckOutcome::Admit { degraded: true },
        FailureMode::Deny => CheckOutcome::Unavailable { reason },
    };
    if grpc_status != 0 {
        return failed(format!(
            "rate limit service call failed with gRPC status {grpc_status}"
        ));
    }
    match decode_should_rate_limit_response(body) {
        Err(e) => failed(format!("rate limit service answer: {e}")),
        Ok(r) => match r.overall_code {
            Code::Ok => CheckOutcome::Admit { degraded: false },
            Code::OverLimit => CheckOutcome::OverLimit {
                retry_after_s: r.retry_after_s().unwrap_or(fallback_retry_after_s),
            },
            Code::Unknown | Code::Other(_) => {
                failed("rate limit service answered UNKNOWN (is the domain known?)".to_string())
            }
        },
    }
}
