//! Per-workload token and request limits: the policy config and the counter arithmetic.
//!
//! Counters use fixed UTC windows (minute, hour, day, month), like APIM's token quotas. Each
//! counter is one shared-data slot per (workload, model scope, limit), holding the start of
//! its current window and the amount used in it; a new window resets the slot in place, so
//! memory is bounded by the number of (workload, model, limit) triples and needs no cleanup.
//! The host updates slots with CAS retry loops, which keeps counts exact across workers.
//!
//! Tokens are reserved at admission and reconciled at the end (`reserve`, the default): a
//! request takes its estimate (src/estimate.rs) from every token counter that applies, all or
//! none, and is refused when it does not fit; when its answer ends the reservation is replaced
//! by what the answer cost (src/settlement.rs says what that is when the usage cannot be
//! read). So concurrent requests at a budget's edge cannot all be admitted: what a window
//! consumes exceeds its budget only by how much real usage exceeds the estimates of the
//! requests it admitted. With `reserve: false` tokens are only charged after the answer (the
//! request that crosses a budget completes and the next one is refused; every request in
//! flight at the edge can overshoot). Requests are counted when admitted.
//!
//! A request whose estimate exceeds a counter's whole limit is refused whatever the window's
//! state (src/estimate.rs cuts only the policy's default completion allowance to the limit).
//!
//! Across a window boundary (admitted in one window, ended in the next) the reservation left
//! with the old window, whose counter is reset: the new window is charged what the real
//! usage exceeds the reservation by, and nothing is refunded. The sum over both windows is then
//! never less than the real usage, and the old window kept the reservation it admitted under.

use crate::config::error::ConfigError;
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Window {
    Minute,
    Hour,
    Day,
    Month,
}

impl Window {
    pub fn name(self) -> &'static str {
        match self {
            Window::Minute => "minute",
            Window::Hour => "hour",
            Window::Day => "day",
            Window::Month => "month",
        }
    }

    /// Start and end (Unix seconds, UTC) of the window containing `now_s`.
    pub fn bounds(self, now_s: u64) -> (u64, u64) {
        match self {
            Window::Minute => fixed(now_s, 60),
            Window::Hour => fixed(now_s, 3600),
            Window::Day => fixed(now_s, 86_400),
            Window::Month => month_bounds(now_s),
        }
    }
}

fn fixed(now_s: u64, len: u64) -> (u64, u64) {
    let start = now_s - now_s % len;
    (start, start + len)
}

/// Calendar month bounds in UTC (civil-from-days, Howard Hinnant's algorithm).
fn month_bounds(now_s: u64) -> (u64, u64) {
    let days = now_s / 86_400;
    let (y, m, _) = civil_from_days(days as i64);
    let start = days_from_civil(y, m, 1);
    let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    let end = days_from_civil(ny, nm, 1);
    (start as u64 * 86_400, end as u64 * 86_400)
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// What a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Unit {
    Tokens,
    Requests,
    /// Money, in pico-units (10⁻¹² of the price table's currency): the exact unit of
    /// `tokens × price per million` (src/pricing.rs).
    Cost,
}

impl Unit {
    pub fn name(self) -> &'static str {
        match self {
            Unit::Tokens => "tokens",
            Unit::Requests => "requests",
            Unit::Cost => "cost",
        }
    }
}

/// Pico-units in one micro-unit.
const PICO_PER_MICRO: u64 = 1_000_000;
/// The largest cost budget, in units of the currency: in pico-units it still fits a counter
/// (u64) with room for the overshoot of the requests in flight.
pub const MAX_COST_UNITS: u64 = 10_000_000;

/// One limit of a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub unit: Unit,
    pub window: Window,
    pub max: u64,
}

