//! Per-workload token and request limits: the policy config and the counter arithmetic.
//!
//! Counters use fixed UTC windows (minute, hour, day, month), like APIM's token quotas. Each
//! counter is one shared-data slot per (workload, model scope, limit), holding the start of
//! its current window and the amount used in it; a new window resets the slot in place, so
//! memory is bounded by the number of (workload, model, limit) triples and needs no cleanup.
//! The host updates slots with CAS retry loops, which keeps counts exact across workers.
//!
//! Tokens are charged after the response from its real `usage` (streams included), so the
//! request that crosses a budget completes and the next one is refused: at most one
//! in-flight request per worker can overshoot. Requests are counted when admitted.

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
}

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

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
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
    /// Refuse a request whose prompt estimate (body bytes / 4) exceeds the tokens left.
    #[serde(default)]
    pub estimate_prompt_tokens: bool,
    /// Budgets shared by a fleet of Envoys, kept by a rate limit service (src/rls/). Local
    /// limits above, if any, apply as well.
    #[serde(default)]
    pub global: Option<crate::rls::RawGlobal>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    pub limits: Vec<Limit>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RateLimits {
    pub default: Option<Policy>,
    pub workloads: BTreeMap<String, Policy>,
    pub models: BTreeMap<String, Policy>,
    pub estimate_prompt_tokens: bool,
    pub global: Option<crate::rls::Global>,
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
    Ok(Policy { limits })
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
                    reason: "no model of that name in models".into(),
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
            global,
        })
    }

    /// The counters that apply to a request of `workload` for `model`.
    pub fn applicable(&self, workload: &str, model: &str) -> Vec<Counter> {
        let mut out = Vec::new();
        if let Some(p) = self.workloads.get(workload).or(self.default.as_ref()) {
            out.extend(p.limits.iter().map(|l| Counter {
                workload: workload.to_string(),
                model: None,
                limit: *l,
            }));
        }
        if let Some(p) = self.models.get(model) {
            out.extend(p.limits.iter().map(|l| Counter {
                workload: workload.to_string(),
                model: Some(model.to_string()),
                limit: *l,
            }));
        }
        out
    }

    /// No local limit (a global budget may still apply).
    pub fn is_empty(&self) -> bool {
        self.default.is_none() && self.workloads.is_empty() && self.models.is_empty()
    }
}

/// One counter: a limit for a workload, optionally narrowed to a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counter {
    pub workload: String,
    pub model: Option<String>,
    pub limit: Limit,
}

impl Counter {
    /// Shared-data key of the counter's slot.
    pub fn key(&self) -> String {
        format!(
            "azure_llm_filter.rl.{}.{}.{}.{}",
            match self.limit.unit {
                Unit::Tokens => "tokens",
                Unit::Requests => "requests",
            },
            self.limit.window.name(),
            self.model.as_deref().unwrap_or("*"),
            self.workload
        )
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

/// Decides admission from the counters' standings. `requests` counters must already include
/// this request (the host counts it when checking). `prompt_estimate`: tokens the prompt is
/// guessed to cost, when estimation is on.
pub fn admit(
    standings: &[Standing],
    now_s: u64,
    prompt_estimate: Option<u64>,
) -> Result<(), Refusal> {
    let mut worst: Option<Refusal> = None;
    for s in standings {
        let over = match s.limit.unit {
            Unit::Requests => s.used > s.limit.max,
            Unit::Tokens => {
                s.used >= s.limit.max || prompt_estimate.is_some_and(|e| e > s.remaining())
            }
        };
        if over {
            let r = Refusal {
                limit: s.limit,
                retry_after_s: s.reset_at_s.saturating_sub(now_s).max(1),
            };
            // Report the refusal the caller must wait longest for; quotas trump rates.
            if worst.is_none_or(|w| {
                (!r.limit.is_rate(), r.retry_after_s) > (!w.limit.is_rate(), w.retry_after_s)
            }) {
                worst = Some(r);
            }
        }
    }
    worst.map_or(Ok(()), Err)
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

    #[test]
    fn admission_and_retry_after() {
        let ok = [standing(Unit::Tokens, Window::Minute, 1000, 999)];
        assert!(admit(&ok, T0, None).is_ok());
        let spent = [standing(Unit::Tokens, Window::Minute, 1000, 1000)];
        let r = admit(&spent, T0, None).unwrap_err();
        assert_eq!(r.status(), 429);
        assert_eq!(r.retry_after_s, Window::Minute.bounds(T0).1 - T0);
        let quota = [
            standing(Unit::Tokens, Window::Minute, 1000, 1000),
            standing(Unit::Tokens, Window::Day, 5000, 6000),
        ];
        assert_eq!(admit(&quota, T0, None).unwrap_err().status(), 403);
        assert!(
            admit(&ok, T0, Some(2)).is_err(),
            "estimate exceeds what is left"
        );
        let req = [standing(Unit::Requests, Window::Minute, 2, 2)];
        assert!(
            admit(&req, T0, None).is_ok(),
            "this request is the 2nd of 2"
        );
        let req = [standing(Unit::Requests, Window::Minute, 2, 3)];
        assert!(admit(&req, T0, None).is_err());
    }

    #[test]
    fn applicable_counters_and_config() {
        let raw: RawRateLimits = serde_json::from_value(serde_json::json!({
            "default": {"tokens_per_minute": 100},
            "workloads": {"big": {"tokens_per_minute": 1000, "tokens_per_day": 9000}},
            "models": {"gpt-4o": {"requests_per_minute": 5}}
        }))
        .unwrap();
        let rl = RateLimits::from_raw(&raw, |m| m == "gpt-4o").unwrap();
        let c = rl.applicable("small", "other");
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].limit.max, 100);
        let c = rl.applicable("big", "gpt-4o");
        assert_eq!(c.len(), 3);
        assert_ne!(c[0].key(), c[2].key());
        assert!(c[2].key().contains("gpt-4o"));
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
