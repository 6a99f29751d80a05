//! State of one credential's Entra token, as kept in Envoy shared data (one slot per
//! credential, shared by all workers). Pure functions of (slot, now): the host layer reads the
//! slot with its CAS, applies one of these transitions and writes it back with the same CAS,
//! retrying on conflict, which makes "at most one fetch in flight per credential" hold across
//! workers: only the worker whose CAS write of the lease succeeds fetches.
//!
//! Refresh follows the Azure SDKs (see ../shared/AZURE-WIRE.md section 2): refresh when 5
//! minutes or less remain (half-life for tokens of 2 h or more, and for short tokens), keep
//! serving the cached token while a refresh fails and it is still valid, at most one refresh
//! attempt per `refresh_retry_interval_ms` while a valid token exists.
//!
//! Expiry: a token's lifetime (`expires_in`) counts from the moment its request was *sent*
//! (Entra issued it after that, so this never overestimates it, however long the answer took),
//! and the token is handed out until [`EXPIRY_SKEW_MS`] before that expiry (a tenth of the
//! lifetime for tokens shorter than 10 s). During an Entra outage a valid token is served to
//! the end of its life, refreshes are tried every `refresh_retry_interval_ms` (or later if
//! Entra's `Retry-After` says so) for as long as it lasts, and once it has run out the cold
//! back-off (1 s, doubling, capped at the interval) counts from the last failed attempt.

use serde::{Deserialize, Serialize};

const FIVE_MINUTES_MS: u64 = 5 * 60 * 1000;
const TWO_HOURS_MS: u64 = 2 * 60 * 60 * 1000;
/// A token is handed out until this long before it expires: it must still be valid when the
/// request carrying it reaches Azure. (Azure itself tolerates minutes of clock skew on `exp`;
/// this only covers the trip.)
pub const EXPIRY_SKEW_MS: u64 = 1_000;
/// First retry delay when there is no usable token at all; doubles per failure.
const COLD_RETRY_BASE_MS: u64 = 1_000;
/// Extra time on a lease beyond the callout timeout, so a lease outlives its callout.
const LEASE_SLACK_MS: u64 = 1_000;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenSlot {
    /// The access token; empty when none was obtained yet.
    #[serde(rename = "t", default)]
    pub token: String,
    #[serde(rename = "e", default)]
    pub expires_at_ms: u64,
    /// Hand the token out only before this instant (expiry minus [`EXPIRY_SKEW_MS`]).
    #[serde(rename = "u", default)]
    pub usable_until_ms: u64,
    #[serde(rename = "r", default)]
    pub refresh_at_ms: u64,
    /// A worker is fetching until this instant; nobody else starts a fetch before it.
    #[serde(rename = "l", default)]
    pub lease_until_ms: u64,
    /// After a failed refresh while the token is still usable, no new refresh before this.
    #[serde(rename = "b", default)]
    pub retry_at_ms: u64,
    /// After a failure, no attempt without a usable token before this (the cold back-off).
    #[serde(rename = "c", default)]
    pub cold_retry_at_ms: u64,
    #[serde(rename = "f", default)]
    pub failures: u32,
    /// Short description of the last failure (an AADSTS code, a status), never a secret.
    #[serde(rename = "x", default)]
    pub last_error: String,
}

/// Retry policy of a credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Spacing of refresh attempts while a valid token is still cached, and the cap of the
    /// exponential back-off when there is none.
    pub refresh_retry_interval_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            refresh_retry_interval_ms: 30_000,
        }
    }
}

impl TokenSlot {
    pub fn decode(bytes: &[u8]) -> Option<TokenSlot> {
        serde_json::from_slice(bytes).ok()
    }

    pub fn encode(&self) -> Vec<u8> {
        // Serializing plain strings and integers cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn usable_token(&self, now_ms: u64) -> Option<&str> {
        (!self.token.is_empty() && now_ms < self.usable_until_ms).then_some(self.token.as_str())
    }

    pub fn lease_held(&self, now_ms: u64) -> bool {
        now_ms < self.lease_until_ms
    }

    /// True when this worker should try to take the lease and fetch a token now.
    pub fn needs_fetch(&self, now_ms: u64) -> bool {
        if self.lease_held(now_ms) {
            return false;
        }
        if self.usable_token(now_ms).is_some() {
            now_ms >= self.refresh_at_ms && now_ms >= self.retry_at_ms
        } else {
            now_ms >= self.cold_retry_at_ms
        }
    }

    /// When there is no usable token and the last attempt failed, requests should not wait for
    /// a fetch that will not happen before `cold_retry_at_ms`: this returns how long until the
    /// next attempt so they can be answered 503 with Retry-After at once.
    pub fn cold_backoff_remaining_ms(&self, now_ms: u64) -> Option<u64> {
        if self.usable_token(now_ms).is_some() || self.failures == 0 || self.lease_held(now_ms) {
            return None;
        }
        (now_ms < self.cold_retry_at_ms).then(|| self.cold_retry_at_ms - now_ms)
    }