impl Limit {
    /// Per-minute limits are rates (429); longer windows are quotas (403), as in APIM.
    pub fn is_rate(&self) -> bool {
        self.window == Window::Minute
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    #[serde(default)]
    pub tokens_per_minute: Option<u64>,
    #[serde(default)]
    pub requests_per_minute: Option<u64>,
    #[serde(default)]
    pub tokens_per_hour: Option<u64>,
    #[serde(default)]
    pub tokens_per_day: Option<u64>,
    #[serde(default)]
    pub tokens_per_month: Option<u64>,
    /// Money per UTC day, in the `pricing` table's currency (at most six decimals): every
    /// model the policy applies to must have a price.
    #[serde(default)]
    pub cost_per_day: Option<f64>,
    /// Money per UTC calendar month, in the `pricing` table's currency.
    #[serde(default)]
    pub cost_per_month: Option<f64>,
    /// Tokens reserved for the answer of a request that sets no `max_tokens` (or
    /// `max_completion_tokens` / `max_output_tokens`), in this policy's counters; default
    /// `rate_limits.completion_reserve_tokens`.
    #[serde(default)]
    pub completion_reserve_tokens: Option<u64>,
    /// Learn the allowance of requests without a completion limit from this workload's real
    /// completions with the model (src/allowance.rs), `completion_reserve_tokens` being the
    /// cold start and the ceiling; false pins it. Default `rate_limits.learn_completion_reserve`.
    #[serde(default)]
    pub learn_completion_reserve: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawRateLimits {
    /// Applies to workloads without their own entry.
    #[serde(default)]
    pub default: Option<RawPolicy>,
    #[serde(default)]
    pub workloads: BTreeMap<String, RawPolicy>,
    /// Extra limits per (workload, model), keyed by model name; they apply to each workload
    /// separately, on top of the workload's own policy.
    #[serde(default)]
    pub models: BTreeMap<String, RawPolicy>,
    /// With `reserve: false`: refuse a request whose prompt estimate (body bytes / 4) exceeds
    /// the tokens left (with reservation, the whole estimate always has to fit).
    #[serde(default)]
    pub estimate_prompt_tokens: bool,
    /// Reserve each request's estimate at admission and reconcile with the real usage at the
    /// end (default true); false: charge only after the answer, as before.
    #[serde(default)]
    pub reserve: Option<bool>,
    /// Tokens reserved for the answer of a request that sets no completion limit (default
    /// 1024); policies can set their own.
    #[serde(default)]
    pub completion_reserve_tokens: Option<u64>,
    /// Learn the completion allowance from real completions (default true); policies can set
    /// their own.
    #[serde(default)]
    pub learn_completion_reserve: Option<bool>,
    /// Budgets shared by a fleet of Envoys, kept by a rate limit service (src/rls/). Local
    /// limits above, if any, apply as well.
    #[serde(default)]
    pub global: Option<crate::rls::RawGlobal>,
}

/// Default completion allowance of requests that set no completion limit.
pub const DEFAULT_COMPLETION_RESERVE: u64 = 1024;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    pub limits: Vec<Limit>,
    pub completion_reserve_tokens: Option<u64>,
    pub learn_completion_reserve: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimits {
    pub default: Option<Policy>,
    pub workloads: BTreeMap<String, Policy>,
    pub models: BTreeMap<String, Policy>,
    pub estimate_prompt_tokens: bool,
    pub reserve: bool,
    pub completion_reserve_tokens: u64,
    pub learn_completion_reserve: bool,
    pub global: Option<crate::rls::Global>,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            default: None,
            workloads: BTreeMap::new(),
            models: BTreeMap::new(),
            estimate_prompt_tokens: false,
            reserve: true,
            completion_reserve_tokens: DEFAULT_COMPLETION_RESERVE,
            learn_completion_reserve: true,
            global: None,
        }
    }
}

fn policy(field: &str, raw: &RawPolicy) -> Result<Policy, ConfigError> {
    let mut limits = Vec::new();
    let entries = [
        (
            "tokens_per_minute",
            raw.tokens_per_minute,
            Unit::Tokens,
            Window::Minute,
        ),
        (
            "requests_per_minute",
            raw.requests_per_minute,
            Unit::Requests,
            Window::Minute,
        ),
        (
            "tokens_per_hour",
            raw.tokens_per_hour,
            Unit::Tokens,
            Window::Hour,
        ),
        (
            "tokens_per_day",
            raw.tokens_per_day,
            Unit::Tokens,
            Window::Day,
        ),
        (
            "tokens_per_month",
            raw.tokens_per_month,
            Unit::Tokens,
            Window::Month,
        ),
    ];
    for (name, value, unit, window) in entries {
        if let Some(max) = value {
            if max == 0 {
                return Err(ConfigError {
                    field: format!("{field}.{name}"),
                    reason: "must be at least 1 (leave it out for no limit)".into(),
                });
            }
            limits.push(Limit { unit, window, max });
        }
    }
    for (name, value, window) in [
        ("cost_per_day", raw.cost_per_day, Window::Day),
        ("cost_per_month", raw.cost_per_month, Window::Month),
    ] {
        if let Some(amount) = value {
            let at = format!("{field}.{name}");
            let micros = crate::pricing::micros(amount, &at, MAX_COST_UNITS, "units")?;
            if micros == 0 {
                return Err(ConfigError {
                    field: at,
                    reason: "must be more than 0 (leave it out for no limit)".into(),
                });
            }
            limits.push(Limit {
                unit: Unit::Cost,
                window,
                max: micros * PICO_PER_MICRO,
            });
        }
    }
    Ok(Policy {
        limits,
        completion_reserve_tokens: raw.completion_reserve_tokens,
        learn_completion_reserve: raw.learn_completion_reserve,
    })
}

