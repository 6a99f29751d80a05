//! Failover across the targets of a model's pool (plain Rust, no host calls).
//!
//! A target (a backend plus its deployment) that answered 429 is *throttled* until its
//! `retry-after-ms` / `retry-after` has passed; a target that failed several times in a row
//! (a 5xx, or no answer at all: a refused or timed-out connection, a reset) is *ejected* for a
//! while. Either way it is *closed*: requests leave it out of the targets they try
//! ([`order`]), and when every target is closed the caller gets 429 at once with the smallest
//! time left, instead of a request that would only be throttled again.
//!
//! The state of every target lives in Envoy shared data (one small value per target), so
//! what one worker learnt holds for all of them; this module only computes it. Envoy's router
//! does the retry itself (see README "Failover between Azure resources").

pub mod order;

use crate::config::error::{check_range, ConfigError};
use serde::Deserialize;

/// Where in Envoy this instance of the filter runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The listener's HTTP filter: authenticates, admits, routes (and chooses where a pool
    /// starts).
    #[default]
    Downstream,
    /// An upstream HTTP filter of a pool's aggregate cluster: rewrites each attempt for the
    /// target Envoy picked.
    Upstream,
}

/// `failover` as written: how long throttled or failing targets are left out.
#[derive(Debug, Default, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawFailover {
    #[cfg_attr(
        feature = "schema",
        schemars(
            description = "Failures in a row (5xx answers, or no answer: refused, timed-out or \
                           reset connections) after which a target is ejected (default 3; 0: \
                           never). After an ejection one more failure ejects it again.",
            range(max = 1000)
        )
    )]
    #[serde(default)]
    eject_after_failures: Option<u32>,
    #[cfg_attr(
        feature = "schema",
        schemars(
            description = "How long an ejected target is skipped (default 30000).",
            range(min = 1, max = 3_600_000)
        )
    )]
    #[serde(default)]
    eject_for_ms: Option<u64>,
    #[cfg_attr(
        feature = "schema",
        schemars(
            description = "How long a 429 without a readable retry-after-ms / retry-after closes \
                           its target (default 1000).",
            range(min = 1, max = 3_600_000)
        )
    )]
    #[serde(default)]
    default_retry_after_ms: Option<u64>,
    #[cfg_attr(
        feature = "schema",
        schemars(
            description = "Cap on the wait a 429 can ask for (default 300000).",
            range(min = 1, max = 86_400_000)
        )
    )]
    #[serde(default)]
    max_retry_after_ms: Option<u64>,
}

impl FailoverPolicy {
    /// Validates `failover` (`None`: the defaults).
    pub fn from_raw(raw: Option<&RawFailover>) -> Result<FailoverPolicy, ConfigError> {
        let d = FailoverPolicy::default();
        let Some(raw) = raw else { return Ok(d) };
        let p = FailoverPolicy {
            eject_after_failures: raw.eject_after_failures.unwrap_or(d.eject_after_failures),
            eject_for_ms: raw.eject_for_ms.unwrap_or(d.eject_for_ms),
            default_retry_after_ms: raw
                .default_retry_after_ms
                .unwrap_or(d.default_retry_after_ms),
            max_retry_after_ms: raw.max_retry_after_ms.unwrap_or(d.max_retry_after_ms),
        };
        check_range(
            "failover.eject_after_failures",
            u64::from(p.eject_after_failures),
            0,
            1000,
        )?;
        check_range("failover.eject_for_ms", p.eject_for_ms, 1, 3_600_000)?;
        check_range(
            "failover.default_retry_after_ms",
            p.default_retry_after_ms,
            1,
            3_600_000,
        )?;
        check_range(
            "failover.max_retry_after_ms",
            p.max_retry_after_ms,
            1,
            86_400_000,
        )?;
        Ok(p)
    }
}

