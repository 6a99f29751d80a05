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
//! # Check before, charge after
//!
//! The filter must refuse a request when the budget is already spent (before it goes upstream,
//! so an admitted stream is never cut), and charge the real `usage` once the answer is complete.
//! `hits_addend` 0 is no way to "just look": both Limitador and envoyproxy/ratelimit treat 0
//! as 1. And Limitador's `ShouldRateLimit` is check-and-update *all or nothing*: a call whose
//! `hits_addend` would take any matching counter over its limit answers OVER_LIMIT and adds
//! nothing. A charge sent through `ShouldRateLimit` is therefore dropped exactly when it
//! crosses the budget — the counter stays below the limit and the budget never runs out
//! (and with several limits, the looser ones lose the charge too). So:
//!
//! - [`Protocol::Kuadrant`] (Limitador; the default). Limitador also serves
//!   `kuadrant.service.ratelimit.v1.RateLimitService`, which takes the same messages and which
//!   Kuadrant's own wasm-shim uses for token limits:
//!   - before: `CheckRateLimit`: `is_rate_limited(delta = 1)`, nothing written. OVER_LIMIT iff
//!     some matching counter has `used + 1 > max`, i.e. `used >= max` — the local rule.
//!   - after: `Report` with `hits_addend = total tokens`: `update_counters`, an unconditional
//!     add to every matching counter, so the request that crosses the budget is charged in full
//!     and the next check is refused. 0 tokens (no usage in the answer) sends nothing, since
//!     Limitador would count 0 as 1.
//! - [`Protocol::Envoy`] (envoyproxy/ratelimit, whose counters add `hits_addend` before comparing,
//!   OVER_LIMIT or not; not for Limitador, for the reason above):
//!   - before: `ShouldRateLimit` with `hits_addend = 1`: refused iff `used + 1 > max`; on
//!     admission it adds 1 token.
//!   - after: `ShouldRateLimit` with `hits_addend = tokens - 1` (the check paid 1), nothing when
//!     tokens <= 1. Exact, except that a request without usage costs 1 token.
//!
//! As in local mode, the request that crosses a budget completes: concurrent requests admitted
//! before the first charge lands can overshoot. Limitador's Redis counters start their window at
//! the first hit (a TTL of `seconds`), unlike the fixed UTC windows of local mode.
//!
//! # Failures
//!
//! A gRPC error, a timeout, an answer that does not decode or an UNKNOWN code is a failure:
//! with `failure_mode: allow` the request goes on (logged), with `deny` it is refused with 503
//! (see [`CheckOutcome`]). A failed charge is logged and lost.

use crate::config::error::ConfigError;
use serde::Deserialize;

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

/// Which RPCs check and charge a budget.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// Limitador: `CheckRateLimit` before, `Report` after.
    #[default]
    Kuadrant,
    /// envoyproxy/ratelimit: `ShouldRateLimit` both times (1 before, the rest after).
    Envoy,
}

/// What the filter does when the RLS cannot answer.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    /// Let the request through (as Envoy's ratelimit filter does by default).
    #[default]
    Allow,
    /// Refuse it with 503.
    Deny,
}

/// `rate_limits.global` as written in the plugin config.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGlobal {
    /// Envoy cluster of the RLS (HTTP/2).
    pub cluster: String,
    /// RLS domain (Limitador: the limits' namespace).
    pub domain: String,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub failure_mode: FailureMode,
    #[serde(default)]
    pub protocol: Protocol,
    /// Retry-After of a refusal when the RLS does not say when the budget resets (Limitador
    /// never does).
    #[serde(default)]
    pub retry_after_s: Option<u64>,
}

pub const DEFAULT_TIMEOUT_MS: u64 = 200;
pub const DEFAULT_RETRY_AFTER_S: u64 = 60;

/// Validated global-mode settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Global {
    pub cluster: String,
    pub domain: String,
    pub timeout_ms: u64,
    pub failure_mode: FailureMode,
    pub protocol: Protocol,
    pub retry_after_s: u64,
}

