//! JSON Web Key Sets: parsing into pre-processed public keys (once per JWKS change, never per
//! request), and the fetch schedule kept in Envoy shared data so that all workers share one
//! JWKS per provider and at most one fetch is in flight.
//!
//! Entra publishes its keys at `https://login.microsoftonline.com/{tenant}/discovery/v2.0/keys`
//! (v1: without `/v2.0`); keys rotate, so the set is refetched periodically (at least daily)
//! and when a token names an unknown `kid`, rate-limited (see ../shared/AZURE-WIRE.md §3).

use super::jwt::Alg;
use super::rsa::{RsaHash, RsaPadding, RsaPublicKey};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Largest JWKS document accepted (Entra's, with certificate chains, is about 10 KB).
pub const MAX_JWKS_BYTES: usize = 256 * 1024;
/// Keys beyond this count are ignored.
pub const MAX_KEYS: usize = 64;
/// Longest `kid` kept.
pub const MAX_KID_LEN: usize = 256;

/// A verification key of one of the supported types.
#[derive(Debug, Clone)]
pub enum PublicKey {
    Rsa(RsaPublicKey),
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
    Ed25519(ed25519_compact::PublicKey),
}

impl PublicKey {
    /// True when a token signed with `alg` may be checked against this key.
    pub fn fits(&self, alg: Alg) -> bool {
        matches!(
            (self, alg),
            (
                PublicKey::Rsa(_),
                Alg::RS256 | Alg::RS384 | Alg::RS512 | Alg::PS256 | Alg::PS384 | Alg::PS512
            ) | (PublicKey::P256(_), Alg::ES256)
                | (PublicKey::P384(_), Alg::ES384)
                | (PublicKey::Ed25519(_), Alg::EdDSA)
        )
    }

    /// The signature length this key and algorithm produce, for a cheap check before any
    /// arithmetic.
    pub fn signature_len(&self) -> usize {
        match self {
            PublicKey::Rsa(k) => k.signature_len(),
            PublicKey::P256(_) => 64,
            PublicKey::P384(_) => 96,
            PublicKey::Ed25519(_) => 64,
        }
    }

    /// Verifies a JWS signature (`signature` already base64url-decoded) over `signing_input`
    /// (`header.payload` as sent).
    pub fn verify(&self, alg: Alg, signing_input: &[u8], signature: &[u8]) -> bool {
        if !self.fits(alg) || signature.len() != self.signature_len() {
            return false;
        }
        match self {
            PublicKey::Rsa(k) => {
                let (hash, padding) = match alg {
                    Alg::RS256 => (RsaHash::Sha256, RsaPadding::Pkcs1v15),
                    Alg::RS384 => (RsaHash::Sha384, RsaPadding::Pkcs1v15),
                    Alg::RS512 => (RsaHash::Sha512, RsaPadding::Pkcs1v15),
                    Alg::PS256 => (RsaHash::Sha256, RsaPadding::Pss),
                    Alg::PS384 => (RsaHash::Sha384, RsaPadding::Pss),
                    Alg::PS512 => (RsaHash::Sha512, RsaPadding::Pss),
                    _ => return false,
                };
                k.verify(hash, padding, &[signing_input], signature)
            }
            PublicKey::P256(k) => {
                use p256::ecdsa::signature::Verifier;
                match p256::ecdsa::Signature::from_slice(signature) {
                    Ok(sig) => k.verify(signing_input, &sig).is_ok(),
                    Err(_) => false,
                }
            }
            PublicKey::P384(k) => {
                use p384::ecdsa::signature::Verifier;
                match p384::ecdsa::Signature::from_slice(signature) {
                    Ok(sig) => k.verify(signing_input, &sig).is_ok(),
                    Err(_) => false,
                }
            }
            PublicKey::Ed25519(k) => match ed25519_compact::Signature::from_slice(signature) {
                Ok(sig) => k.verify(signing_input, &sig).is_ok(),
                Err(_) => false,
            },
        }
    }
}

/// One usable key of a JWKS.
#[derive(Debug, Clone)]
pub struct Jwk {
    pub kid: String,
    pub key: PublicKey,
    /// The JWK's own `alg`, when it names one: the key is then used with that algorithm only.
    pub alg: Option<Alg>,
}

impl Jwk {
    pub fn accepts(&self, alg: Alg) -> bool {
        self.key.fits(alg) && self.alg.is_none_or(|a| a == alg)
    }
}

/// Why a JWKS document was refused as a whole (single unusable keys are skipped instead).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwksError {
    TooLarge,
    NotJson,
    NoUsableKeys,
}