/// How long throttled or failing targets are kept out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailoverPolicy {
    /// Consecutive failures (5xx, or no answer) after which a target is ejected.
    pub eject_after_failures: u32,
    /// How long an ejected target is skipped.
    pub eject_for_ms: u64,
    /// How long a 429 without (readable) Retry-After closes its target.
    pub default_retry_after_ms: u64,
    /// Upper bound on what a Retry-After can ask for (a mistaken huge value must not take a
    /// target out for hours).
    pub max_retry_after_ms: u64,
}

impl Default for FailoverPolicy {
    fn default() -> Self {
        FailoverPolicy {
            eject_after_failures: 3,
            eject_for_ms: 30_000,
            default_retry_after_ms: 1_000,
            max_retry_after_ms: 300_000,
        }
    }
}

/// What one answer of a target says about the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It answered (2xx, or a 4xx that is the caller's business): healthy.
    Answered,
    /// 429: throttled for this long (`None`: it did not say).
    Throttled { retry_after_ms: Option<u64> },
    /// 5xx: the target failed.
    Failed,
    /// No answer: the connection was refused or timed out, or it was reset (or timed out)
    /// before the answer started. Counted like a failure; only the upstream filter sees it.
    Unreachable,
}

impl Outcome {
    /// The outcome of an HTTP status and the answer's Retry-After (already parsed).
    pub fn of_status(status: u32, retry_after_ms: Option<u64>) -> Outcome {
        match status {
            429 => Outcome::Throttled { retry_after_ms },
            500..=599 => Outcome::Failed,
            _ => Outcome::Answered,
        }
    }
}

/// The health of one target, as kept in shared data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TargetHealth {
    /// Unix ms until which the target is throttled (0: not throttled).
    pub throttled_until_ms: u64,
    /// Failures in a row since the last answer.
    pub failures: u32,
    /// Unix ms until which the target is ejected (0: not ejected).
    pub ejected_until_ms: u64,
}

impl TargetHealth {
    /// Shared-data form: `throttled_until_ms,failures,ejected_until_ms`.
    pub fn encode(&self) -> Vec<u8> {
        format!(
            "{},{},{}",
            self.throttled_until_ms, self.failures, self.ejected_until_ms
        )
        .into_bytes()
    }

    /// Reads the shared-data form; anything unreadable is a healthy target (the state only
    /// ever makes the filter skip a target, so forgetting it is the safe direction).
    pub fn decode(bytes: &[u8]) -> TargetHealth {
        let text = std::str::from_utf8(bytes).unwrap_or_default();
        let mut parts = text.split(',');
        let mut next = || parts.next().and_then(|p| p.trim().parse::<u64>().ok());
        match (next(), next(), next()) {
            (Some(throttled_until_ms), Some(failures), Some(ejected_until_ms)) => TargetHealth {
                throttled_until_ms,
                failures: u32::try_from(failures).unwrap_or(u32::MAX),
                ejected_until_ms,
            },
            _ => TargetHealth::default(),
        }
    }

    /// The health after an answer with `outcome` at `now_ms`.
    pub fn record(self, outcome: Outcome, now_ms: u64, policy: &FailoverPolicy) -> TargetHealth {
        match outcome {
            Outcome::Answered => TargetHealth {
                failures: 0,
                ..self
            },
            Outcome::Throttled { retry_after_ms } => {
                let wait = retry_after_ms
                    .unwrap_or(policy.default_retry_after_ms)
                    .min(policy.max_retry_after_ms);
                TargetHealth {
                    // Several workers may record 429s out of order: keep the latest horizon.
                    throttled_until_ms: self.throttled_until_ms.max(now_ms.saturating_add(wait)),
                    ..self
                }
            }
            Outcome::Failed | Outcome::Unreachable => {
                let failures = self.failures.saturating_add(1);
                if policy.eject_after_failures > 0 && failures >= policy.eject_after_failures {
                    TargetHealth {
                        // On probation: when the ejection ends, the first request that fails
                        // ejects it again (a dead resource costs one request per ejection,
                        // not `eject_after_failures`); an answer clears it.
                        failures: policy.eject_after_failures - 1,
                        ejected_until_ms: self
                            .ejected_until_ms
                            .max(now_ms.saturating_add(policy.eject_for_ms)),
                        ..self
                    }
                } else {
                    TargetHealth { failures, ..self }
                }
            }
        }
    }

