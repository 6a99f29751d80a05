//! `ConfigError` and the field checks every domain's configuration uses.
//!
//! The bottom of the crate's import graph: this file imports nothing of the crate (only std),
//! so each domain (`auth`, `entra::credential`, `routing::config`, `ratelimit`, `rls`) can
//! check its own section with it while `config` assembles the sections without an import
//! circle (tests/layout.rs keeps it that way).

use std::fmt;

/// Upper bound of every timeout in the configuration (milliseconds).
pub const MAX_TIMEOUT_MS: u64 = 120_000;

/// A configuration problem, with the dotted path of the offending field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub reason: String,
}

impl ConfigError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "invalid plugin configuration: {}", self.reason)
        } else {
            write!(
                f,
                "invalid plugin configuration: {}: {}",
                self.field, self.reason
            )
        }
    }
}

pub(crate) fn check_range(field: &str, v: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if v < min || v > max {
        return Err(ConfigError::new(
            field,
            format!("must be between {min} and {max}"),
        ));
    }
    Ok(())
}

/// Names of credentials, backends, providers: they end up in shared-data keys and logs.
pub(crate) fn check_name(field: &str, name: &str) -> Result<(), ConfigError> {
    check_bytes(
        field,
        name,
        64,
        is_name_byte,
        "names must be 1-64 characters of letters, digits, '-', '_', '.'",
    )
}

/// The shape of most names and ids in the config: 1 to `max_len` bytes, each one `allowed`.
pub(crate) fn check_bytes(
    field: &str,
    v: &str,
    max_len: usize,
    allowed: impl Fn(u8) -> bool,
    reason: &str,
) -> Result<(), ConfigError> {
    if v.is_empty() || v.len() > max_len || !v.bytes().all(allowed) {
        return Err(ConfigError::new(field, reason));
    }
    Ok(())
}

/// Letters, digits, '-', '_', '.'.
pub(crate) fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.'
}

/// Anything but ASCII whitespace and control characters (non-ASCII UTF-8 passes).
pub(crate) fn is_visible_byte(b: u8) -> bool {
    b > 0x20 && b != 0x7f
}

pub(crate) fn check_host(field: &str, host: &str) -> Result<(), ConfigError> {
    let (name, port) = match host.rsplit_once(':') {
        Some((n, p)) => (n, Some(p)),
        None => (host, None),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !name.starts_with('.')
        && !name.starts_with('-');
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0));
    if !name_ok || !port_ok {
        return Err(ConfigError::new(
            field,
            "must be a host name such as myresource.openai.azure.com (optionally :port)",
        ));
    }
    Ok(())
}

pub(crate) fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

pub(crate) fn is_safe_path_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.' || b == b':'
}

/// FNV-1a: tiny, dependency-free, stable across builds (unlike `DefaultHasher`).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

pub(crate) fn check_cluster(field: &str, cluster: &str) -> Result<(), ConfigError> {
    check_bytes(
        field,
        cluster,
        256,
        is_visible_byte,
        "must name an Envoy cluster (non-empty, no whitespace)",
    )
}

pub(crate) fn check_scope(field: &str, scope: &str) -> Result<(), ConfigError> {
    check_bytes(
        field,
        scope,
        512,
        is_visible_byte,
        "must be a scope such as https://cognitiveservices.azure.com/.default",
    )
}

pub(crate) fn check_env_name(field: &str, name: &str) -> Result<(), ConfigError> {
    check_bytes(
        field,
        name,
        128,
        is_name_byte,
        "must name an environment variable (letters, digits, '_')",
    )
}

/// A callout path: starts with '/', printable, no whitespace or fragment; a query only where
/// allowed.
pub(crate) fn check_path(field: &str, path: &str, query_allowed: bool) -> Result<(), ConfigError> {
    if !path.starts_with('/')
        || path.len() > 2048
        || path
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b < 0x21 || b == 0x7f || b == b'#')
        || (!query_allowed && path.contains('?'))
    {
        return Err(ConfigError::new(
            field,
            if query_allowed {
                "must be a path starting with '/' (a query is allowed), without whitespace"
            } else {
                "must be a path starting with '/', without query or whitespace"
            },
        ));
    }
    Ok(())
}