impl JwksError {
    pub fn as_str(self) -> &'static str {
        match self {
            JwksError::TooLarge => "JWKS document too large",
            JwksError::NotJson => "JWKS document is not a JSON object with a keys array",
            JwksError::NoUsableKeys => "JWKS document has no usable signing key",
        }
    }
}

impl std::fmt::Display for JwksError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The fields of a JWK the filter reads; everything else (x5c, x5t, issuer...) is ignored.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
struct RawJwk {
    kty: String,
    kid: String,
    #[serde(default, rename = "use", skip_serializing_if = "Option::is_none")]
    use_: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    alg: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    n: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    e: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    crv: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    x: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    y: Option<String>,
}

#[derive(Serialize)]
struct CanonicalJwks<'a> {
    keys: &'a [RawJwk],
}

/// The usable keys of a JWKS, by `kid`.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    keys: Vec<Jwk>,
}

/// A parsed JWKS: the key set, why keys were skipped (for the log) and a compact JSON form
/// holding only the usable keys' public parameters (what goes into shared data).
#[derive(Debug, Clone)]
pub struct ParsedJwks {
    pub keys: KeySet,
    pub skipped: Vec<String>,
    pub canonical_json: String,
}

impl KeySet {
    /// Parses a JWKS document. Keys that are unusable (unsupported type or curve, `use` other
    /// than `sig`, RSA below 2048 bits, bad encoding, duplicate `kid`) are skipped with a
    /// reason; a document with no usable key is an error.
    pub fn parse(bytes: &[u8]) -> Result<ParsedJwks, JwksError> {
        if bytes.len() > MAX_JWKS_BYTES {
            return Err(JwksError::TooLarge);
        }
        let doc: Value = serde_json::from_slice(bytes).map_err(|_| JwksError::NotJson)?;
        let Some(list) = doc.get("keys").and_then(Value::as_array) else {
            return Err(JwksError::NotJson);
        };
        let mut keys: Vec<Jwk> = Vec::new();
        let mut kept: Vec<RawJwk> = Vec::new();
        let mut skipped = Vec::new();
        for (i, item) in list.iter().enumerate() {
            if keys.len() >= MAX_KEYS {
                skipped.push(format!("keys[{i}]: more than {MAX_KEYS} keys"));
                continue;
            }
            let raw = match RawJwk::deserialize(item) {
                Ok(r) => r,
                Err(_) => {
                    skipped.push(format!("keys[{i}]: not a JWK with string kty and kid"));
                    continue;
                }
            };
            match parse_jwk(&raw) {
                Ok(jwk) if keys.iter().any(|k| k.kid == jwk.kid) => {
                    skipped.push(format!("keys[{i}]: duplicate kid"));
                }
                Ok(jwk) => {
                    keys.push(jwk);
                    kept.push(raw);
                }
                Err(reason) => skipped.push(format!("keys[{i}]: {reason}")),
            }
        }
        if keys.is_empty() {
            return Err(JwksError::NoUsableKeys);
        }
        let canonical_json = serde_json::to_string(&CanonicalJwks { keys: &kept })
            .map_err(|_| JwksError::NotJson)?;
        Ok(ParsedJwks {
            keys: KeySet { keys },
            skipped,
            canonical_json,
        })
    }

    pub fn get(&self, kid: &str) -> Option<&Jwk> {
        self.keys.iter().find(|k| k.kid == kid)
    }

    pub fn contains(&self, kid: &str) -> bool {
        self.get(kid).is_some()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|k| k.kid.as_str())
    }
}

/// Decodes a base64url JWK member; tolerates padding (the JWKS comes from a trusted issuer).
fn b64(field: &Option<String>, name: &'static str) -> Result<Vec<u8>, String> {
    let Some(s) = field else {
        return Err(format!("missing {name}"));
    };
    URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|_| format!("{name} is not base64url"))
}