impl RateLimits {
    pub fn from_raw(
        raw: &RawRateLimits,
        known_model: impl Fn(&str) -> bool,
    ) -> Result<RateLimits, ConfigError> {
        let default = raw
            .default
            .as_ref()
            .map(|p| policy("rate_limits.default", p))
            .transpose()?;
        let mut workloads = BTreeMap::new();
        for (name, p) in &raw.workloads {
            workloads.insert(
                name.clone(),
                policy(&format!("rate_limits.workloads.{name}"), p)?,
            );
        }
        let mut models = BTreeMap::new();
        for (name, p) in &raw.models {
            let field = format!("rate_limits.models.{name}");
            if !known_model(name) {
                return Err(ConfigError {
                    field,
                    reason: "is not a model of `models` (limit the model, not an alias)".into(),
                });
            }
            models.insert(name.clone(), policy(&field, p)?);
        }
        let global = raw
            .global
            .as_ref()
            .map(|g| crate::rls::Global::from_raw("rate_limits.global", g))
            .transpose()?;
        Ok(RateLimits {
            default,
            workloads,
            models,
            estimate_prompt_tokens: raw.estimate_prompt_tokens,
            reserve: raw.reserve.unwrap_or(true),
            completion_reserve_tokens: raw
                .completion_reserve_tokens
                .unwrap_or(DEFAULT_COMPLETION_RESERVE),
            learn_completion_reserve: raw.learn_completion_reserve.unwrap_or(true),
            global,
        })
    }

    /// The counters that apply to a request of `workload` for `model`.
    pub fn applicable(&self, workload: &str, model: &str) -> Vec<Counter> {
        let mut out = Vec::new();
        let reserve = |p: &Policy| {
            p.completion_reserve_tokens
                .unwrap_or(self.completion_reserve_tokens)
        };
        let learn = |p: &Policy| {
            p.learn_completion_reserve
                .unwrap_or(self.learn_completion_reserve)
        };
        if let Some(p) = self.workloads.get(workload).or(self.default.as_ref()) {
            out.extend(p.limits.iter().map(|l| Counter {
                workload: workload.to_string(),
                model: None,
                limit: *l,
                completion_reserve: reserve(p),
                learn: learn(p),
            }));
        }
        if let Some(p) = self.models.get(model) {
            out.extend(p.limits.iter().map(|l| Counter {
                workload: workload.to_string(),
                model: Some(model.to_string()),
                limit: *l,
                completion_reserve: reserve(p),
                learn: learn(p),
            }));
        }
        out
    }

