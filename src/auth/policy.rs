//! What a provider accepts: issuer, audience, validity window, tenant, required claims, and
//! which claim names the workload. Pure functions over the token's claims (a JSON object).
//!
//! Entra issuer forms (AZURE-WIRE.md §3): v2 `https://login.microsoftonline.com/{tid}/v2.0`,
//! v1 `https://sts.windows.net/{tid}/`. A configured issuer may contain the literal `{tid}`:
//! it then matches the token's own `tid` claim in that place (multi-tenant apps), and the
//! provider must list allowed tenants.

use super::error::AuthError;
use serde_json::{Map, Value};

pub type Claims = Map<String, Value>;

const TID_PLACEHOLDER: &str = "{tid}";

/// A configured issuer: exact, or a template with one `{tid}` placeholder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IssuerPattern {
    Exact(String),
    Template { prefix: String, suffix: String },
}

impl IssuerPattern {
    pub fn parse(s: &str) -> Result<IssuerPattern, &'static str> {
        if s.is_empty() || s.len() > 512 || s.chars().any(|c| c.is_control() || c == ' ') {
            return Err("must be a non-empty issuer URL without spaces");
        }
        if !(s.starts_with("https://") || s.starts_with("http://")) {
            return Err("must be the issuer URL exactly as the tokens carry it (https://...)");
        }
        match s.find(TID_PLACEHOLDER) {
            None => Ok(IssuerPattern::Exact(s.to_string())),
            Some(i) => {
                let prefix = s.get(..i).unwrap_or_default();
                let suffix = s.get(i + TID_PLACEHOLDER.len()..).unwrap_or_default();
                if suffix.contains(TID_PLACEHOLDER) {
                    return Err("{tid} may appear only once");
                }
                Ok(IssuerPattern::Template {
                    prefix: prefix.to_string(),
                    suffix: suffix.to_string(),
                })
            }
        }
    }

    pub fn is_template(&self) -> bool {
        matches!(self, IssuerPattern::Template { .. })
    }

    /// True when `iss` is this issuer; a template takes the tenant from the `tid` claim.
    pub fn matches(&self, iss: &str, tid: Option<&str>) -> bool {
        match self {
            IssuerPattern::Exact(s) => s == iss,
            IssuerPattern::Template { prefix, suffix } => {
                let Some(tid) = tid.filter(|t| !t.is_empty()) else {
                    return false;
                };
                iss.len() == prefix.len() + tid.len() + suffix.len()
                    && iss.starts_with(prefix.as_str())
                    && iss.ends_with(suffix.as_str())
                    && iss.get(prefix.len()..prefix.len() + tid.len()) == Some(tid)
            }
        }
    }
}

/// How a required claim is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimRule {
    /// The claim equals this string, number or boolean exactly.
    Equals(Value),
    /// At least one of these values is present.
    AnyOf(Vec<String>),
    /// All of these values are present.
    AllOf(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRequirement {
    pub claim: String,
    pub rule: ClaimRule,
}

impl ClaimRequirement {
    /// For `any_of`/`all_of` the claim's values are the strings of an array claim (`roles`,
    /// `groups`), or the space-separated words of a string claim (`scp`).
    pub fn is_satisfied(&self, claims: &Claims) -> bool {
        let Some(v) = claims.get(&self.claim) else {
            return false;
        };
        match &self.rule {
            ClaimRule::Equals(expected) => v == expected,
            ClaimRule::AnyOf(list) => {
                let present = values_of(v);
                list.iter().any(|w| present.contains(&w.as_str()))
            }
            ClaimRule::AllOf(list) => {
                let present = values_of(v);
                list.iter().all(|w| present.contains(&w.as_str()))
            }
        }
    }
}

fn values_of(v: &Value) -> Vec<&str> {
    match v {
        Value::String(s) => s.split_ascii_whitespace().collect(),
        Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

/// A NumericDate claim (seconds, possibly fractional). Missing: Ok(None); not a number: Err.
pub fn numeric_date(claims: &Claims, name: &str) -> Result<Option<u64>, AuthError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(u) = n.as_u64() {
                Ok(Some(u))
            } else if let Some(i) = n.as_i64() {
                // Negative dates are before 1970: treat as 0.
                Ok(Some(u64::try_from(i).unwrap_or(0)))
            } else if let Some(f) = n.as_f64().filter(|f| f.is_finite()) {
                Ok(Some(if f <= 0.0 {
                    0
                } else {
                    f.min(u64::MAX as f64) as u64
                }))
            } else {
                Err(AuthError::Malformed(
                    "A time claim of the token is not a number.",
                ))
            }
        }
        Some(_) => Err(AuthError::Malformed(
            "A time claim of the token is not a number.",
        )),
    }
}