    /// Nothing in it can change what the filter does with the target from `now_ms` on: no
    /// failure in a row, and any throttle or ejection over (later records start from the
    /// same place as from a healthy target's: horizons are maxed with times after `now_ms`).
    pub fn is_settled(&self, now_ms: u64) -> bool {
        self.failures == 0 && self.closed_until(now_ms).is_none()
    }

    /// The shared-data value to write after an attempt with `outcome` at `now_ms`, given the
    /// `stored` value (empty when the key is missing), or `None` when it stays as it is.
    ///
    /// A settled health is stored empty: reading an empty value costs a pool request no more
    /// than a missing key (Envoy copies nothing into the VM, ~11k instructions saved per
    /// target), so a target that failed once and recovered costs every later request what a
    /// target that never failed does. The listener filter marks such a target clean in the
    /// hand-over, and a healthy answer of a clean target spares the write, and its read.
    pub fn next_stored(
        stored: &[u8],
        outcome: Outcome,
        now_ms: u64,
        policy: &FailoverPolicy,
    ) -> Option<Vec<u8>> {
        let after = TargetHealth::decode(stored).record(outcome, now_ms, policy);
        let next = if after.is_settled(now_ms) {
            Vec::new()
        } else {
            after.encode()
        };
        (next != stored).then_some(next)
    }

    /// Label of an outcome for the `target_attempts` metric.
    pub fn outcome_label(outcome: Outcome) -> &'static str {
        match outcome {
            Outcome::Answered => "answered",
            Outcome::Throttled { .. } => "throttled",
            Outcome::Failed => "failed",
            Outcome::Unreachable => "unreachable",
        }
    }

    /// When the target opens again, if it is closed at `now_ms`.
    pub fn closed_until(&self, now_ms: u64) -> Option<u64> {
        let until = self.throttled_until_ms.max(self.ejected_until_ms);
        (until > now_ms).then_some(until)
    }
}

/// The wait a throttled answer asks for, in ms: Azure OpenAI sends both `retry-after-ms` and
/// `retry-after` (seconds); the first readable one wins. HTTP dates are not used by Azure
/// OpenAI and are ignored (the policy's default applies).
pub fn retry_after_ms(retry_after_ms: Option<&str>, retry_after: Option<&str>) -> Option<u64> {
    let ms = retry_after_ms.and_then(|v| {
        let v = v.trim();
        v.parse::<u64>().ok().or_else(|| {
            v.parse::<f64>()
                .ok()
                .filter(|f| f.is_finite() && *f >= 0.0)
                .map(|f| f.ceil() as u64)
        })
    });
    ms.or_else(|| {
        retry_after
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|s| s.saturating_mul(1000))
    })
}

/// Seconds for a `Retry-After` header: rounded up, so a caller never comes back too early.
pub fn retry_after_secs(ms: u64) -> u64 {
    ms.div_ceil(1000).max(1)
}