    pub fn with_lease(&self, now_ms: u64, fetch_timeout_ms: u64) -> TokenSlot {
        TokenSlot {
            lease_until_ms: now_ms + fetch_timeout_ms + LEASE_SLACK_MS,
            ..self.clone()
        }
    }

    /// A token was granted. `sent_at_ms`: when the request that got it was sent; its lifetime
    /// counts from then (the token was issued later, so its real expiry is not earlier).
    pub fn on_success(&self, sent_at_ms: u64, token: String, expires_in_s: u64) -> TokenSlot {
        let lifetime_ms = expires_in_s.saturating_mul(1000);
        let expires_at_ms = sent_at_ms.saturating_add(lifetime_ms);
        let skew = (lifetime_ms / 10).min(EXPIRY_SKEW_MS);
        let refresh_before_expiry = if lifetime_ms >= TWO_HOURS_MS {
            lifetime_ms / 2
        } else {
            FIVE_MINUTES_MS.min(lifetime_ms / 2)
        };
        TokenSlot {
            token,
            expires_at_ms,
            usable_until_ms: expires_at_ms - skew,
            refresh_at_ms: expires_at_ms - refresh_before_expiry,
            lease_until_ms: 0,
            retry_at_ms: 0,
            cold_retry_at_ms: 0,
            failures: 0,
            last_error: String::new(),
        }
    }

