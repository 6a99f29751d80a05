//! The global section of `rate_limits` (`rate_limits.global`): which rate limit service, how
//! to call it and what to do when it fails.

use crate::config::error::ConfigError;
use serde::Deserialize;

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
    /// RLS domain of the budgets in money (Limitador: their namespace), counted in
    /// micro-units of the `pricing` currency: each request is also checked and charged there,
    /// with the same descriptors. Unset: no cost budget in the RLS. Every model needs a price.
    #[serde(default)]
    pub cost_domain: Option<String>,
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
    pub cost_domain: Option<String>,
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
        if let Some(d) = &raw.cost_domain {
            if d.is_empty() || *d == raw.domain {
                return Err(err(
                    "cost_domain",
                    "must be a domain of its own (not empty, not `domain`): tokens and money are counted apart",
                ));
            }
        }
        Ok(Global {
            cost_domain: raw.cost_domain.clone(),
            cluster: raw.cluster.clone(),
            domain: raw.domain.clone(),
            timeout_ms,
            failure_mode: raw.failure_mode,
            protocol: raw.protocol,
            retry_after_s,
        })
    }
}