    /// A cost budget can only be kept for priced models: the first policy with one that
    /// applies to a model `priced` does not know is an error naming both. A workload's policy
    /// (`default`, `workloads.<name>`) applies to every model of `models`.
    pub fn check_priced<'m>(
        &self,
        models: impl Iterator<Item = &'m str> + Clone,
        priced: impl Fn(&str) -> bool,
    ) -> Result<(), ConfigError> {
        let has_cost = |p: &Policy| p.limits.iter().any(|l| l.unit == Unit::Cost);
        let workload_policies = self
            .default
            .iter()
            .map(|p| ("rate_limits.default".to_string(), p))
            .chain(
                self.workloads
                    .iter()
                    .map(|(w, p)| (format!("rate_limits.workloads.{w}"), p)),
            );
        for (field, p) in workload_policies.filter(|(_, p)| has_cost(p)) {
            if let Some(m) = models.clone().find(|m| !priced(m)) {
                return Err(unpriced(&field, p, m));
            }
        }
        let global_cost = self
            .global
            .as_ref()
            .is_some_and(|g| g.cost_domain.is_some());
        if let Some(m) = models.clone().find(|m| global_cost && !priced(m)) {
            return Err(ConfigError {
                field: "rate_limits.global.cost_domain".into(),
                reason: format!(
                    "model `{m}` has no price in `pricing.models`: the rate limit service's cost budgets need the price of every model"
                ),
            });
        }
        for (m, p) in self.models.iter().filter(|(_, p)| has_cost(p)) {
            if !priced(m) {
                return Err(unpriced(&format!("rate_limits.models.{m}"), p, m));
            }
        }
        Ok(())
    }

    /// No local limit (a global budget may still apply).
    pub fn is_empty(&self) -> bool {
        self.default.is_none() && self.workloads.is_empty() && self.models.is_empty()
    }
}

fn unpriced(field: &str, p: &Policy, model: &str) -> ConfigError {
    let name = match p.limits.iter().find(|l| l.unit == Unit::Cost) {
        Some(l) if l.window == Window::Day => "cost_per_day",
        _ => "cost_per_month",
    };
    ConfigError {
        field: format!("{field}.{name}"),
        reason: format!(
            "model `{model}` has no price in `pricing.models`: a cost budget needs the price of every model it applies to"
        ),
    }
}

/// One counter: a limit for a workload, optionally narrowed to a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counter {
    pub workload: String,
    pub model: Option<String>,
    pub limit: Limit,
    /// Completion allowance of its policy for requests that set no completion limit.
    pub completion_reserve: u64,
    /// The allowance is learned (`completion_reserve` is then its cold start and ceiling).
    pub learn: bool,
}

impl Counter {
    /// The completion allowance of a request without a completion limit in this counter,
    /// given the workload's learned completions with the model (src/allowance.rs).
    pub fn allowance(&self, learned: Option<&crate::allowance::Completions>) -> u64 {
        match learned {
            Some(c) if self.learn => c.allowance(self.completion_reserve),
            _ => self.completion_reserve,
        }
    }
}

impl Counter {
    /// Shared-data key of the counter's slot.
    pub fn key(&self) -> String {
        // `concat`, not `format!`: built twice per limited request.
        [
            "azure_llm_filter.rl.",
            self.limit.unit.name(),
            ".",
            self.limit.window.name(),
            ".",
            self.model.as_deref().unwrap_or("*"),
            ".",
            &self.workload,
        ]
        .concat()
    }
}

/// A counter's slot: the window it counts and what was used in it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Slot {
    pub window_start: u64,
    pub used: u64,
}

impl Slot {
    pub fn decode(bytes: &[u8]) -> Slot {
        let text = std::str::from_utf8(bytes).unwrap_or("");
        let mut parts = text.split(' ');
        let window_start = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        let used = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        Slot { window_start, used }
    }

    pub fn encode(&self) -> Vec<u8> {
        format!("{} {}", self.window_start, self.used).into_bytes()
    }

    /// Used amount in the window containing `now_s` (0 once the slot's window is over).
    pub fn used_in(&self, window: Window, now_s: u64) -> u64 {
        if self.window_start == window.bounds(now_s).0 {
            self.used
        } else {
            0
        }
    }

    /// The slot after adding `amount` at `now_s`.
    pub fn add(&self, window: Window, now_s: u64, amount: u64) -> Slot {
        let start = window.bounds(now_s).0;
        Slot {
            window_start: start,
            used: self.used_in(window, now_s).saturating_add(amount),
        }
    }

    /// The slot after taking `need.take` at `now_s`, if `need.require` still fits under the
    /// limit.
    pub fn take(&self, limit: Limit, now_s: u64, need: Need) -> Option<Slot> {
        let used = self.used_in(limit.window, now_s);
        (used.saturating_add(need.require) <= limit.max)
            .then(|| self.add(limit.window, now_s, need.take))
    }