fn parse_jwk(raw: &RawJwk) -> Result<Jwk, String> {
    if raw.kid.is_empty() || raw.kid.len() > MAX_KID_LEN {
        return Err("kid must be 1-256 characters".into());
    }
    if let Some(u) = &raw.use_ {
        if u != "sig" {
            return Err(format!("use is {u:?}, not sig"));
        }
    }
    let alg = match &raw.alg {
        None => None,
        Some(a) => match Alg::from_name(a) {
            Some(alg) => Some(alg),
            None => return Err(format!("alg {a:?} is not supported")),
        },
    };
    let key = match raw.kty.as_str() {
        "RSA" => {
            let n = b64(&raw.n, "n")?;
            let e = b64(&raw.e, "e")?;
            PublicKey::Rsa(RsaPublicKey::from_be_bytes(&n, &e).map_err(|e| e.as_str().to_string())?)
        }
        "EC" => {
            let x = b64(&raw.x, "x")?;
            let y = b64(&raw.y, "y")?;
            let (size, curve) = match raw.crv.as_deref() {
                Some("P-256") => (32, 256),
                Some("P-384") => (48, 384),
                other => return Err(format!("EC curve {other:?} is not supported")),
            };
            if x.len() != size || y.len() != size {
                return Err("EC coordinates have the wrong length".into());
            }
            let mut sec1 = Vec::with_capacity(1 + 2 * size);
            sec1.push(0x04);
            sec1.extend_from_slice(&x);
            sec1.extend_from_slice(&y);
            if curve == 256 {
                PublicKey::P256(
                    p256::ecdsa::VerifyingKey::from_sec1_bytes(&sec1)
                        .map_err(|_| "EC point is not on P-256".to_string())?,
                )
            } else {
                PublicKey::P384(
                    p384::ecdsa::VerifyingKey::from_sec1_bytes(&sec1)
                        .map_err(|_| "EC point is not on P-384".to_string())?,
                )
            }
        }
        "OKP" => {
            if raw.crv.as_deref() != Some("Ed25519") {
                return Err(format!("OKP curve {:?} is not supported", raw.crv));
            }
            let x = b64(&raw.x, "x")?;
            PublicKey::Ed25519(
                ed25519_compact::PublicKey::from_slice(&x)
                    .map_err(|_| "Ed25519 key must be 32 bytes".to_string())?,
            )
        }
        other => return Err(format!("kty {other:?} is not supported")),
    };
    if let Some(a) = alg {
        if !key.fits(a) {
            return Err(format!("alg {} does not fit kty {}", a.name(), raw.kty));
        }
    }
    Ok(Jwk {
        kid: raw.kid.clone(),
        key,
        alg,
    })
}

// ---------------------------------------------------------------------------------------------
// OIDC discovery
// ---------------------------------------------------------------------------------------------

/// Where a JWKS is fetched: the `:authority` and `:path` of the callout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JwksLocation {
    pub authority: String,
    pub path: String,
}

/// Reads `jwks_uri` from an OpenID Provider configuration document. The URI must be https
/// and on `expected_authority` (the fetch goes through the same Envoy cluster); unless
/// `expected_issuers` is empty, the document's `issuer` must be one of them (OIDC Discovery
/// §4.3; callers skip the check for multi-tenant `{tid}` issuers, whose document carries a
/// template).
pub fn parse_discovery(
    bytes: &[u8],
    expected_authority: &str,
    expected_issuers: &[&str],
) -> Result<JwksLocation, &'static str> {
    if bytes.len() > MAX_JWKS_BYTES {
        return Err("discovery document too large");
    }
    let doc: Value = serde_json::from_slice(bytes).map_err(|_| "discovery document is not JSON")?;
    if !expected_issuers.is_empty() {
        let iss = doc
            .get("issuer")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !expected_issuers.contains(&iss) {
            return Err("discovery document names another issuer");
        }
    }
    let uri = doc
        .get("jwks_uri")
        .and_then(Value::as_str)
        .ok_or("discovery document has no jwks_uri")?;
    let rest = uri
        .strip_prefix("https://")
        .ok_or("jwks_uri is not an https URL")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (rest.get(..i).unwrap_or(""), rest.get(i..).unwrap_or("/")),
        None => (rest, "/"),
    };
    if !authority.eq_ignore_ascii_case(expected_authority) {
        return Err("jwks_uri is on another host than the configured authority");
    }
    if path.bytes().any(|b| b <= b' ' || b == 0x7f || b == b'#') {
        return Err("jwks_uri has an unusable path");
    }
    Ok(JwksLocation {
        authority: authority.to_ascii_lowercase(),
        path: path.to_string(),
    })
}