/// Checks `exp` (required) and `nbf` (optional) with `skew_s` of tolerance; returns `exp`.
pub fn check_times(claims: &Claims, now_s: u64, skew_s: u64) -> Result<u64, AuthError> {
    let Some(exp) = numeric_date(claims, "exp")? else {
        return Err(AuthError::Malformed("The token has no exp claim."));
    };
    if now_s >= exp.saturating_add(skew_s) {
        return Err(AuthError::Expired);
    }
    if let Some(nbf) = numeric_date(claims, "nbf")? {
        if nbf > now_s.saturating_add(skew_s) {
            return Err(AuthError::NotYetValid);
        }
    }
    Ok(exp)
}

/// `aud` may be a string or an array of strings (RFC 7519 §4.1.3).
pub fn audience_matches(claims: &Claims, audiences: &[String]) -> bool {
    match claims.get("aud") {
        Some(Value::String(a)) => audiences.iter().any(|x| x == a),
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(Value::as_str)
            .any(|a| audiences.iter().any(|x| x == a)),
        _ => false,
    }
}

/// The token's `tid`, when it is a string.
pub fn tenant_of(claims: &Claims) -> Option<&str> {
    claims.get("tid").and_then(Value::as_str)
}

/// An empty allow-list accepts any tenant; otherwise `tid` must be listed (case-insensitive).
pub fn tenant_allowed(claims: &Claims, tenants: &[String]) -> bool {
    if tenants.is_empty() {
        return true;
    }
    match tenant_of(claims) {
        Some(t) => tenants.iter().any(|x| x.eq_ignore_ascii_case(t)),
        None => false,
    }
}

/// Every required claim holds.
pub fn check_required_claims(
    claims: &Claims,
    required: &[ClaimRequirement],
) -> Result<(), AuthError> {
    if required.iter().all(|r| r.is_satisfied(claims)) {
        Ok(())
    } else {
        Err(AuthError::ClaimsNotSatisfied(
            "The token's claims do not satisfy the access policy (required claims or roles are missing).",
        ))
    }
}