    /// The slot after a request that took `held.taken` in the window starting at
    /// `held.window_start` ended costing `actual`: in that same window the reservation is
    /// replaced (up or down); in a later one only what `actual` exceeds it by is added (see
    /// the module's doc).
    pub fn settle(&self, window: Window, now_s: u64, held: Held, actual: u64) -> Slot {
        let current = window.bounds(now_s).0;
        if current != held.window_start {
            return self.add(window, now_s, actual.saturating_sub(held.taken));
        }
        Slot {
            window_start: current,
            used: self
                .used_in(window, now_s)
                .saturating_sub(held.taken)
                .saturating_add(actual),
        }
    }
}

/// What a request takes from one counter at admission (`take`), and what must be left in it
/// for the request to be admitted (`require`, at least 1: a spent budget admits nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Need {
    pub take: u64,
    pub require: u64,
}

impl Need {
    /// What a request estimated at `estimate` tokens (src/estimate.rs, for this counter's
    /// policy) needs from a counter. `reserve`: the reservation mode; else charge-after, where
    /// only `prompt_estimate` (when `estimate_prompt_tokens` is on) has to fit.
    pub fn of(limit: Limit, reserve: bool, estimate: u64, prompt_estimate: Option<u64>) -> Need {
        match limit.unit {
            Unit::Requests => Need {
                take: 1,
                require: 1,
            },
            Unit::Tokens | Unit::Cost if reserve => Need {
                take: estimate,
                require: estimate.max(1),
            },
            Unit::Tokens => Need {
                take: 0,
                require: prompt_estimate.unwrap_or(0).max(1),
            },
            Unit::Cost => Need {
                take: 0,
                require: 1,
            },
        }
    }
}

/// What a request holds in one counter between admission and its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    /// Start of the window the request was admitted in.
    pub window_start: u64,
    pub taken: u64,
}

/// The state of one counter at admission time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    pub limit: Limit,
    pub used: u64,
    pub reset_at_s: u64,
}