    pub fn on_failure(
        &self,
        now_ms: u64,
        retry_after_ms: Option<u64>,
        error: String,
        policy: RetryPolicy,
    ) -> TokenSlot {
        let failures = self.failures.saturating_add(1);
        let interval = policy.refresh_retry_interval_ms;
        let told = retry_after_ms.unwrap_or(0);
        let backoff = COLD_RETRY_BASE_MS.saturating_mul(1u64 << (failures - 1).min(20));
        let cold_retry_at_ms = now_ms + backoff.min(interval).max(told);
        // While the cached token lasts, refreshes keep coming one interval apart (or as late
        // as Entra asked); once it has run out, the cold back-off above decides.
        let retry_at_ms = if self.usable_token(now_ms).is_some() {
            now_ms + interval.max(told)
        } else {
            cold_retry_at_ms
        };
        TokenSlot {
            lease_until_ms: 0,
            retry_at_ms,
            cold_retry_at_ms,
            failures,
            last_error: error,
            ..self.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: RetryPolicy = RetryPolicy {
        refresh_retry_interval_ms: 30_000,
    };

    #[test]
    fn empty_slot_needs_fetch_and_lease_blocks_others() {
        let s = TokenSlot::default();
        assert!(s.needs_fetch(1000));
        assert!(s.usable_token(1000).is_none());
        let leased = s.with_lease(1000, 5000);
        assert!(!leased.needs_fetch(1001));
        assert!(leased.needs_fetch(1000 + 5000 + LEASE_SLACK_MS));
    }

    #[test]
    fn one_hour_token_refreshes_five_minutes_early() {
        let s = TokenSlot::default().on_success(0, "tok".into(), 3599);
        assert_eq!(s.usable_token(1000), Some("tok"));
        assert_eq!(s.refresh_at_ms, 3_599_000 - FIVE_MINUTES_MS);
        assert!(!s.needs_fetch(s.refresh_at_ms - 1));
        assert!(s.needs_fetch(s.refresh_at_ms));
        assert_eq!(s.usable_until_ms, 3_599_000 - EXPIRY_SKEW_MS);
    }

    #[test]
    fn long_and_short_tokens_refresh_at_half_life() {
        let long = TokenSlot::default().on_success(0, "t".into(), 24 * 3600);
        assert_eq!(long.refresh_at_ms, 12 * 3600 * 1000);
        let short = TokenSlot::default().on_success(0, "t".into(), 4);
        assert_eq!(short.refresh_at_ms, 2000);
        assert_eq!(short.usable_until_ms, 3600);
    }

    #[test]
    fn failure_with_valid_token_keeps_serving_and_spaces_retries() {
        let s = TokenSlot::default().on_success(0, "t".into(), 3599);
        let now = s.refresh_at_ms;
        let f = s.on_failure(now, None, "AADSTS7000215".into(), P);
        assert_eq!(f.usable_token(now + 1), Some("t"));
        assert!(!f.needs_fetch(now + 29_999));
        assert!(f.needs_fetch(now + 30_000));
        assert_eq!(f.cold_backoff_remaining_ms(now + 1), None);
    }

    #[test]
    fn failure_without_token_backs_off_exponentially_and_honours_retry_after() {
        let s = TokenSlot::default();
        let f1 = s.on_failure(0, None, "500".into(), P);
        assert_eq!(f1.cold_retry_at_ms, 1000);
        assert_eq!(f1.cold_backoff_remaining_ms(400), Some(600));
        let f2 = f1.on_failure(1000, None, "500".into(), P);
        assert_eq!(f2.cold_retry_at_ms, 3000);
        let mut f = f2;
        for _ in 0..10 {
            f = f.on_failure(0, None, "500".into(), P);
        }
        assert_eq!(f.cold_retry_at_ms, 30_000);
        let r = TokenSlot::default().on_failure(0, Some(45_000), "429".into(), P);
        assert_eq!(r.cold_retry_at_ms, 45_000);
    }

    /// Drives a slot through an Entra outage as the workers would (a look every 100 ms; every
    /// fetch fails at once) and returns (attempt times, last instant a token was served).
    fn outage(slot: TokenSlot, until_ms: u64) -> (Vec<u64>, Option<u64>) {
        let (mut s, mut attempts, mut served) = (slot, Vec::new(), None);
        let mut now = 0;
        while now <= until_ms {
            if s.usable_token(now).is_some() {
                served = Some(now);
            }
            if s.needs_fetch(now) {
                attempts.push(now);
                s = s
                    .with_lease(now, 5_000)
                    .on_failure(now, None, "AADSTS50000".into(), P);
            }
            now += 100;
        }
        (attempts, served)
    }

    #[test]
    fn outage_serves_the_token_to_its_end_and_refreshes_every_interval_while_it_lasts() {
        let s = TokenSlot::default().on_success(0, "t".into(), 3600);
        let (attempts, served) = outage(s.clone(), 3_700_000);
        assert_eq!(served, Some(3_600_000 - EXPIRY_SKEW_MS - 100));
        let while_valid: Vec<u64> = attempts
            .iter()
            .copied()
            .filter(|&t| t < s.usable_until_ms)
            .collect();
        let expected: Vec<u64> = (0..10).map(|i| 3_300_000 + i * 30_000).collect();
        assert_eq!(
            while_valid, expected,
            "one attempt per 30 s from refresh time on"
        );
        // Past expiry the cold back-off (capped at the interval) counts from the last attempt.
        let after: Vec<u64> = attempts
            .iter()
            .copied()
            .filter(|&t| t >= s.usable_until_ms)
            .collect();
        assert_eq!(after[0], 3_300_000 + 10 * 30_000);
        assert!(after.windows(2).all(|w| w[1] - w[0] == 30_000), "{after:?}");
    }

    #[test]
    fn short_token_in_an_outage_is_served_until_its_skew_and_not_retried_early() {
        // The case of issue 17: a 20 s token, a refresh at 10 s that fails.
        let s = TokenSlot::default().on_success(0, "t".into(), 20);
        assert_eq!(s.refresh_at_ms, 10_000);
        assert_eq!(s.usable_until_ms, 19_000);
        let (attempts, served) = outage(s, 25_000);
        assert_eq!(served, Some(18_900));
        // No second refresh attempt within 30 s of the first while the token lasts; once it has
        // run out, a cold attempt at once (the back-off after one failure is 1 s).
        assert_eq!(attempts[..2], [10_000, 19_000]);
    }

    #[test]
    fn lifetime_counts_from_the_request_and_entra_retry_after_is_honoured() {
        let s = TokenSlot::default().on_success(1_000, "t".into(), 3600);
        assert_eq!(s.expires_at_ms, 3_601_000);
        let now = s.refresh_at_ms;
        let f = s.on_failure(now, Some(45_000), "AADSTS90055".into(), P);
        assert!(!f.needs_fetch(now + 44_999));
        assert!(f.needs_fetch(now + 45_000));
        assert_eq!(f.usable_token(now + 45_000), Some("t"));
        // A slot written before cold_retry_at_ms existed decodes with it 0.
        let old = br#"{"t":"x","e":10,"u":5,"r":2,"l":0,"b":0,"f":1,"x":"500"}"#;
        assert_eq!(TokenSlot::decode(old).map(|s| s.cold_retry_at_ms), Some(0));
    }

    #[test]
    fn success_clears_failures_and_lease() {
        let s = TokenSlot::default()
            .on_failure(0, None, "x".into(), P)
            .with_lease(5000, 1000);
        let ok = s.on_success(5500, "new".into(), 3599);
        assert_eq!(ok.failures, 0);
        assert_eq!(ok.lease_until_ms, 0);
        assert!(ok.last_error.is_empty());
    }

    #[test]
    fn encode_roundtrip_and_garbage() {
        let s = TokenSlot::default().on_success(7, "abc".into(), 60);
        assert_eq!(TokenSlot::decode(&s.encode()), Some(s));
        assert_eq!(TokenSlot::decode(b"\xff\x00"), None);
        assert_eq!(TokenSlot::decode(b"{}"), Some(TokenSlot::default()));
    }
}