/// The workload name: the first of `workload_claims` present as a usable string.
pub fn workload_of(claims: &Claims, workload_claims: &[String]) -> Result<String, AuthError> {
    workload_claims
        .iter()
        .find_map(|c| claims.get(c).and_then(Value::as_str))
        .filter(|w| super::config::is_valid_workload(w))
        .map(str::to_string)
        .ok_or(AuthError::ClaimsNotSatisfied(
            "The token does not name the calling workload (no usable azp/appid or configured workload claim).",
        ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> Claims {
        v.as_object().cloned().unwrap()
    }

    const T: &str = "11111111-1111-1111-1111-111111111111";

    #[test]
    fn v1_and_v2_issuers() {
        let v2 =
            IssuerPattern::parse(&format!("https://login.microsoftonline.com/{T}/v2.0")).unwrap();
        let v1 = IssuerPattern::parse(&format!("https://sts.windows.net/{T}/")).unwrap();
        assert!(v2.matches(&format!("https://login.microsoftonline.com/{T}/v2.0"), None));
        assert!(!v2.matches(
            &format!("https://login.microsoftonline.com/{T}/v2.0/"),
            None
        ));
        assert!(v1.matches(&format!("https://sts.windows.net/{T}/"), None));
        assert!(!v1.matches(&format!("https://sts.windows.net/{T}"), None));
    }

    #[test]
    fn issuer_template_takes_tid_from_the_token() {
        let p = IssuerPattern::parse("https://login.microsoftonline.com/{tid}/v2.0").unwrap();
        assert!(p.is_template());
        let iss = format!("https://login.microsoftonline.com/{T}/v2.0");
        assert!(p.matches(&iss, Some(T)));
        assert!(!p.matches(&iss, Some("22222222-2222-2222-2222-222222222222")));
        assert!(!p.matches(&iss, None));
        assert!(!p.matches("https://login.microsoftonline.com//v2.0", Some("")));
        assert!(IssuerPattern::parse("https://a/{tid}/{tid}").is_err());
        assert!(IssuerPattern::parse("sts.windows.net").is_err());
    }

    #[test]
    fn times_with_skew() {
        let c = claims(json!({"exp": 1000, "nbf": 900}));
        assert_eq!(check_times(&c, 950, 0), Ok(1000));
        assert_eq!(check_times(&c, 1000, 0), Err(AuthError::Expired));
        assert_eq!(check_times(&c, 1059, 60), Ok(1000));
        assert_eq!(check_times(&c, 1060, 60), Err(AuthError::Expired));
        assert_eq!(check_times(&c, 899, 0), Err(AuthError::NotYetValid));
        assert_eq!(check_times(&c, 840, 60), Ok(1000));
        assert_eq!(check_times(&c, 839, 60), Err(AuthError::NotYetValid));
        assert!(matches!(
            check_times(&claims(json!({})), 0, 0),
            Err(AuthError::Malformed(_))
        ));
        assert!(matches!(
            check_times(&claims(json!({"exp": "1000"})), 0, 0),
            Err(AuthError::Malformed(_))
        ));
        assert_eq!(
            check_times(&claims(json!({"exp": 1000.9})), 999, 0),
            Ok(1000)
        );
        assert_eq!(
            check_times(&claims(json!({"exp": -5})), 0, 0),
            Err(AuthError::Expired)
        );
        assert_eq!(
            check_times(&claims(json!({"exp": 1e300})), 0, 0),
            Ok(u64::MAX)
        );
    }

    #[test]
    fn audience_string_or_array() {
        let auds = vec!["api://gw".to_string(), "cid".to_string()];
        assert!(audience_matches(&claims(json!({"aud": "cid"})), &auds));
        assert!(audience_matches(
            &claims(json!({"aud": ["x", "api://gw"]})),
            &auds
        ));
        assert!(!audience_matches(&claims(json!({"aud": ["x"]})), &auds));
        assert!(!audience_matches(&claims(json!({"aud": 5})), &auds));
        assert!(!audience_matches(&claims(json!({})), &auds));
    }

    #[test]
    fn tenant_allow_list() {
        let allowed = vec![T.to_string()];
        assert!(tenant_allowed(
            &claims(json!({"tid": T.to_uppercase()})),
            &allowed
        ));
        assert!(!tenant_allowed(&claims(json!({"tid": "other"})), &allowed));
        assert!(!tenant_allowed(&claims(json!({})), &allowed));
        assert!(tenant_allowed(&claims(json!({})), &[]));
    }

    fn req(claim: &str, rule: ClaimRule) -> ClaimRequirement {
        ClaimRequirement {
            claim: claim.into(),
            rule,
        }
    }

    #[test]
    fn required_claims_any_all_equals() {
        let c = claims(
            json!({"roles": ["LLM.Invoke", "LLM.Admin"], "scp": "read write",
            "idtyp": "app", "ver": 2, "flag": true}),
        );
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert!(req("roles", ClaimRule::AnyOf(s(&["LLM.Invoke", "X"]))).is_satisfied(&c));
        assert!(!req("roles", ClaimRule::AnyOf(s(&["X"]))).is_satisfied(&c));
        assert!(req("roles", ClaimRule::AllOf(s(&["LLM.Invoke", "LLM.Admin"]))).is_satisfied(&c));
        assert!(!req("roles", ClaimRule::AllOf(s(&["LLM.Invoke", "X"]))).is_satisfied(&c));
        assert!(req("scp", ClaimRule::AllOf(s(&["write", "read"]))).is_satisfied(&c));
        assert!(req("idtyp", ClaimRule::Equals(json!("app"))).is_satisfied(&c));
        assert!(!req("idtyp", ClaimRule::Equals(json!("user"))).is_satisfied(&c));
        assert!(req("ver", ClaimRule::Equals(json!(2))).is_satisfied(&c));
        assert!(!req("ver", ClaimRule::Equals(json!("2"))).is_satisfied(&c));
        assert!(req("flag", ClaimRule::Equals(json!(true))).is_satisfied(&c));
        assert!(!req("missing", ClaimRule::AnyOf(s(&["a"]))).is_satisfied(&c));
        assert!(!req("ver", ClaimRule::AnyOf(s(&["2"]))).is_satisfied(&c));
        // Case matters: roles are exact strings.
        assert!(!req("roles", ClaimRule::AnyOf(s(&["llm.invoke"]))).is_satisfied(&c));
        assert_eq!(
            check_required_claims(&c, &[req("roles", ClaimRule::AnyOf(s(&["X"])))])
                .unwrap_err()
                .code(),
            "claims_not_satisfied"
        );
        assert!(check_required_claims(&c, &[]).is_ok());
    }

    #[test]
    fn workload_claim_order() {
        let order = vec!["azp".to_string(), "appid".to_string()];
        assert_eq!(
            workload_of(&claims(json!({"azp": "a", "appid": "b"})), &order).unwrap(),
            "a"
        );
        assert_eq!(
            workload_of(&claims(json!({"appid": "b"})), &order).unwrap(),
            "b"
        );
        assert!(workload_of(&claims(json!({"sub": "s"})), &order).is_err());
        assert!(workload_of(&claims(json!({"azp": 5})), &order).is_err());
        assert!(workload_of(&claims(json!({"azp": "has space"})), &order).is_err());
        assert!(workload_of(&claims(json!({"azp": "x".repeat(300)})), &order).is_err());
    }
}