/// The shared-data key of a target's health (backend and deployment: Azure throttles per
/// deployment).
pub fn health_key(backend: &str, deployment: &str) -> String {
    format!("azure_llm.target.{backend}/{deployment}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000_000;

    #[test]
    fn throttled_until_retry_after_then_open_again() {
        let p = FailoverPolicy::default();
        let h = TargetHealth::default().record(
            Outcome::Throttled {
                retry_after_ms: Some(1500),
            },
            NOW,
            &p,
        );
        assert_eq!(h.closed_until(NOW), Some(NOW + 1500));
        assert_eq!(h.closed_until(NOW + 1499), Some(NOW + 1500));
        assert_eq!(h.closed_until(NOW + 1500), None);
    }

    #[test]
    fn a_later_shorter_retry_after_does_not_reopen_early() {
        let p = FailoverPolicy::default();
        let h = TargetHealth::default()
            .record(
                Outcome::Throttled {
                    retry_after_ms: Some(10_000),
                },
                NOW,
                &p,
            )
            .record(
                Outcome::Throttled {
                    retry_after_ms: Some(1_000),
                },
                NOW + 100,
                &p,
            );
        assert_eq!(h.throttled_until_ms, NOW + 10_000);
    }

    #[test]
    fn retry_after_is_capped_and_defaulted() {
        let p = FailoverPolicy::default();
        let huge = TargetHealth::default().record(
            Outcome::Throttled {
                retry_after_ms: Some(u64::MAX),
            },
            NOW,
            &p,
        );
        assert_eq!(huge.throttled_until_ms, NOW + p.max_retry_after_ms);
        let unsaid = TargetHealth::default().record(
            Outcome::Throttled {
                retry_after_ms: None,
            },
            NOW,
            &p,
        );
        assert_eq!(unsaid.throttled_until_ms, NOW + p.default_retry_after_ms);
    }

    #[test]
    fn failures_in_a_row_eject_and_an_answer_resets_the_count() {
        let p = FailoverPolicy::default();
        let mut h = TargetHealth::default();
        h = h.record(Outcome::Failed, NOW, &p);
        h = h.record(Outcome::Failed, NOW, &p);
        assert_eq!(h.closed_until(NOW), None, "two failures do not eject");
        h = h.record(Outcome::Answered, NOW, &p);
        assert_eq!(h.failures, 0);
        for outcome in [Outcome::Failed, Outcome::Unreachable, Outcome::Unreachable] {
            h = h.record(outcome, NOW, &p);
        }
        assert_eq!(h.closed_until(NOW), Some(NOW + p.eject_for_ms));
        let reopened = NOW + p.eject_for_ms;
        assert_eq!(h.closed_until(reopened), None);
        // On probation: one more failure once it is open again ejects it at once.
        let again = h.record(Outcome::Unreachable, reopened, &p);
        assert_eq!(
            again.closed_until(reopened),
            Some(reopened + p.eject_for_ms)
        );
        // An answer clears the probation.
        let healed = h.record(Outcome::Answered, reopened, &p);
        assert!(healed.is_settled(reopened));
        let once = healed.record(Outcome::Failed, reopened, &p);
        assert_eq!(once.closed_until(reopened), None);
    }

    #[test]
    fn throttles_are_not_failures() {
        let p = FailoverPolicy::default();
        let mut h = TargetHealth::default();
        for _ in 0..10 {
            h = h.record(
                Outcome::Throttled {
                    retry_after_ms: Some(1),
                },
                NOW,
                &p,
            );
        }
        assert_eq!(h.failures, 0);
        assert!(!h.is_settled(NOW) && h.is_settled(NOW + 1));
        assert_eq!(h.ejected_until_ms, 0);
        assert_eq!(
            TargetHealth::outcome_label(Outcome::Unreachable),
            "unreachable"
        );
    }

    #[test]
    fn a_settled_health_is_stored_empty() {
        let p = FailoverPolicy::default();
        let answered = Outcome::Answered;
        let throttled = Outcome::Throttled {
            retry_after_ms: Some(1_000),
        };
        // A healthy answer of a target never recorded writes nothing.
        assert_eq!(TargetHealth::next_stored(b"", answered, NOW, &p), None);
        // One failure is kept; the answer after it empties the value again.
        let failed = TargetHealth::next_stored(b"", Outcome::Failed, NOW, &p).unwrap();
        assert_eq!(TargetHealth::decode(&failed).failures, 1);
        assert_eq!(
            TargetHealth::next_stored(&failed, answered, NOW, &p),
            Some(Vec::new())
        );
        // A throttle is kept while it lasts, even through answers (another worker's request
        // may have been admitted before it), and emptied by the first record after it.
        let t = TargetHealth::next_stored(b"", throttled, NOW, &p).unwrap();
        assert_eq!(TargetHealth::next_stored(&t, answered, NOW + 999, &p), None);
        assert_eq!(
            TargetHealth::next_stored(&t, answered, NOW + 1_000, &p),
            Some(Vec::new())
        );
        // The old form of a settled health ("0,0,0", or horizons past) is rewritten empty.
        assert_eq!(
            TargetHealth::next_stored(b"0,0,0", answered, NOW, &p),
            Some(Vec::new())
        );
        // What the filter does from a settled value is what it does from an empty one.
        let past = format!("{},0,{}", NOW - 5, NOW - 1).into_bytes();
        for outcome in [answered, throttled, Outcome::Failed, Outcome::Unreachable] {
            // (Past horizons may stay in the value; what they close is the same.)
            let seen = |h: TargetHealth| (h.failures, h.closed_until(NOW));
            let after = |stored: &[u8]| {
                TargetHealth::next_stored(stored, outcome, NOW, &p).map_or_else(
                    || TargetHealth::decode(stored),
                    |v| TargetHealth::decode(&v),
                )
            };
            assert_eq!(seen(after(&past)), seen(after(b"")), "{outcome:?}");
        }
    }

    #[test]
    fn ejection_can_be_turned_off() {
        let p = FailoverPolicy {
            eject_after_failures: 0,
            ..FailoverPolicy::default()
        };
        let mut h = TargetHealth::default();
        for _ in 0..10 {
            h = h.record(Outcome::Failed, NOW, &p);
        }
        assert_eq!(h.closed_until(NOW), None);
    }

    #[test]
    fn outcome_of_status() {
        assert_eq!(Outcome::of_status(200, None), Outcome::Answered);
        assert_eq!(Outcome::of_status(400, Some(5)), Outcome::Answered);
        assert_eq!(
            Outcome::of_status(429, Some(5)),
            Outcome::Throttled {
                retry_after_ms: Some(5)
            }
        );
        assert_eq!(Outcome::of_status(503, None), Outcome::Failed);
        assert_eq!(Outcome::of_status(500, None), Outcome::Failed);
    }

    #[test]
    fn encode_decode_round_trip_and_garbage_is_healthy() {
        let h = TargetHealth {
            throttled_until_ms: NOW,
            failures: 2,
            ejected_until_ms: NOW + 5,
        };
        assert_eq!(TargetHealth::decode(&h.encode()), h);
        for garbage in [
            &b""[..],
            b"1,2",
            b"a,b,c",
            b"\xff\xfe",
            b"1,2,3,4",
            b"-1,0,0",
        ] {
            let d = TargetHealth::decode(garbage);
            if garbage == b"1,2,3,4" {
                // Extra fields are ignored (room for later additions).
                assert_eq!(d.ejected_until_ms, 3);
            } else {
                assert_eq!(d, TargetHealth::default(), "{garbage:?}");
            }
        }
        let big = TargetHealth::decode(b"0,99999999999,0");
        assert_eq!(big.failures, u32::MAX);
    }

    #[test]
    fn retry_after_headers() {
        assert_eq!(retry_after_ms(Some("1500"), Some("2")), Some(1500));
        assert_eq!(retry_after_ms(Some(" 12.2 "), None), Some(13));
        assert_eq!(retry_after_ms(None, Some("7")), Some(7000));
        assert_eq!(retry_after_ms(Some("soon"), Some("3")), Some(3000));
        assert_eq!(retry_after_ms(Some("-5"), None), None);
        assert_eq!(retry_after_ms(Some("NaN"), None), None);
        assert_eq!(
            retry_after_ms(None, Some("Wed, 21 Oct 2015 07:28:00 GMT")),
            None
        );
        assert_eq!(
            retry_after_ms(None, Some("99999999999999999")),
            Some(u64::MAX)
        );
        assert_eq!(retry_after_ms(None, None), None);
    }

    #[test]
    fn health_keys_and_retry_after_secs() {
        assert_eq!(health_key("ptu", "gpt-4o"), "azure_llm.target.ptu/gpt-4o");
        assert_eq!(retry_after_secs(1200), 2);
        assert_eq!(retry_after_secs(1000), 1);
        assert_eq!(retry_after_secs(1), 1);
        assert_eq!(retry_after_secs(0), 1);
    }
}
