//! `client_certificate`: OAuth client credentials with a certificate; the filter signs the
//! client assertion (PS256 or RS256) with the private key.

use super::{
    check_nonempty_token, check_tenant, secret_source, Common, CredentialKind, SecretSource,
    SigningAlgorithm,
};
use crate::config::error::ConfigError;
use crate::entra::assertion::{
    certificate_for_key, parse_certificates_pem, parse_private_key_pem, parse_thumbprint,
    sha1_thumbprint, sha256_thumbprint, AssertionKey,
};
use serde::Deserialize;

// As written (no derived Debug: it may hold the private key; `RawCredential`'s is redacted).
#[derive(Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawClientCertificate {
    tenant_id: String,
    client_id: String,
    #[serde(default)]
    private_key_pem: Option<String>,
    #[serde(default)]
    private_key_env: Option<String>,
    #[serde(default)]
    certificate_thumbprint_sha256: Option<String>,
    #[serde(default)]
    certificate_thumbprint_sha1: Option<String>,
    #[serde(default)]
    certificate_pem: Option<String>,
    #[cfg_attr(feature = "schema", schemars(with = "Option<SigningAlgorithm>"))]
    #[serde(default)]
    algorithm: Option<String>,
    token_cluster: String,
    #[serde(default)]
    authority_host: Option<String>,
    #[serde(default)]
    scope: Option<String>,
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 120_000)))]
    #[serde(default)]
    timeout_ms: Option<u64>,
}

/// `f`: the dotted name of a field of this credential.
pub(super) fn validate(
    raw: RawClientCertificate,
    f: &impl Fn(&str) -> String,
) -> Result<(CredentialKind, Common), ConfigError> {
    let RawClientCertificate {
        tenant_id,
        client_id,
        private_key_pem,
        private_key_env,
        certificate_thumbprint_sha256,
        certificate_thumbprint_sha1,
        certificate_pem,
        algorithm,
        token_cluster,
        authority_host,
        scope,
        timeout_ms,
    } = raw;
    check_tenant(&f("tenant_id"), &tenant_id)?;
    check_nonempty_token(&f("client_id"), &client_id)?;
    let algorithm = match algorithm.as_deref() {
        None | Some("PS256") => SigningAlgorithm::Ps256,
        Some("RS256") => SigningAlgorithm::Rs256,
        Some(_) => {
            return Err(ConfigError::new(
                f("algorithm"),
                "must be \"PS256\" (default) or \"RS256\"",
            ))
        }
    };
    let private_key = secret_source(
        f,
        ("private_key_pem", private_key_pem),
        ("private_key_env", private_key_env),
        "a PEM private_key_pem or private_key_env is required",
    )?;
    let sha256 = match &certificate_thumbprint_sha256 {
        Some(t) => Some(parse_thumbprint::<32>(t).ok_or_else(|| {
            ConfigError::new(
                f("certificate_thumbprint_sha256"),
                "must be the certificate's SHA-256 thumbprint: 64 hex digits \
                 (':' allowed) or 43 base64url characters",
            )
        })?),
        None => None,
    };
    let sha1 = match &certificate_thumbprint_sha1 {
        Some(t) => Some(parse_thumbprint::<20>(t).ok_or_else(|| {
            ConfigError::new(
                f("certificate_thumbprint_sha1"),
                "must be the certificate's SHA-1 thumbprint: 40 hex digits \
                 (':' allowed) or 27 base64url characters",
            )
        })?),
        None => None,
    };
    let (sha256, sha1) = thumbprints(
        f,
        &private_key,
        certificate_pem.as_deref(),
        algorithm,
        (sha256, sha1),
    )?;
    Ok((
        CredentialKind::ClientCertificate {
            tenant_id,
            client_id,
            private_key,
            algorithm,
            thumbprint_sha256: sha256,
            thumbprint_sha1: sha1,
        },
        Common {
            token_cluster,
            authority_host,
            scope,
            timeout_ms,
        },
    ))
}

type Thumbprints = (Option<[u8; 32]>, Option<[u8; 20]>);

/// The certificate's thumbprints: as given, or taken from `certificate_pem` (checked against
/// the given ones), or from a key+certificate bundle. An inline key is parsed and checked here,
/// so its errors come at configure time and name the field; a key from the environment is
/// parsed by `resolve_secrets`.
fn thumbprints(
    f: &impl Fn(&str) -> String,
    private_key: &SecretSource,
    certificate_pem: Option<&str>,
    algorithm: SigningAlgorithm,
    (mut sha256, mut sha1): Thumbprints,
) -> Result<Thumbprints, ConfigError> {
    let inline_key = match private_key {
        SecretSource::Inline(pem) => Some(
            parse_private_key_pem(pem)
                .map_err(|why| ConfigError::new(f("private_key_pem"), why))?,
        ),
        SecretSource::Env(_) => None,
    };
    if let Some(cert_pem) = certificate_pem {
        let certs = parse_certificates_pem(cert_pem)
            .map_err(|why| ConfigError::new(f("certificate_pem"), why))?;
        let leaf = match &inline_key {
            Some((key, _)) => certificate_for_key(key, &certs).ok_or_else(|| {
                ConfigError::new(
                    f("certificate_pem"),
                    "no certificate in certificate_pem belongs to private_key_pem",
                )
            })?,
            None => certs.first().map(Vec::as_slice).unwrap_or_default(),
        };
        let (s256, s1) = (sha256_thumbprint(leaf), sha1_thumbprint(leaf));
        if sha256.is_some_and(|t| t != s256) {
            return Err(ConfigError::new(
                f("certificate_thumbprint_sha256"),
                "does not match the certificate in certificate_pem",
            ));
        }
        if sha1.is_some_and(|t| t != s1) {
            return Err(ConfigError::new(
                f("certificate_thumbprint_sha1"),
                "does not match the certificate in certificate_pem",
            ));
        }
        sha256 = Some(s256);
        sha1 = Some(s1);
    } else if let Some((key, bundled)) = &inline_key {
        // A key+certificate bundle gives the thumbprints unless they were given.
        if let (None, None, Some(leaf)) = (sha256, sha1, certificate_for_key(key, bundled)) {
            sha256 = Some(sha256_thumbprint(leaf));
            sha1 = Some(sha1_thumbprint(leaf));
        }
    }
    if let Some((key, _)) = inline_key {
        AssertionKey::new(key, algorithm, sha256, sha1)
            .map_err(|why| ConfigError::new(f("certificate_thumbprint_sha256"), why))?;
    } else if sha256.is_none() && algorithm == SigningAlgorithm::Ps256 && sha1.is_some() {
        return Err(ConfigError::new(
            f("certificate_thumbprint_sha256"),
            "PS256 assertions carry x5t#S256: give certificate_thumbprint_sha256 or \
             certificate_pem, or use algorithm RS256 with the SHA-1 thumbprint",
        ));
    }
    Ok((sha256, sha1))
}