impl Global {
    /// `field`: the dotted path of the raw value, for errors (`rate_limits.global`).
    pub fn from_raw(field: &str, raw: &RawGlobal) -> Result<Global, ConfigError> {
        let err = |name: &str, reason: &str| ConfigError {
            field: format!("{field}.{name}"),
            reason: reason.to_string(),
        };
        if raw.cluster.trim().is_empty() {
            return Err(err(
                "cluster",
                "must name the Envoy cluster of the rate limit service",
            ));
        }
        if raw.domain.is_empty() {
            // Limitador answers UNKNOWN to an empty domain, envoyproxy/ratelimit an error.
            return Err(err("domain", "must not be empty"));
        }
        let timeout_ms = raw.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
        if timeout_ms == 0 || timeout_ms > 60_000 {
            return Err(err("timeout_ms", "must be between 1 and 60000"));
        }
        let retry_after_s = raw.retry_after_s.unwrap_or(DEFAULT_RETRY_AFTER_S);
        if retry_after_s == 0 {
            return Err(err("retry_after_s", "must be at least 1"));
        }
        Ok(Global {
            cluster: raw.cluster.clone(),
            domain: raw.domain.clone(),
            timeout_ms,
            failure_mode: raw.failure_mode,
            protocol: raw.protocol,
            retry_after_s,
        })
    }

    /// The call that checks a request before it goes upstream.
    pub fn check_call(&self, workload: &str, model: &str) -> RlsCall {
        check_call(self.protocol, &self.domain, workload, model)
    }

    /// The call that charges `tokens` after the answer; `None`: nothing to send.
    pub fn charge_call(&self, workload: &str, model: &str, tokens: u64) -> Option<RlsCall> {
        charge_call(self.protocol, &self.domain, workload, model, tokens)
    }