// ---------------------------------------------------------------------------------------------
// Shared fetch state
// ---------------------------------------------------------------------------------------------

/// Timing of one provider's JWKS fetches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JwksSchedule {
    /// Refetch this long after a successful fetch.
    pub refresh_ms: u64,
    /// At most one fetch per this interval for unknown `kid`s, and the retry spacing after a
    /// failure while keys are held.
    pub min_refetch_ms: u64,
    /// The callout timeout (a lease outlives it).
    pub fetch_timeout_ms: u64,
}

/// First retry delay after a failure when no keys are held; doubles per failure up to
/// `min_refetch_ms`.
const COLD_RETRY_BASE_MS: u64 = 1_000;
const LEASE_SLACK_MS: u64 = 1_000;

/// One provider's JWKS state in Envoy shared data (one slot per provider, shared by all
/// workers). Pure transitions of (state, now), like `token_cache::TokenSlot`: the host reads
/// the slot with its CAS, applies a transition and writes it back with the same CAS, retrying
/// on conflict, so only the worker whose lease write succeeded fetches.
///
/// The last good keys are never dropped by a failed fetch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JwksState {
    /// Canonical JSON of the last good JWKS (usable keys only); empty when none yet.
    #[serde(rename = "k", default)]
    pub keys: String,
    /// Bumped whenever `keys` changes, so each worker re-parses only on change.
    #[serde(rename = "g", default)]
    pub generation: u64,
    #[serde(rename = "f", default)]
    pub fetched_at_ms: u64,
    #[serde(rename = "n", default)]
    pub next_refresh_at_ms: u64,
    /// When the last fetch triggered by an unknown `kid` started.
    #[serde(rename = "u", default)]
    pub last_unknown_kid_fetch_ms: u64,
    /// A worker is fetching until this instant.
    #[serde(rename = "l", default)]
    pub lease_until_ms: u64,
    /// After a failure, no new attempt before this instant.
    #[serde(rename = "b", default)]
    pub retry_at_ms: u64,
    #[serde(rename = "c", default)]
    pub failures: u32,
    /// Short description of the last failure (status, parse error), never a secret.
    #[serde(rename = "x", default)]
    pub last_error: String,
    /// Where the JWKS is, when found through OIDC discovery; empty until discovered.
    #[serde(rename = "d", default, skip_serializing_if = "Option::is_none")]
    pub discovered: Option<JwksLocation>,
}

impl JwksState {
    pub fn decode(bytes: &[u8]) -> Option<JwksState> {
        serde_json::from_slice(bytes).ok()
    }

    pub fn encode(&self) -> Vec<u8> {
        // Serializing plain strings and integers cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn has_keys(&self) -> bool {
        !self.keys.is_empty()
    }

    pub fn lease_held(&self, now_ms: u64) -> bool {
        now_ms < self.lease_until_ms
    }

    /// True when this worker should take the lease and fetch: no keys yet or the refresh time
    /// has come, no failure back-off pending, nobody else fetching.
    pub fn needs_refresh(&self, now_ms: u64) -> bool {
        let wanted = !self.has_keys() || now_ms >= self.next_refresh_at_ms;
        wanted && now_ms >= self.retry_at_ms && !self.lease_held(now_ms)
    }

    /// True when a token's unknown `kid` may trigger a fetch now: at most one such fetch per
    /// `min_refetch_ms`, none within `min_refetch_ms` of the last successful fetch (its keys
    /// are fresh), none during a failure back-off or while a fetch is in flight.
    pub fn may_refetch_for_unknown_kid(&self, now_ms: u64, schedule: &JwksSchedule) -> bool {
        let last = self.last_unknown_kid_fetch_ms.max(self.fetched_at_ms);
        let spaced = last == 0 || now_ms >= last.saturating_add(schedule.min_refetch_ms);
        spaced && now_ms >= self.retry_at_ms && !self.lease_held(now_ms)
    }

