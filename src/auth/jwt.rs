//! Compact JWS verification, cheapest checks first so that garbage and forgeries cost little:
//!
//! 1. size (`MAX_TOKEN_BYTES`), exactly three non-empty segments;
//! 2. header: strict base64url (no padding, canonical), JSON object, `alg` a supported
//!    asymmetric algorithm (never `none` or HMAC), no `crit`, a `kid`;
//! 3. payload: strict base64url, JSON object; the provider is chosen by `iss` (and `aud`),
//!    then `alg` is checked against that provider's allow-list, `exp`/`nbf` with its clock
//!    skew and `tid` against its tenant list, all on the still unverified payload;
//! 4. `kid` must name a key of that provider fitting `alg`, and the signature must have the
//!    key's exact length;
//! 5. only then the signature check (the one expensive step);
//! 6. on an authentic token: required claims and the workload claim (403 when unmet).
//!
//! Keys named by the token itself (`jku`, `x5u`, `jwk` headers) are never used.

use super::config::JwtProvider;
use super::error::AuthError;
use super::jwks::KeySet;
use super::policy;
use super::{AuthMethod, Caller};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Longest token accepted (Entra access tokens are 1-4 KB; group-heavy ones up to ~8 KB).
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Longest encoded header accepted.
const MAX_HEADER_B64: usize = 2048;
/// Longest signature: RSA-8192 is 1024 bytes, 1366 base64url characters.
const MAX_SIGNATURE_BYTES: usize = 1024;

/// A supported JWS algorithm (RFC 7518 §3, RFC 8037). `none` and HMAC are deliberately absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(clippy::upper_case_acronyms)]
pub enum Alg {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

impl Alg {
    pub fn from_name(name: &str) -> Option<Alg> {
        Some(match name {
            "RS256" => Alg::RS256,
            "RS384" => Alg::RS384,
            "RS512" => Alg::RS512,
            "PS256" => Alg::PS256,
            "PS384" => Alg::PS384,
            "PS512" => Alg::PS512,
            "ES256" => Alg::ES256,
            "ES384" => Alg::ES384,
            "EdDSA" => Alg::EdDSA,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Alg::RS256 => "RS256",
            Alg::RS384 => "RS384",
            Alg::RS512 => "RS512",
            Alg::PS256 => "PS256",
            Alg::PS384 => "PS384",
            Alg::PS512 => "PS512",
            Alg::ES256 => "ES256",
            Alg::ES384 => "ES384",
            Alg::EdDSA => "EdDSA",
        }
    }
}

/// The JOSE header members the filter reads. Duplicate members make the header invalid.
#[derive(Deserialize)]
struct JoseHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<serde::de::IgnoredAny>,
}

/// A verified token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub caller: Caller,
    /// Index of the provider in `AuthConfig::providers`.
    pub provider: usize,
    pub kid: String,
    /// The token's `exp` (seconds).
    pub exp_s: u64,
}

fn malformed(detail: &'static str) -> AuthError {
    AuthError::Malformed(detail)
}

/// Strict base64url: no padding, canonical trailing bits (the base64 crate's default).
fn decode_segment(seg: &str) -> Result<Vec<u8>, AuthError> {
    URL_SAFE_NO_PAD
        .decode(seg)
        .map_err(|_| malformed("The token is not valid base64url."))
}