    /// What to do with the check's answer (see [`check_outcome`]).
    pub fn check_outcome(&self, grpc_status: u32, body: &[u8]) -> CheckOutcome {
        check_outcome(grpc_status, body, self.failure_mode, self.retry_after_s)
    }
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

/// The check before the request.
pub fn check_call(protocol: Protocol, domain: &str, workload: &str, model: &str) -> RlsCall {
    let (service, method) = match protocol {
        Protocol::Kuadrant => (KUADRANT_RLS_SERVICE, CHECK_RATE_LIMIT),
        Protocol::Envoy => (ENVOY_RLS_SERVICE, SHOULD_RATE_LIMIT),
    };
    RlsCall {
        service,
        method,
        message: encode_should_rate_limit(domain, &descriptors(workload, model), 1),
    }
}

/// The charge of `tokens` after the answer; `None` when there is nothing to add.
pub fn charge_call(
    protocol: Protocol,
    domain: &str,
    workload: &str,
    model: &str,
    tokens: u64,
) -> Option<RlsCall> {
    let (service, method, hits) = match protocol {
        Protocol::Kuadrant => (KUADRANT_RLS_SERVICE, REPORT, tokens),
        // The check already added 1.
        Protocol::Envoy => (
            ENVOY_RLS_SERVICE,
            SHOULD_RATE_LIMIT,
            tokens.saturating_sub(1),
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

// ---------------------------------------------------------------------------------------------
// Response

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Code {
    #[default]
    Unknown,
    Ok,
    OverLimit,
    /// A value this code does not know (proto3 enums are open).
    Other(i32),
}

impl Code {
    fn from_i32(v: i32) -> Code {
        match v {
            0 => Code::Unknown,
            1 => Code::Ok,
            2 => Code::OverLimit,
            v => Code::Other(v),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Unit {
    #[default]
    Unknown,
    Second,
    Minute,
    Hour,
    Day,
    Month,
    Year,
    Week,
    Other(i32),
}

impl Unit {
    fn from_i32(v: i32) -> Unit {
        match v {
            0 => Unit::Unknown,
            1 => Unit::Second,
            2 => Unit::Minute,
            3 => Unit::Hour,
            4 => Unit::Day,
            5 => Unit::Month,
            6 => Unit::Year,
            7 => Unit::Week,
            v => Unit::Other(v),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RateLimit {
    pub name: String,
    pub requests_per_unit: u32,
    pub unit: Unit,
}

/// `google.protobuf.Duration`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Duration {
    pub seconds: i64,
    pub nanos: i32,
}

impl Duration {
    /// Whole seconds, rounded up, never below 0.
    pub fn ceil_secs(&self) -> u64 {
        let s = u64::try_from(self.seconds).unwrap_or(0);
        if self.seconds >= 0 && self.nanos > 0 {
            s.saturating_add(1)
        } else {
            s
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DescriptorStatus {
    pub code: Code,
    pub current_limit: Option<RateLimit>,
    pub limit_remaining: u32,
    pub duration_until_reset: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RlsResponse {
    pub overall_code: Code,
    pub statuses: Vec<DescriptorStatus>,
    /// `response_headers_to_add` (Limitador's `--rate-limit-headers`, envoyproxy/ratelimit's
    /// `x-ratelimit-*`): key and value (`raw_value` when `value` is empty).
    pub response_headers_to_add: Vec<(String, String)>,
}

impl RlsResponse {
    /// Seconds until the longest-blocking OVER_LIMIT descriptor resets (at least 1), when the
    /// RLS says (envoyproxy/ratelimit does, Limitador does not).
    pub fn retry_after_s(&self) -> Option<u64> {
        self.statuses
            .iter()
            .filter(|s| s.code == Code::OverLimit)
            .filter_map(|s| s.duration_until_reset)
            .map(|d| d.ceil_secs().max(1))
            .max()
    }

    /// The OK descriptor with the least left: (limit, remaining), when the RLS says.
    pub fn tightest(&self) -> Option<(&RateLimit, u32)> {
        self.statuses
            .iter()
            .filter_map(|s| s.current_limit.as_ref().map(|l| (l, s.limit_remaining)))
            .min_by_key(|(_, remaining)| *remaining)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RlsError {
    /// The message ends inside a field.
    Truncated,
    /// A varint longer than 10 bytes.
    VarintTooLong,
    /// Wire type 6 or 7, field number 0, or an unbalanced group.
    Malformed(&'static str),
}

impl std::fmt::Display for RlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RlsError::Truncated => write!(f, "truncated protobuf message"),
            RlsError::VarintTooLong => write!(f, "protobuf varint longer than 10 bytes"),
            RlsError::Malformed(why) => write!(f, "malformed protobuf message: {why}"),
        }
    }
}

impl std::error::Error for RlsError {}

// ---------------------------------------------------------------------------------------------
// Encoding (proto3: fields at their default value are left out, as protobuf encoders do)

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const START_GROUP: u8 = 3;
const END_GROUP: u8 = 4;
const FIXED32: u8 = 5;

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_key(out: &mut Vec<u8>, field: u32, wire_type: u8) {
    put_varint(out, (u64::from(field) << 3) | u64::from(wire_type));
}

fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_key(out, field, LEN);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn put_string(out: &mut Vec<u8>, field: u32, s: &str) {
    if !s.is_empty() {
        put_bytes(out, field, s.as_bytes());
    }
}

/// The bytes of a `RateLimitRequest` (also the message of `CheckRateLimit` and `Report`).
pub fn encode_should_rate_limit(
    domain: &str,
    descriptors: &[Vec<(String, String)>],
    hits_addend: u32,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + domain.len() + 48 * descriptors.len());
    put_string(&mut out, 1, domain);
    let mut descriptor = Vec::new();
    let mut entry = Vec::new();
    for d in descriptors {
        descriptor.clear();
        for (key, value) in d {
            entry.clear();
            put_string(&mut entry, 1, key);
            put_string(&mut entry, 2, value);
            put_bytes(&mut descriptor, 1, &entry);
        }
        put_bytes(&mut out, 2, &descriptor);
    }
    if hits_addend != 0 {
        put_key(&mut out, 3, VARINT);
        put_varint(&mut out, u64::from(hits_addend));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Decoding

/// Groups (deprecated, never used by these messages) nest at most this deep when skipped.
const MAX_GROUP_DEPTH: usize = 64;

enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    /// Fixed32, fixed64 or a group: skipped.
    Other,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn varint(&mut self) -> Result<u64, RlsError> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let b = *self.buf.get(self.pos).ok_or(RlsError::Truncated)?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(RlsError::VarintTooLong)
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], RlsError> {
        let n = usize::try_from(n).map_err(|_| RlsError::Truncated)?;
        let end = self.pos.checked_add(n).ok_or(RlsError::Truncated)?;
        let bytes = self.buf.get(self.pos..end).ok_or(RlsError::Truncated)?;
        self.pos = end;
        Ok(bytes)
    }

    fn key(&mut self) -> Result<(u64, u8), RlsError> {
        let key = self.varint()?;
        let field = key >> 3;
        let wire_type = (key & 7) as u8;
        if field == 0 {
            return Err(RlsError::Malformed("field number 0"));
        }
        Ok((field, wire_type))
    }

    /// The next field: its number and value (groups and fixed-width values skipped).
    fn field(&mut self) -> Result<(u64, Value<'a>), RlsError> {
        let (field, wire_type) = self.key()?;
        let value = match wire_type {
            VARINT => Value::Varint(self.varint()?),
            LEN => {
                let n = self.varint()?;
                Value::Bytes(self.take(n)?)
            }
            FIXED64 => {
                self.take(8)?;
                Value::Other
            }
            FIXED32 => {
                self.take(4)?;
                Value::Other
            }
            START_GROUP => {
                self.skip_group(field)?;
                Value::Other
            }
            END_GROUP => return Err(RlsError::Malformed("end of a group that was not started")),
            _ => return Err(RlsError::Malformed("wire type 6 or 7")),
        };
        Ok((field, value))
    }

    /// Skips a group's fields up to its END_GROUP (iteratively; nested groups are counted).
    fn skip_group(&mut self, field: u64) -> Result<(), RlsError> {
        let mut open = vec![field];
        while let Some(&current) = open.last() {
            let (f, wire_type) = self.key()?;
            match wire_type {
                VARINT => {
                    self.varint()?;
                }
                LEN => {
                    let n = self.varint()?;
                    self.take(n)?;
                }
                FIXED64 => {
                    self.take(8)?;
                }
                FIXED32 => {
                    self.take(4)?;
                }
                START_GROUP => {
                    if open.len() >= MAX_GROUP_DEPTH {
                        return Err(RlsError::Malformed("groups nested too deep"));
                    }
                    open.push(f);
                }
                END_GROUP => {
                    if f != current {
                        return Err(RlsError::Malformed("group ends with another field number"));
                    }
                    open.pop();
                }
                _ => return Err(RlsError::Malformed("wire type 6 or 7")),
            }
        }
        Ok(())
    }
}

/// proto3 `int32` / enum from a varint: the low 32 bits, as protobuf parsers read them.
fn as_i32(v: u64) -> i32 {
    v as u32 as i32
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn decode_rate_limit(bytes: &[u8], into: &mut RateLimit) -> Result<(), RlsError> {
    let mut r = Reader::new(bytes);
    while !r.done() {
        match r.field()? {
            (1, Value::Varint(v)) => into.requests_per_unit = v as u32,
            (2, Value::Varint(v)) => into.unit = Unit::from_i32(as_i32(v)),
            (3, Value::Bytes(b)) => into.name = text(b),
            _ => {}
        }
    }
    Ok(())
}

fn decode_duration(bytes: &[u8], into: &mut Duration) -> Result<(), RlsError> {
    let mut r = Reader::new(bytes);
    while !r.done() {
        match r.field()? {
            (1, Value::Varint(v)) => into.seconds = v as i64,
            (2, Value::Varint(v)) => into.nanos = as_i32(v),
            _ => {}
        }
    }
    Ok(())
}

fn decode_status(bytes: &[u8]) -> Result<DescriptorStatus, RlsError> {
    let mut s = DescriptorStatus::default();
    let mut r = Reader::new(bytes);
    while !r.done() {
        match r.field()? {
            (1, Value::Varint(v)) => s.code = Code::from_i32(as_i32(v)),
            // Embedded messages seen twice merge, as in protobuf.
            (2, Value::Bytes(b)) => {
                decode_rate_limit(b, s.current_limit.get_or_insert_with(RateLimit::default))?
            }
            (3, Value::Varint(v)) => s.limit_remaining = v as u32,
            (4, Value::Bytes(b)) => decode_duration(
                b,
                s.duration_until_reset.get_or_insert_with(Duration::default),
            )?,
            _ => {}
        }
    }
    Ok(s)
}

fn decode_header(bytes: &[u8]) -> Result<(String, String), RlsError> {
    let (mut key, mut value, mut raw) = (String::new(), String::new(), String::new());
    let mut r = Reader::new(bytes);
    while !r.done() {
        match r.field()? {
            (1, Value::Bytes(b)) => key = text(b),
            (2, Value::Bytes(b)) => value = text(b),
            (3, Value::Bytes(b)) => raw = text(b),
            _ => {}
        }
    }
    Ok((key, if value.is_empty() { raw } else { value }))
}

/// Decodes a `RateLimitResponse`; unknown fields of every wire type are skipped, fields of a
/// known number but an unexpected wire type too. Never panics.
pub fn decode_should_rate_limit_response(bytes: &[u8]) -> Result<RlsResponse, RlsError> {
    let mut resp = RlsResponse::default();
    let mut r = Reader::new(bytes);
    while !r.done() {
        match r.field()? {
            (1, Value::Varint(v)) => resp.overall_code = Code::from_i32(as_i32(v)),
            (2, Value::Bytes(b)) => resp.statuses.push(decode_status(b)?),
            (3, Value::Bytes(b)) => resp.response_headers_to_add.push(decode_header(b)?),
            _ => {}
        }
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn request_bytes() {
        let bytes = encode_should_rate_limit("rl", &[d(&[("k", "v")])], 300);
        // 0a 02 "rl" | 12 08 (0a 06 (0a 01 "k" 12 01 "v")) | 18 ac 02
        assert_eq!(
            bytes,
            [
                0x0a, 2, b'r', b'l', 0x12, 8, 0x0a, 6, 0x0a, 1, b'k', 0x12, 1, b'v', 0x18, 0xac,
                0x02
            ]
        );
        // proto3 defaults are left out.
        assert_eq!(encode_should_rate_limit("", &[], 0), Vec::<u8>::new());
        // An empty descriptor is still sent (its position matters).
        assert_eq!(encode_should_rate_limit("", &[vec![]], 0), [0x12, 0]);
    }

    #[test]
    fn long_strings_use_multi_byte_lengths() {
        let long = "w".repeat(300);
        let bytes = encode_should_rate_limit(&long, &[], 1);
        assert_eq!(&bytes[..3], &[0x0a, 0xac, 0x02]);
        assert_eq!(bytes.len(), 3 + 300 + 2);
    }

    /// Test-only encoder of responses (with extra fields the decoder must skip).
    fn status(
        code: u64,
        limit: Option<(&str, u64, u64)>,
        remaining: u64,
        reset: Option<(u64, u64)>,
    ) -> Vec<u8> {
        let mut s = Vec::new();
        if code != 0 {
            put_key(&mut s, 1, VARINT);
            put_varint(&mut s, code);
        }
        if let Some((name, rpu, unit)) = limit {
            let mut l = Vec::new();
            put_key(&mut l, 1, VARINT);
            put_varint(&mut l, rpu);
            put_key(&mut l, 2, VARINT);
            put_varint(&mut l, unit);
            put_string(&mut l, 3, name);
            put_bytes(&mut s, 2, &l);
        }
        put_key(&mut s, 3, VARINT);
        put_varint(&mut s, remaining);
        if let Some((secs, nanos)) = reset {
            let mut dur = Vec::new();
            put_key(&mut dur, 1, VARINT);
            put_varint(&mut dur, secs);
            put_key(&mut dur, 2, VARINT);
            put_varint(&mut dur, nanos);
            put_bytes(&mut s, 4, &dur);
        }
        // quota (5): a message with a fixed field inside
        put_bytes(&mut s, 5, &[0x08, 0x05]);
        s
    }

    fn response(code: u64, statuses: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        // Unknown fields of every wire type first.
        put_key(&mut out, 99, FIXED64);
        out.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        put_key(&mut out, 98, FIXED32);
        out.extend_from_slice(&[1, 2, 3, 4]);
        put_key(&mut out, 97, START_GROUP);
        put_key(&mut out, 1, VARINT);
        put_varint(&mut out, 7);
        put_key(&mut out, 2, START_GROUP);
        put_key(&mut out, 2, END_GROUP);
        put_key(&mut out, 97, END_GROUP);
        put_bytes(&mut out, 5, b"raw body");
        put_key(&mut out, 1, VARINT);
        put_varint(&mut out, code);
        for s in statuses {
            put_bytes(&mut out, 2, s);
        }
        let mut h = Vec::new();
        put_string(&mut h, 1, "x-ratelimit-limit");
        put_string(&mut h, 2, "10");
        put_bytes(&mut out, 3, &h);
        let mut h = Vec::new();
        put_string(&mut h, 1, "x-raw");
        put_bytes(&mut h, 3, b"raw");
        put_bytes(&mut out, 3, &h);
        put_bytes(&mut out, 4, &h); // request_headers_to_add: skipped
        out
    }

    #[test]
    fn decodes_responses_and_skips_unknown_fields() {
        let bytes = response(
            2,
            &[
                status(1, Some(("per-workload", 1000, 2)), 400, None),
                status(2, Some(("per-model", 100, 2)), 0, Some((41, 500_000_000))),
                status(2, None, 0, Some((7, 0))),
            ],
        );
        let r = decode_should_rate_limit_response(&bytes).unwrap();
        assert_eq!(r.overall_code, Code::OverLimit);
        assert_eq!(r.statuses.len(), 3);
        assert_eq!(
            r.statuses[0].current_limit,
            Some(RateLimit {
                name: "per-workload".into(),
                requests_per_unit: 1000,
                unit: Unit::Minute
            })
        );
        assert_eq!(r.statuses[0].limit_remaining, 400);
        assert_eq!(
            r.statuses[1].duration_until_reset,
            Some(Duration {
                seconds: 41,
                nanos: 500_000_000
            })
        );
        assert_eq!(r.retry_after_s(), Some(42));
        assert_eq!(
            r.tightest().map(|(l, rem)| (l.requests_per_unit, rem)),
            Some((100, 0))
        );
        assert_eq!(
            r.response_headers_to_add,
            vec![
                ("x-ratelimit-limit".to_string(), "10".to_string()),
                ("x-raw".to_string(), "raw".to_string())
            ]
        );
        // Limitador's answers: just the code.
        assert_eq!(
            decode_should_rate_limit_response(&[0x08, 0x01]).unwrap(),
            RlsResponse {
                overall_code: Code::Ok,
                ..RlsResponse::default()
            }
        );
        assert_eq!(
            decode_should_rate_limit_response(&[]).unwrap().overall_code,
            Code::Unknown
        );
        // Open enums and units.
        let r = decode_should_rate_limit_response(&[0x08, 0x09]).unwrap();
        assert_eq!(r.overall_code, Code::Other(9));
        let mut l = Vec::new();
        put_key(&mut l, 2, VARINT);
        put_varint(&mut l, 7);
        let mut rl = RateLimit::default();
        decode_rate_limit(&l, &mut rl).unwrap();
        assert_eq!(rl.unit, Unit::Week);
        // Negative enum values are 10-byte varints.
        let mut neg = vec![0x08];
        put_varint(&mut neg, -1i64 as u64);
        assert_eq!(
            decode_should_rate_limit_response(&neg)
                .unwrap()
                .overall_code,
            Code::Other(-1)
        );
    }

    #[test]
    fn rejects_malformed_messages() {
        use RlsError::*;
        let dec = decode_should_rate_limit_response;
        assert_eq!(dec(&[0x08]), Err(Truncated));
        assert_eq!(dec(&[0x12, 5, 1]), Err(Truncated));
        assert_eq!(
            dec(&[0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
            Err(VarintTooLong)
        );
        assert!(matches!(dec(&[0x00, 0x01]), Err(Malformed(_))), "field 0");
        assert!(
            matches!(dec(&[0x0e, 0x01]), Err(Malformed(_))),
            "wire type 6"
        );
        assert!(matches!(dec(&[0x0c]), Err(Malformed(_))), "stray END_GROUP");
        assert_eq!(
            dec(&[0x0b, 0x08, 0x01]),
            Err(Truncated),
            "unterminated group"
        );
        assert!(
            matches!(dec(&[0x0b, 0x14]), Err(Malformed(_))),
            "group closed by another field"
        );
        // A status whose inside is broken breaks the answer.
        assert_eq!(dec(&[0x12, 0x02, 0x08, 0x80]), Err(Truncated));
        // Huge length prefixes do not overflow.
        let mut huge = vec![0x12];
        put_varint(&mut huge, u64::MAX);
        assert_eq!(dec(&huge), Err(Truncated));
        // Deeply nested groups are refused, not recursed into.
        let mut deep = Vec::new();
        for _ in 0..1000 {
            put_key(&mut deep, 1, START_GROUP);
        }
        assert!(matches!(dec(&deep), Err(Malformed(_))));
        // A known field with an unexpected wire type is skipped.
        assert_eq!(
            dec(&[0x0d, 1, 2, 3, 4]).unwrap().overall_code,
            Code::Unknown
        );
    }

    #[test]
    fn garbage_never_panics() {
        let mut rng = crate::fuzzing::Mutator::new(0x5eed_1234_abcd_0001);
        let valid = response(
            2,
            &[
                status(1, Some(("a", 10, 2)), 3, Some((5, 1))),
                status(2, None, 0, Some((1, 0))),
            ],
        );
        let mut decoded_ok = 0;
        for round in 0..200_000 {
            let bytes: Vec<u8> = if round % 2 == 0 {
                // Random bytes, biased towards small values and plausible keys.
                let len = rng.below(64);
                (0..len)
                    .map(|_| match rng.below(4) {
                        0 => rng.below(0x20) as u8,
                        1 => 0x80 | rng.below(0x80) as u8,
                        _ => rng.next_u64() as u8,
                    })
                    .collect()
            } else {
                // Mutations of a valid answer: flips, truncation, insertions.
                let mut b = valid.clone();
                for _ in 0..=rng.below(4) {
                    let i = rng.below(b.len());
                    match rng.below(3) {
                        0 => b[i] ^= 1 << rng.below(8),
                        1 => b.truncate(i),
                        _ => b.insert(i, rng.next_u64() as u8),
                    }
                    if b.is_empty() {
                        break;
                    }
                }
                b
            };
            if let Ok(r) = decode_should_rate_limit_response(&bytes) {
                decoded_ok += 1;
                let _ = r.retry_after_s();
                let _ = r.tightest();
            }
            let _ = check_outcome(0, &bytes, FailureMode::Deny, 60);
        }
        assert!(
            decoded_ok > 1000,
            "the loop also reaches the decoding paths ({decoded_ok})"
        );
    }

    #[test]
    fn scheme_calls() {
        let c = check_call(Protocol::Kuadrant, "azure-llm", "team-a", "gpt-4o");
        assert_eq!(
            (c.service, c.method),
            (KUADRANT_RLS_SERVICE, CHECK_RATE_LIMIT)
        );
        assert_eq!(
            c.message,
            encode_should_rate_limit(
                "azure-llm",
                &[
                    d(&[("workload", "team-a"), ("model", "gpt-4o")]),
                    d(&[("workload", "team-a")])
                ],
                1
            )
        );
        let r = charge_call(Protocol::Kuadrant, "azure-llm", "team-a", "gpt-4o", 57).unwrap();
        assert_eq!((r.service, r.method), (KUADRANT_RLS_SERVICE, REPORT));
        assert!(r.message.ends_with(&[0x18, 57]));
        assert_eq!(charge_call(Protocol::Kuadrant, "d", "w", "m", 0), None);
        assert!(charge_call(Protocol::Kuadrant, "d", "w", "m", 1).is_some());

        let c = check_call(Protocol::Envoy, "d", "w", "m");
        assert_eq!(
            (c.service, c.method),
            (ENVOY_RLS_SERVICE, SHOULD_RATE_LIMIT)
        );
        assert!(c.message.ends_with(&[0x18, 1]));
        let r = charge_call(Protocol::Envoy, "d", "w", "m", 57).unwrap();
        assert!(r.message.ends_with(&[0x18, 56]), "the check paid one token");
        assert_eq!(charge_call(Protocol::Envoy, "d", "w", "m", 1), None);
        assert_eq!(charge_call(Protocol::Envoy, "d", "w", "m", 0), None);
        let big = charge_call(Protocol::Kuadrant, "d", "w", "m", u64::MAX).unwrap();
        assert!(
            big.message.ends_with(&[0x18, 0xff, 0xff, 0xff, 0xff, 0x0f]),
            "clamped to u32"
        );
    }

    #[test]
    fn check_outcomes() {
        use CheckOutcome::*;
        let over = response(2, &[status(2, None, 0, Some((12, 0)))]);
        assert_eq!(
            check_outcome(0, &[0x08, 1], FailureMode::Deny, 60),
            Admit { degraded: false }
        );
        assert_eq!(
            check_outcome(0, &over, FailureMode::Allow, 60),
            OverLimit { retry_after_s: 12 }
        );
        // Limitador: no statuses, the configured fallback.
        assert_eq!(
            check_outcome(0, &[0x08, 2], FailureMode::Allow, 60),
            OverLimit { retry_after_s: 60 }
        );
        for (status, body) in [
            (14u32, &[][..]),
            (0, &[0x08, 0][..]),
            (0, &[0x08][..]),
            (4, &[0x08, 1][..]),
        ] {
            assert_eq!(
                check_outcome(status, body, FailureMode::Allow, 60),
                Admit { degraded: true }
            );
            assert!(matches!(
                check_outcome(status, body, FailureMode::Deny, 60),
                Unavailable { .. }
            ));
        }
    }

    #[test]
    fn global_config() {
        let raw: RawGlobal = serde_json::from_value(serde_json::json!({
            "cluster": "ratelimit", "domain": "azure-llm"
        }))
        .unwrap();
        let g = Global::from_raw("rate_limits.global", &raw).unwrap();
        assert_eq!(g.timeout_ms, DEFAULT_TIMEOUT_MS);
        assert_eq!(g.failure_mode, FailureMode::Allow);
        assert_eq!(g.protocol, Protocol::Kuadrant);
        assert_eq!(g.retry_after_s, DEFAULT_RETRY_AFTER_S);
        let raw: RawGlobal = serde_json::from_value(serde_json::json!({
            "cluster": "rls", "domain": "d", "timeout_ms": 50, "failure_mode": "deny",
            "protocol": "envoy", "retry_after_s": 5
        }))
        .unwrap();
        let g = Global::from_raw("rate_limits.global", &raw).unwrap();
        assert_eq!(
            (g.timeout_ms, g.failure_mode, g.protocol, g.retry_after_s),
            (50, FailureMode::Deny, Protocol::Envoy, 5)
        );
        assert_eq!(g.check_call("w", "m").method, SHOULD_RATE_LIMIT);
        let bad = RawGlobal {
            domain: String::new(),
            ..raw.clone()
        };
        assert_eq!(
            Global::from_raw("rate_limits.global", &bad)
                .unwrap_err()
                .field,
            "rate_limits.global.domain"
        );
        let bad = RawGlobal {
            timeout_ms: Some(0),
            ..raw.clone()
        };
        assert_eq!(
            Global::from_raw("rate_limits.global", &bad)
                .unwrap_err()
                .field,
            "rate_limits.global.timeout_ms"
        );
        assert!(serde_json::from_value::<RawGlobal>(serde_json::json!({
            "cluster": "rls", "domain": "d", "failure_mode": "maybe"
        }))
        .is_err());
        assert!(serde_json::from_value::<RawGlobal>(serde_json::json!({
            "cluster": "rls", "domain": "d", "extra": 1
        }))
        .is_err());
    }
}