    /// The state with this worker's fetch lease; `for_unknown_kid` records the rate-limited
    /// unknown-kid trigger.
    pub fn with_lease(&self, now_ms: u64, schedule: &JwksSchedule, for_unknown_kid: bool) -> Self {
        JwksState {
            lease_until_ms: now_ms
                .saturating_add(schedule.fetch_timeout_ms)
                .saturating_add(LEASE_SLACK_MS),
            last_unknown_kid_fetch_ms: if for_unknown_kid {
                now_ms
            } else {
                self.last_unknown_kid_fetch_ms
            },
            ..self.clone()
        }
    }

    /// Applies a fetched JWKS body. A body that does not parse to at least one usable key is a
    /// failure and keeps the last good keys. On success also returns the parsed set, so the
    /// fetching worker need not parse it again.
    pub fn on_fetch_success(
        &self,
        now_ms: u64,
        body: &[u8],
        schedule: &JwksSchedule,
    ) -> (JwksState, Result<ParsedJwks, JwksError>) {
        match KeySet::parse(body) {
            Ok(parsed) => {
                let changed = parsed.canonical_json != self.keys;
                let state = JwksState {
                    generation: if changed {
                        self.generation.wrapping_add(1)
                    } else {
                        self.generation
                    },
                    keys: if changed {
                        parsed.canonical_json.clone()
                    } else {
                        self.keys.clone()
                    },
                    fetched_at_ms: now_ms,
                    next_refresh_at_ms: now_ms.saturating_add(schedule.refresh_ms),
                    lease_until_ms: 0,
                    retry_at_ms: 0,
                    failures: 0,
                    last_error: String::new(),
                    ..self.clone()
                };
                (state, Ok(parsed))
            }
            Err(e) => (
                self.on_fetch_failure(now_ms, e.as_str().to_string(), schedule),
                Err(e),
            ),
        }
    }

    /// Records a failed fetch (callout error, non-200, bad body). The keys stay; retries are
    /// spaced by `min_refetch_ms` while keys are held, and back off exponentially from 1 s
    /// (capped at `min_refetch_ms`) while there are none. A discovered JWKS location is
    /// forgotten, so the next attempt rediscovers it.
    pub fn on_fetch_failure(&self, now_ms: u64, error: String, schedule: &JwksSchedule) -> Self {
        let failures = self.failures.saturating_add(1);
        let delay = if self.has_keys() {
            schedule.min_refetch_ms
        } else {
            COLD_RETRY_BASE_MS
                .saturating_mul(1u64 << (failures.saturating_sub(1)).min(20))
                .min(schedule.min_refetch_ms.max(COLD_RETRY_BASE_MS))
        };
        let mut error = error;
        error.truncate(200);
        JwksState {
            lease_until_ms: 0,
            retry_at_ms: now_ms.saturating_add(delay),
            failures,
            last_error: error,
            discovered: None,
            ..self.clone()
        }
    }