impl Standing {
    pub fn remaining(&self) -> u64 {
        self.limit.max.saturating_sub(self.used)
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub limit: Limit,
    pub retry_after_s: u64,
    /// The request needs more than the whole limit: waiting will not help.
    pub never_fits: Option<u64>,
}

impl Refusal {
    pub fn status(&self) -> u32 {
        if self.limit.is_rate() {
            429
        } else {
            403
        }
    }
}

/// Why a request whose `needs` did not all fit is refused, from the counters' standings
/// (without this request): the refusal the caller must wait longest for, quotas before rates.
/// None if everything fits after all (counters changed meanwhile).
pub fn refusal(standings: &[Standing], needs: &[Need], now_s: u64) -> Option<Refusal> {
    let mut worst: Option<Refusal> = None;
    for (s, need) in standings.iter().zip(needs) {
        if s.used.saturating_add(need.require) > s.limit.max {
            let r = Refusal {
                limit: s.limit,
                retry_after_s: s.reset_at_s.saturating_sub(now_s).max(1),
                never_fits: (need.require > s.limit.max).then_some(need.require),
            };
            if worst.is_none_or(|w| {
                (!r.limit.is_rate(), r.retry_after_s) > (!w.limit.is_rate(), w.retry_after_s)
            }) {
                worst = Some(r);
            }
        }
    }
    worst
}

/// The refusal for `limit` alone.
pub fn refusal_of(limit: Limit, now_s: u64) -> Refusal {
    Refusal {
        limit,
        retry_after_s: limit.window.bounds(now_s).1.saturating_sub(now_s).max(1),
        never_fits: None,
    }
}

/// `x-ratelimit-*` response headers from the tightest token and request standings.
pub fn headers(standings: &[Standing], now_s: u64) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let tightest = |unit: Unit| {
        standings
            .iter()
            .filter(|s| s.limit.unit == unit)
            .min_by_key(|s| s.remaining())
    };
    if let Some(s) = tightest(Unit::Tokens) {
        out.push(("x-ratelimit-limit-tokens", s.limit.max.to_string()));
        out.push(("x-ratelimit-remaining-tokens", s.remaining().to_string()));
        out.push((
            "x-ratelimit-reset-tokens",
            format!("{}s", s.reset_at_s.saturating_sub(now_s)),
        ));
    }
    if let Some(s) = tightest(Unit::Requests) {
        out.push(("x-ratelimit-limit-requests", s.limit.max.to_string()));
        out.push(("x-ratelimit-remaining-requests", s.remaining().to_string()));
        out.push((
            "x-ratelimit-reset-requests",
            format!("{}s", s.reset_at_s.saturating_sub(now_s)),
        ));
    }
    // Money in the price table's currency, six decimals (the remaining amount cut down).
    if let Some(s) = tightest(Unit::Cost) {
        let pico = crate::pricing::format_pico;
        out.push(("x-ratelimit-limit-cost", pico(s.limit.max)));
        out.push(("x-ratelimit-remaining-cost", pico(s.remaining())));
        out.push((
            "x-ratelimit-reset-cost",
            format!("{}s", s.reset_at_s.saturating_sub(now_s)),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_795_000_000; // 2026-11-18

    #[test]
    fn windows() {
        assert_eq!(Window::Minute.bounds(125), (120, 180));
        assert_eq!(Window::Hour.bounds(3700), (3600, 7200));
        // 2024-02-15 -> February of a leap year.
        let feb15 = days_from_civil(2024, 2, 15) as u64 * 86_400 + 1234;
        let (s, e) = Window::Month.bounds(feb15);
        assert_eq!(s, days_from_civil(2024, 2, 1) as u64 * 86_400);
        assert_eq!(e - s, 29 * 86_400);
        let dec = days_from_civil(2025, 12, 31) as u64 * 86_400;
        let (s, e) = Window::Month.bounds(dec);
        assert_eq!(e, days_from_civil(2026, 1, 1) as u64 * 86_400);
        assert_eq!(e - s, 31 * 86_400);
        assert_eq!(civil_from_days(0), (1970, 1, 1));
    }

    #[test]
    fn slot_resets_with_window() {
        let s = Slot::default().add(Window::Minute, T0, 100);
        assert_eq!(s.used_in(Window::Minute, T0 + 1), 100);
        let next = Window::Minute.bounds(T0).1;
        assert_eq!(s.used_in(Window::Minute, next), 0);
        assert_eq!(s.add(Window::Minute, next, 5).used, 5);
        assert_eq!(Slot::decode(&s.encode()), s);
        assert_eq!(Slot::decode(b"junk"), Slot::default());
    }

    fn standing(unit: Unit, window: Window, max: u64, used: u64) -> Standing {
        Standing {
            limit: Limit { unit, window, max },
            used,
            reset_at_s: window.bounds(T0).1,
        }
    }

    fn tokens(max: u64) -> Limit {
        Limit {
            unit: Unit::Tokens,
            window: Window::Minute,
            max,
        }
    }

    #[test]
    fn admission_and_retry_after() {
        let reserve = |l: Limit, e: u64| Need::of(l, true, e, None);
        let ok = [standing(Unit::Tokens, Window::Minute, 1000, 999)];
        assert_eq!(refusal(&ok, &[reserve(ok[0].limit, 1)], T0), None);
        assert!(refusal(&ok, &[reserve(ok[0].limit, 2)], T0).is_some());
        let spent = [standing(Unit::Tokens, Window::Minute, 1000, 1000)];
        let r = refusal(&spent, &[reserve(spent[0].limit, 0)], T0).unwrap();
        assert_eq!(r.status(), 429);
        assert_eq!(r.retry_after_s, Window::Minute.bounds(T0).1 - T0);
        assert_eq!(refusal_of(spent[0].limit, T0), r);
        let quota = [
            standing(Unit::Tokens, Window::Minute, 1000, 1000),
            standing(Unit::Tokens, Window::Day, 5000, 6000),
        ];
        let needs = [reserve(quota[0].limit, 5), reserve(quota[1].limit, 5)];
        assert_eq!(refusal(&quota, &needs, T0).unwrap().status(), 403);
        // Charge-after: a spent budget refuses; the prompt estimate only when it is on.
        let after = |e: Option<u64>| Need::of(ok[0].limit, false, 500, e);
        assert_eq!(after(None).take, 0);
        assert_eq!(refusal(&ok, &[after(None)], T0), None);
        assert!(refusal(&ok, &[after(Some(2))], T0).is_some());
        let req = [standing(Unit::Requests, Window::Minute, 2, 1)];
        let one = Need::of(req[0].limit, true, 500, None);
        assert_eq!(
            refusal(&req, &[one], T0),
            None,
            "this request is the 2nd of 2"
        );
        let req = [standing(Unit::Requests, Window::Minute, 2, 2)];
        assert!(refusal(&req, &[one], T0).is_some());
    }

    #[test]
    fn reservations_fit_or_not() {
        let l = tokens(1000);
        let need = |e| Need::of(l, true, e, None);
        let s = Slot::default().take(l, T0, need(600)).unwrap();
        assert_eq!(s.used, 600);
        assert_eq!(s.take(l, T0, need(400)).unwrap().used, 1000);
        assert_eq!(s.take(l, T0, need(401)), None);
        // Larger than the whole limit: never, and the refusal says so.
        assert_eq!(Slot::default().take(l, T0, need(1001)), None);
        let fresh = [Standing {
            limit: l,
            used: 0,
            reset_at_s: Window::Minute.bounds(T0).1,
        }];
        assert_eq!(
            refusal(&fresh, &[need(1001)], T0).unwrap().never_fits,
            Some(1001)
        );
        assert_eq!(refusal(&fresh, &[need(1000)], T0), None);
        // A spent window refuses even a zero estimate; the next window admits again.
        let full = Slot::default().add(Window::Minute, T0, 1000);
        assert_eq!(full.take(l, T0, need(0)), None);
        let next = Window::Minute.bounds(T0).1;
        assert_eq!(full.take(l, next, need(10)).unwrap().used, 10);
    }

    #[test]
    fn settling_replaces_the_reservation_and_never_refunds_a_past_window() {
        let w = Window::Minute;
        let held = Held {
            window_start: w.bounds(T0).0,
            taken: 300,
        };
        let slot = Slot::default().add(w, T0, 500); // 300 of it are this request's
        assert_eq!(slot.settle(w, T0 + 1, held, 120).used, 320);
        assert_eq!(slot.settle(w, T0 + 1, held, 900).used, 1100);
        assert_eq!(slot.settle(w, T0 + 1, held, 0).used, 200);
        // Another request's settlement underflowing cannot wrap.
        assert_eq!(Slot::default().settle(w, T0, held, 10).used, 10);
        // Ended in the next window: only the excess is charged there.
        let next = w.bounds(T0).1 + 5;
        let fresh = slot.add(w, next, 40);
        assert_eq!(fresh.used, 40);
        assert_eq!(fresh.settle(w, next, held, 100).used, 40);
        assert_eq!(fresh.settle(w, next, held, 450).used, 190);
    }

    #[test]
    fn applicable_counters_and_config() {
        let raw: RawRateLimits = serde_json::from_value(serde_json::json!({
            "default": {"tokens_per_minute": 100},
            "workloads": {"big": {"tokens_per_minute": 1000, "tokens_per_day": 9000}},
            "models": {"gpt-4o": {"requests_per_minute": 5, "completion_reserve_tokens": 4096}}
        }))
        .unwrap();
        let rl = RateLimits::from_raw(&raw, |m| m == "gpt-4o").unwrap();
        assert!(rl.reserve);
        assert_eq!(rl.completion_reserve_tokens, DEFAULT_COMPLETION_RESERVE);
        let c = rl.applicable("small", "other");
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].limit.max, 100);
        let c = rl.applicable("big", "gpt-4o");
        assert_eq!(c.len(), 3);
        assert_ne!(c[0].key(), c[2].key());
        assert!(c[2].key().contains("gpt-4o"));
        assert_eq!(c[0].completion_reserve, DEFAULT_COMPLETION_RESERVE);
        assert_eq!(c[2].completion_reserve, 4096);
        let bad: RawRateLimits = serde_json::from_value(
            serde_json::json!({"models": {"nope": {"tokens_per_minute": 1}}}),
        )
        .unwrap();
        assert_eq!(
            RateLimits::from_raw(&bad, |_| false).unwrap_err().field,
            "rate_limits.models.nope"
        );
        let zero: RawRateLimits =
            serde_json::from_value(serde_json::json!({"default": {"tokens_per_minute": 0}}))
                .unwrap();
        assert_eq!(
            RateLimits::from_raw(&zero, |_| true).unwrap_err().field,
            "rate_limits.default.tokens_per_minute"
        );
    }

    #[test]
    fn cost_budgets_are_exact_pico_units_and_need_prices() {
        let raw: RawRateLimits = serde_json::from_value(serde_json::json!({
            "workloads": {"team-a": {"cost_per_month": 100.25, "cost_per_day": 0.000001}},
            "models": {"gpt-4o": {"cost_per_day": 5}}
        }))
        .unwrap();
        let rl = RateLimits::from_raw(&raw, |m| m == "gpt-4o").unwrap();
        let c = rl.applicable("team-a", "gpt-4o");
        let cost: Vec<(Window, u64)> = c.iter().map(|c| (c.limit.window, c.limit.max)).collect();
        assert_eq!(
            cost,
            [
                (Window::Day, 1_000_000),
                (Window::Month, 100_250_000_000_000),
                (Window::Day, 5_000_000_000_000)
            ]
        );
        assert!(c
            .iter()
            .all(|c| c.limit.unit == Unit::Cost && !c.limit.is_rate()));
        assert_eq!(c[0].key(), "azure_llm_filter.rl.cost.day.*.team-a");
        // Every model a workload's cost budget applies to needs a price; a model's own, its.
        let models = ["gpt-4o", "mistral"];
        let e = rl
            .check_priced(models.iter().copied(), |m| m == "gpt-4o")
            .unwrap_err();
        assert_eq!(e.field, "rate_limits.workloads.team-a.cost_per_day");
        assert!(e.reason.contains("`mistral`"), "{e:?}");
        assert!(rl.check_priced(models.iter().copied(), |_| true).is_ok());
        let only_model: RawRateLimits = serde_json::from_value(
            serde_json::json!({"models": {"gpt-4o": {"cost_per_month": 5}}}),
        )
        .unwrap();
        let rl = RateLimits::from_raw(&only_model, |_| true).unwrap();
        assert!(rl
            .check_priced(models.iter().copied(), |m| m == "gpt-4o")
            .is_ok());
        assert_eq!(
            rl.check_priced(models.iter().copied(), |_| false)
                .unwrap_err()
                .field,
            "rate_limits.models.gpt-4o.cost_per_month"
        );
        // Bad amounts name the field.
        for (v, field) in [
            (
                serde_json::json!({"default": {"cost_per_day": 0}}),
                "rate_limits.default.cost_per_day",
            ),
            (
                serde_json::json!({"default": {"cost_per_day": -1}}),
                "rate_limits.default.cost_per_day",
            ),
            (
                serde_json::json!({"default": {"cost_per_month": 0.0000001}}),
                "rate_limits.default.cost_per_month",
            ),
            (
                serde_json::json!({"default": {"cost_per_month": 1e8}}),
                "rate_limits.default.cost_per_month",
            ),
        ] {
            let raw: RawRateLimits = serde_json::from_value(v.clone()).unwrap();
            assert_eq!(
                RateLimits::from_raw(&raw, |_| true).unwrap_err().field,
                field,
                "{v}"
            );
        }
        // The largest budget and a request in flight fit a counter.
        assert!((MAX_COST_UNITS * PICO_PER_MICRO * PICO_PER_MICRO)
            .checked_mul(1)
            .is_some());
    }

    #[test]
    fn cost_headers_are_money_with_six_decimals() {
        let s = [Standing {
            limit: Limit {
                unit: Unit::Cost,
                window: Window::Month,
                max: 100_000_000_000_000,
            },
            used: 12_345_678_901_234,
            reset_at_s: Window::Month.bounds(T0).1,
        }];
        let h = headers(&s, T0);
        assert!(h.contains(&("x-ratelimit-limit-cost", "100.000000".to_string())));
        assert!(h.contains(&("x-ratelimit-remaining-cost", "87.654321".to_string())));
        assert!(h
            .iter()
            .any(|(k, v)| *k == "x-ratelimit-reset-cost" && v.ends_with('s')));
        assert!(!h.iter().any(|(k, _)| k.ends_with("-tokens")));
    }

    #[test]
    fn response_headers() {
        let s = [
            standing(Unit::Tokens, Window::Minute, 1000, 300),
            standing(Unit::Tokens, Window::Day, 5000, 4900),
            standing(Unit::Requests, Window::Minute, 10, 4),
        ];
        let h = headers(&s, T0);
        assert!(h.contains(&("x-ratelimit-remaining-tokens", "100".to_string())));
        assert!(h.contains(&("x-ratelimit-limit-tokens", "5000".to_string())));
        assert!(h.contains(&("x-ratelimit-remaining-requests", "6".to_string())));
    }
}
