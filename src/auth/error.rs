//! Why a caller was refused, and how that is answered: status, OpenAI-style JSON body and the
//! `WWW-Authenticate` challenge (RFC 6750 section 3). Messages are fixed strings written
//! here: nothing from the presented token, key or claims is ever echoed back.

use crate::errors::FilterError;

/// A refused caller. `code()` is the machine-readable reason, also used as the JSON `code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// No credential was presented and the configuration requires one.
    MissingToken,
    /// More than one credential (two Authorization headers, or Authorization and api-key).
    MultipleCredentials,
    /// An Authorization scheme other than Bearer.
    UnsupportedScheme,
    /// The token or key is longer than the filter accepts.
    TooLarge,
    /// The token is not a well-formed compact JWS; the detail is a fixed description.
    Malformed(&'static str),
    /// `alg` is `none`, symmetric, unknown, not allowed for the provider, or does not fit the
    /// key named by `kid`.
    UnsupportedAlg,
    /// The `kid` is not in the provider's key set (the host may refetch the JWKS, rate-limited).
    UnknownKid {
        provider: usize,
    },
    BadSignature,
    Expired,
    NotYetValid,
    WrongIssuer,
    WrongAudience,
    WrongTenant,
    /// The token is authentic but does not satisfy the provider's claim policy (403).
    ClaimsNotSatisfied(&'static str),
    /// The api-key matches no configured key.
    InvalidApiKey,
    /// The provider has no keys yet (JWKS never fetched successfully): 503, not the caller's
    /// fault.
    KeysUnavailable {
        provider: usize,
    },
}

impl AuthError {
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::MissingToken => "missing_token",
            AuthError::MultipleCredentials => "multiple_credentials",
            AuthError::UnsupportedScheme => "unsupported_scheme",
            AuthError::TooLarge => "too_large",
            AuthError::Malformed(_) => "malformed",
            AuthError::UnsupportedAlg => "unsupported_alg",
            AuthError::UnknownKid { .. } => "unknown_kid",
            AuthError::BadSignature => "bad_signature",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::WrongIssuer => "wrong_issuer",
            AuthError::WrongAudience => "wrong_audience",
            AuthError::WrongTenant => "wrong_tenant",
            AuthError::ClaimsNotSatisfied(_) => "claims_not_satisfied",
            AuthError::InvalidApiKey => "invalid_api_key",
            AuthError::KeysUnavailable { .. } => "jwks_unavailable",
        }
    }

    pub fn status(&self) -> u32 {
        match self {
            AuthError::ClaimsNotSatisfied(_) => 403,
            AuthError::KeysUnavailable { .. } => 503,
            _ => 401,
        }
    }

    /// A human-readable explanation (fixed text, safe to return and to log).
    pub fn message(&self) -> &'static str {
        match self {
            AuthError::MissingToken => {
                "Authentication required: send 'Authorization: Bearer <token>' or an 'api-key' header."
            }
            AuthError::MultipleCredentials => {
                "More than one credential was sent (a token next to a key, or different keys): send one."
            }
            AuthError::UnsupportedScheme => "Only the Bearer authorization scheme is accepted.",
            AuthError::TooLarge => "The credential is too large.",
            AuthError::Malformed(detail) => detail,
            AuthError::UnsupportedAlg => {
                "The token's signing algorithm is not accepted for this issuer or key."
            }
            AuthError::UnknownKid { .. } => {
                "The token is signed with a key (kid) the issuer does not publish."
            }
            AuthError::BadSignature => "The token's signature is invalid.",
            AuthError::Expired => "The token has expired.",
            AuthError::NotYetValid => "The token is not valid yet (nbf is in the future).",
            AuthError::WrongIssuer => "The token's issuer is not trusted.",
            AuthError::WrongAudience => "The token's audience is not accepted.",
            AuthError::WrongTenant => "The token was issued for a tenant that is not allowed.",
            AuthError::ClaimsNotSatisfied(detail) => detail,
            AuthError::InvalidApiKey => "The api-key is not valid.",
            AuthError::KeysUnavailable { .. } => {
                "The token issuer's signing keys are not available yet; retry shortly."
            }
        }
    }

    fn error_type(&self) -> &'static str {
        match self.status() {
            403 => "permission_error",
            503 => "service_unavailable",
            _ => "authentication_error",
        }
    }

    /// The OpenAI-style error to answer with.
    pub fn to_filter_error(&self) -> FilterError {
        let e = FilterError::new(
            self.status(),
            self.error_type(),
            self.code(),
            self.message(),
        );
        if self.status() == 503 {
            e.with_retry_after(1)
        } else {
            e
        }
    }

    /// The `WWW-Authenticate` value for 401 and 403 answers (RFC 6750 section 3).
    pub fn www_authenticate(&self) -> Option<String> {
        let error = match self {
            AuthError::MissingToken => return Some("Bearer".to_string()),
            AuthError::KeysUnavailable { .. } => return None,
            AuthError::MultipleCredentials | AuthError::UnsupportedScheme => "invalid_request",
            AuthError::ClaimsNotSatisfied(_) => "insufficient_scope",
            _ => "invalid_token",
        };
        // Messages are fixed ASCII text; drop anything that would break the quoted-string.
        let description: String = self
            .message()
            .chars()
            .filter(|c| *c != '"' && *c != '\\' && (' '..='~').contains(c))
            .collect();
        Some(format!(
            "Bearer error=\"{error}\", error_description=\"{description}\""
        ))
    }

    /// Every response header of the answer: the JSON content type, Retry-After when set, and
    /// WWW-Authenticate.
    pub fn response_headers(&self) -> Vec<(&'static str, String)> {
        let mut h = self.to_filter_error().headers();
        if let Some(v) = self.www_authenticate() {
            h.push(("www-authenticate", v));
        }
        h
    }
}

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code(), self.message())
    }
}