    /// Records the JWKS location found by OIDC discovery; the lease is kept for the JWKS
    /// fetch that follows.
    pub fn on_discovered(&self, location: JwksLocation) -> Self {
        JwksState {
            discovered: Some(location),
            ..self.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::testkeys;

    const S: JwksSchedule = JwksSchedule {
        refresh_ms: 3_600_000,
        min_refetch_ms: 30_000,
        fetch_timeout_ms: 5_000,
    };

    #[test]
    fn mixed_jwks_keeps_usable_keys_and_skips_the_rest() {
        let doc = serde_json::json!({"keys": [
            testkeys::rsa_jwk("r1"),
            testkeys::p256_jwk("e1"),
            testkeys::p384_jwk("e2"),
            testkeys::ed25519_jwk("o1"),
            {"kty": "oct", "kid": "h1", "k": "c2VjcmV0"},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"},
            {"kty": "RSA", "kid": "small", "n": "AQAB", "e": "AQAB"},
            {"kty": "EC", "kid": "k1", "crv": "secp256k1", "x": "AA", "y": "AA"},
            {"kty": "EC", "kid": "bad", "crv": "P-256", "x": "!!", "y": "AA"},
            {"kty": "RSA"},
            {"kty": "RSA", "kid": "r1", "n": "AQAB", "e": "AQAB"},
            "not an object",
            {"kty": "OKP", "kid": "x", "crv": "X25519", "x": "AA"},
        ]});
        let parsed = KeySet::parse(doc.to_string().as_bytes()).unwrap();
        let kids: Vec<&str> = parsed.keys.kids().collect();
        assert_eq!(kids, ["r1", "e1", "e2", "o1"]);
        assert_eq!(parsed.skipped.len(), 9, "{:?}", parsed.skipped);
        assert!(matches!(
            parsed.keys.get("r1").unwrap().key,
            PublicKey::Rsa(_)
        ));
        assert!(matches!(
            parsed.keys.get("e1").unwrap().key,
            PublicKey::P256(_)
        ));
        assert!(matches!(
            parsed.keys.get("e2").unwrap().key,
            PublicKey::P384(_)
        ));
        assert!(matches!(
            parsed.keys.get("o1").unwrap().key,
            PublicKey::Ed25519(_)
        ));
        assert!(parsed.keys.get("h1").is_none());
        // The canonical form parses to the same keys and holds no extra members.
        let again = KeySet::parse(parsed.canonical_json.as_bytes()).unwrap();
        assert_eq!(again.keys.len(), 4);
        assert!(again.skipped.is_empty());
        assert_eq!(again.canonical_json, parsed.canonical_json);
    }

    #[test]
    fn entra_shaped_jwks_with_certificates_parses() {
        let mut k = testkeys::rsa_jwk("abc");
        k["x5t"] = "abc".into();
        k["x5c"] = serde_json::json!(["MIIC..."]);
        k["issuer"] = "https://login.microsoftonline.com/{tenantid}/v2.0".into();
        k["use"] = "sig".into();
        let doc = serde_json::json!({"keys": [k]});
        let parsed = KeySet::parse(doc.to_string().as_bytes()).unwrap();
        assert!(parsed.keys.contains("abc"));
        assert!(!parsed.canonical_json.contains("x5c"));
    }

    #[test]
    fn unusable_documents_are_errors() {
        assert_eq!(KeySet::parse(b"nope").unwrap_err(), JwksError::NotJson);
        assert_eq!(KeySet::parse(b"{}").unwrap_err(), JwksError::NotJson);
        assert_eq!(
            KeySet::parse(b"{\"keys\":{}}").unwrap_err(),
            JwksError::NotJson
        );
        assert_eq!(
            KeySet::parse(b"{\"keys\":[]}").unwrap_err(),
            JwksError::NoUsableKeys
        );
        let big = vec![b' '; MAX_JWKS_BYTES + 1];
        assert_eq!(KeySet::parse(&big).unwrap_err(), JwksError::TooLarge);
    }

    #[test]
    fn jwk_alg_restricts_the_key() {
        let mut k = testkeys::rsa_jwk("r");
        k["alg"] = "RS256".into();
        let parsed =
            KeySet::parse(serde_json::json!({"keys": [k]}).to_string().as_bytes()).unwrap();
        let jwk = parsed.keys.get("r").unwrap();
        assert!(jwk.accepts(Alg::RS256));
        assert!(!jwk.accepts(Alg::PS256));
        assert!(!jwk.accepts(Alg::ES256));
        let mut k = testkeys::rsa_jwk("r");
        k["alg"] = "ES256".into();
        assert!(KeySet::parse(serde_json::json!({"keys": [k]}).to_string().as_bytes()).is_err());
    }

    fn jwks_body(kid: &str) -> Vec<u8> {
        serde_json::json!({"keys": [testkeys::rsa_jwk(kid)]})
            .to_string()
            .into_bytes()
    }

    #[test]
    fn empty_state_needs_refresh_and_lease_blocks_others() {
        let s = JwksState::default();
        assert!(s.needs_refresh(1_000));
        let leased = s.with_lease(1_000, &S, false);
        assert!(!leased.needs_refresh(1_001));
        assert!(!leased.may_refetch_for_unknown_kid(1_001, &S));
        assert!(leased.needs_refresh(1_000 + 5_000 + LEASE_SLACK_MS));
    }

    #[test]
    fn success_schedules_refresh_and_bumps_generation_only_on_change() {
        let s = JwksState::default().with_lease(0, &S, false);
        let (s1, parsed) = s.on_fetch_success(10_000, &jwks_body("a"), &S);
        assert!(parsed.unwrap().keys.contains("a"));
        assert_eq!(s1.generation, 1);
        assert_eq!(s1.lease_until_ms, 0);
        assert!(!s1.needs_refresh(10_000 + 3_599_999));
        assert!(s1.needs_refresh(10_000 + 3_600_000));
        let (s2, _) = s1.on_fetch_success(20_000, &jwks_body("a"), &S);
        assert_eq!(s2.generation, 1, "same keys: workers need not re-parse");
        assert_eq!(s2.fetched_at_ms, 20_000);
        let (s3, _) = s2.on_fetch_success(30_000, &jwks_body("b"), &S);
        assert_eq!(s3.generation, 2);
        assert_eq!(JwksState::decode(&s3.encode()), Some(s3));
    }

    #[test]
    fn unknown_kid_refetch_is_rate_limited() {
        let (s, _) = JwksState::default().on_fetch_success(100_000, &jwks_body("a"), &S);
        // Just fetched: an unknown kid does not trigger another fetch yet.
        assert!(!s.may_refetch_for_unknown_kid(110_000, &S));
        assert!(s.may_refetch_for_unknown_kid(130_000, &S));
        let leased = s.with_lease(130_000, &S, true);
        assert_eq!(leased.last_unknown_kid_fetch_ms, 130_000);
        // The fetch failed: the keys stay, and the next unknown-kid fetch waits.
        let failed = leased.on_fetch_failure(131_000, "503".into(), &S);
        assert!(failed.has_keys());
        assert_eq!(failed.keys, s.keys);
        assert!(!failed.may_refetch_for_unknown_kid(150_000, &S));
        assert!(failed.may_refetch_for_unknown_kid(161_000, &S));
    }

    #[test]
    fn failures_keep_last_good_keys_and_back_off() {
        let (good, _) = JwksState::default().on_fetch_success(0, &jwks_body("a"), &S);
        let (bad, err) = good.on_fetch_success(3_600_000, b"<html>", &S);
        assert_eq!(err.unwrap_err(), JwksError::NotJson);
        assert_eq!(bad.keys, good.keys);
        assert_eq!(bad.generation, good.generation);
        assert_eq!(bad.failures, 1);
        assert!(!bad.needs_refresh(3_600_000 + 29_999));
        assert!(bad.needs_refresh(3_600_000 + 30_000));

        let cold = JwksState::default().on_fetch_failure(0, "x".into(), &S);
        assert_eq!(cold.retry_at_ms, 1_000);
        let mut f = cold;
        for _ in 0..10 {
            f = f.on_fetch_failure(0, "x".into(), &S);
        }
        assert_eq!(f.retry_at_ms, 30_000);
        assert!(!f.has_keys());
    }

    #[test]
    fn state_decode_tolerates_garbage_and_defaults() {
        assert_eq!(JwksState::decode(b"\xff"), None);
        assert_eq!(JwksState::decode(b"{}"), Some(JwksState::default()));
    }

    #[test]
    fn discovery_document() {
        let doc = br#"{"issuer":"https://login.microsoftonline.com/t/v2.0",
            "jwks_uri":"https://login.microsoftonline.com/t/discovery/v2.0/keys"}"#;
        let loc = parse_discovery(
            doc,
            "login.microsoftonline.com",
            &[
                "https://sts.windows.net/t/",
                "https://login.microsoftonline.com/t/v2.0",
            ],
        )
        .unwrap();
        assert_eq!(loc.path, "/t/discovery/v2.0/keys");
        assert_eq!(loc.authority, "login.microsoftonline.com");
        assert!(parse_discovery(doc, "evil.example", &[]).is_err());
        assert!(parse_discovery(doc, "login.microsoftonline.com", &["other"]).is_err());
        assert!(parse_discovery(
            br#"{"jwks_uri":"http://login.microsoftonline.com/k"}"#,
            "login.microsoftonline.com",
            &[]
        )
        .is_err());
        assert!(parse_discovery(b"[]", "a", &[]).is_err());
        let s = JwksState::default().on_discovered(loc.clone());
        assert_eq!(s.discovered, Some(loc));
        let f = s.on_fetch_failure(0, "404".into(), &S);
        assert_eq!(f.discovered, None);
    }
}