/// Verifies a bearer token against the providers. `keys[i]` holds provider `i`'s keys (a
/// missing or empty set answers `KeysUnavailable`). `now_s` is Unix time in seconds.
pub fn verify_token(
    providers: &[JwtProvider],
    keys: &[KeySet],
    token: &str,
    now_s: u64,
) -> Result<Verified, AuthError> {
    // 1. Shape.
    if token.len() > MAX_TOKEN_BYTES {
        return Err(AuthError::TooLarge);
    }
    let mut parts = token.split('.');
    let (Some(h64), Some(p64), Some(s64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed("The token is not a JWS with three segments."));
    };
    if h64.is_empty() || p64.is_empty() || s64.is_empty() {
        return Err(malformed("The token has an empty segment."));
    }
    if h64.len() > MAX_HEADER_B64 {
        return Err(malformed("The token header is too large."));
    }
    if s64.len() > MAX_SIGNATURE_BYTES.div_ceil(3) * 4 {
        return Err(malformed("The token signature is too large."));
    }

    // 2. Header.
    let header_bytes = decode_segment(h64)?;
    let header: JoseHeader = serde_json::from_slice(&header_bytes)
        .map_err(|_| malformed("The token header is not a JSON object with an alg."))?;
    let Some(alg) = Alg::from_name(&header.alg) else {
        return Err(AuthError::UnsupportedAlg);
    };
    if header.crit.is_some() {
        return Err(malformed("The token uses critical header extensions."));
    }
    let Some(kid) = header.kid.filter(|k| !k.is_empty()) else {
        return Err(malformed("The token header has no kid."));
    };

    // 3. Payload and the unverified policy checks.
    let payload = decode_segment(p64)?;
    let claims = parse_claims(&payload)?;
    let Some(iss) = claims.get("iss").and_then(|v| v.as_str()) else {
        return Err(AuthError::WrongIssuer);
    };
    let tid = policy::tenant_of(&claims);
    let mut issuer_known = false;
    let mut chosen = None;
    for (i, p) in providers.iter().enumerate() {
        if p.issuers.iter().any(|pat| pat.matches(iss, tid)) {
            issuer_known = true;
            if policy::audience_matches(&claims, &p.audiences) {
                chosen = Some(i);
                break;
            }
        }
    }
    let Some(pi) = chosen else {
        return Err(if issuer_known {
            AuthError::WrongAudience
        } else {
            AuthError::WrongIssuer
        });
    };
    let Some(provider) = providers.get(pi) else {
        return Err(AuthError::WrongIssuer);
    };
    if !provider.algorithms.contains(&alg) {
        return Err(AuthError::UnsupportedAlg);
    }
    let exp_s = policy::check_times(&claims, now_s, provider.clock_skew_s)?;
    if !policy::tenant_allowed(&claims, &provider.tenants) {
        return Err(AuthError::WrongTenant);
    }

    // 4. Key.
    let keyset = match keys.get(pi) {
        Some(k) if !k.is_empty() => k,
        _ => return Err(AuthError::KeysUnavailable { provider: pi }),
    };
    let Some(jwk) = keyset.get(&kid) else {
        return Err(AuthError::UnknownKid { provider: pi });
    };
    if !jwk.accepts(alg) {
        return Err(AuthError::UnsupportedAlg);
    }
    let mut sig = [0u8; MAX_SIGNATURE_BYTES];
    let sig_len = URL_SAFE_NO_PAD
        .decode_slice(s64, &mut sig)
        .map_err(|_| malformed("The token is not valid base64url."))?;
    let Some(signature) = sig.get(..sig_len) else {
        return Err(AuthError::BadSignature);
    };
    if signature.len() != jwk.key.signature_len() {
        return Err(AuthError::BadSignature);
    }

    // 5. Signature over `header.payload` exactly as sent.
    let signing_input = token
        .get(..h64.len() + 1 + p64.len())
        .ok_or(AuthError::BadSignature)?;
    if !jwk.key.verify(alg, signing_input.as_bytes(), signature) {
        return Err(AuthError::BadSignature);
    }

    // 6. Authorization on the authentic claims.
    policy::check_required_claims(&claims, &provider.required_claims)?;
    let workload = policy::workload_of(&claims, &provider.workload_claims)?;
    let subject_hash = claims.get("sub").and_then(|v| v.as_str()).map(short_hash);
    Ok(Verified {
        caller: Caller {
            workload,
            provider: provider.name.clone(),
            method: AuthMethod::Jwt,
            tenant: tid.map(str::to_string),
            subject_hash,
            exp_s: Some(exp_s),
        },
        provider: pi,
        kid,
        exp_s,
    })
}

/// The payload's claims. A claim named twice is refused: JSON parsers disagree on which value
/// wins (serde_json keeps the last, others the first), so a token with two `exp`, `aud` or
/// `iss` could mean one thing to its issuer's checks and another here (RFC 7519 §4 lets a
/// recipient reject it; we do).
fn parse_claims(payload: &[u8]) -> Result<policy::Claims, AuthError> {
    let unique: UniqueClaims = serde_json::from_slice(payload).map_err(|e| {
        if e.to_string().starts_with(DUPLICATE_CLAIM) {
            malformed("The token payload names a claim more than once.")
        } else {
            malformed("The token payload is not a JSON object.")
        }
    })?;
    Ok(unique.0)
}

const DUPLICATE_CLAIM: &str = "duplicate claim";

/// A JSON object whose top-level member names are all different.
struct UniqueClaims(policy::Claims);

impl<'de> Deserialize<'de> for UniqueClaims {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = UniqueClaims;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object of claims")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<UniqueClaims, A::Error> {
                let mut claims = policy::Claims::new();
                while let Some((name, value)) = map.next_entry::<String, serde_json::Value>()? {
                    if claims.contains_key(&name) {
                        return Err(serde::de::Error::custom(DUPLICATE_CLAIM));
                    }
                    claims.insert(name, value);
                }
                Ok(UniqueClaims(claims))
            }
        }
        d.deserialize_map(Visitor)
    }
}

/// First 8 bytes of SHA-256, as hex: identifies a subject in logs without the value.
fn short_hash(s: &str) -> String {
    Sha256::digest(s.as_bytes())
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}
