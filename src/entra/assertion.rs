//! Certificate credentials (`private_key_jwt`): the RSA key, the certificate thumbprints and the
//! signed `client_assertion` JWT (AZURE-WIRE.md section 2, "Certificate"; Microsoft Learn,
//! "Microsoft identity platform application authentication certificate credentials").
//!
//! Header: `alg` PS256 (default) or RS256, `typ` JWT, `x5t#S256` = base64url SHA-256 of the
//! certificate DER (and, with RS256, `x5t` = SHA-1 when known, as MSAL sends it).
//! Claims: `aud` = the token endpoint, `iss` = `sub` = client id, unique `jti`, `nbf` = `iat` =
//! now, `exp` = now + 10 minutes.
//!
//! Nothing here ever puts key material in an error, a log line or Debug output.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::DecodePrivateKey;
use rsa::traits::{PrivateKeyParts, PublicKeyParts};
use rsa::{Pkcs1v15Sign, Pss, RsaPrivateKey};
use serde::Deserialize;
use sha1::Sha1;
use sha2::{Digest, Sha256};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// Signature algorithm of a certificate credential's client assertion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum SigningAlgorithm {
    /// RSASSA-PSS with SHA-256 (what Entra asks for today).
    #[serde(rename = "PS256")]
    Ps256,
    /// RSASSA-PKCS1-v1_5 with SHA-256 (still accepted).
    #[serde(rename = "RS256")]
    Rs256,
}

impl SigningAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            SigningAlgorithm::Ps256 => "PS256",
            SigningAlgorithm::Rs256 => "RS256",
        }
    }
}

/// Entra refuses shorter keys.
pub const MIN_KEY_BITS: usize = 2048;
/// Signing cost grows with the cube of the size and runs on an Envoy worker: cap it.
pub const MAX_KEY_BITS: usize = 4096;
/// Entra accepts assertions valid for at most 10 minutes.
pub const ASSERTION_LIFETIME_S: u64 = 600;
/// Longest PEM text accepted (a key plus a certificate chain).
const MAX_PEM_LEN: usize = 64 * 1024;

/// An RSA private key ready to sign client assertions, with the thumbprints of its certificate.
/// Debug output shows the algorithm, size and thumbprints (public), never the key.
#[derive(Clone, PartialEq, Eq)]
pub struct AssertionKey {
    key: RsaPrivateKey,
    algorithm: SigningAlgorithm,
    /// base64url SHA-256 of the certificate DER (`x5t#S256`).
    x5t_s256: Option<String>,
    /// base64url SHA-1 of the certificate DER (`x5t`).
    x5t: Option<String>,
}

impl fmt::Debug for AssertionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AssertionKey")
            .field("key", &format_args!("<redacted {}-bit RSA>", self.bits()))
            .field("algorithm", &self.algorithm)
            .field("x5t_s256", &self.x5t_s256)
            .field("x5t", &self.x5t)
            .finish()
    }
}

/// A PEM text split into its blocks.
struct PemBlock {
    label: String,
    der: Vec<u8>,
}

/// Splits PEM text into blocks. Tolerates CRLF, indentation, text around the blocks, a PEM
/// whose newlines were lost (all on one line) and literal `\n` sequences (a PEM pasted into an
/// environment variable). Errors never quote the text.
fn pem_blocks(text: &str) -> Result<Vec<PemBlock>, String> {
    if text.len() > MAX_PEM_LEN {
        return Err(format!("PEM text longer than {MAX_PEM_LEN} bytes"));
    }
    let normalized;
    let text = if !text.contains('\n') && text.contains("\\n") {
        normalized = text.replace("\\r", "").replace("\\n", "\n");
        normalized.as_str()
    } else {
        text
    };
    const BEGIN: &str = "-----BEGIN ";
    const DASHES: &str = "-----";
    let mut blocks = Vec::new();
    let mut rest = text;
    while let Some((_, after_begin)) = rest.split_once(BEGIN) {
        let (label, body_and_rest) = after_begin
            .split_once(DASHES)
            .ok_or("a PEM BEGIN line is not terminated")?;
        if label.is_empty() || label.len() > 64 || label.bytes().any(|b| b.is_ascii_control()) {
            return Err("a PEM block has an invalid label".into());
        }
        let end_marker = format!("-----END {label}-----");
        let (body, after) = body_and_rest
            .split_once(&end_marker)
            .ok_or_else(|| format!("the PEM block {label} has no END line"))?;
        if body.contains("Proc-Type:") || body.contains("DEK-Info:") {
            return Err(format!(
                "the PEM block {label} is encrypted; give an unencrypted key \
                 (openssl pkcs8 -topk8 -nocrypt)"
            ));
        }
        let b64: String = body.chars().filter(|c| !c.is_whitespace()).collect();
        let der = STANDARD
            .decode(b64.as_bytes())
            .map_err(|_| format!("the PEM block {label} is not valid base64"))?;
        blocks.push(PemBlock {
            label: label.to_string(),
            der,
        });
        rest = after;
    }
    if blocks.is_empty() {
        return Err("no PEM block (-----BEGIN ...-----) found".into());
    }
    Ok(blocks)
}

/// Parses an RSA private key in PKCS#8 (`PRIVATE KEY`) or PKCS#1 (`RSA PRIVATE KEY`) PEM.
/// Certificates in the same text (a key+certificate bundle, as Key Vault exports) are returned
/// too, as DER. The key is validated and its size checked.
pub fn parse_private_key_pem(text: &str) -> Result<(RsaPrivateKey, Vec<Vec<u8>>), String> {
    let mut key = None;
    let mut certificates = Vec::new();
    for block in pem_blocks(text)? {
        let parsed =
            match block.label.as_str() {
                "CERTIFICATE" => {
                    certificates.push(block.der);
                    continue;
                }
                "PRIVATE KEY" => parse_pkcs8(&block.der)?,
                "RSA PRIVATE KEY" => RsaPrivateKey::from_pkcs1_der(&block.der)
                    .map_err(|_| "the PKCS#1 RSA private key is malformed".to_string())?,
                "ENCRYPTED PRIVATE KEY" => {
                    return Err(
                        "the private key is encrypted; give an unencrypted PKCS#8 or PKCS#1 key \
                     (openssl pkcs8 -topk8 -nocrypt)"
                            .into(),
                    )
                }
                "EC PRIVATE KEY" | "OPENSSH PRIVATE KEY" => return Err(
                    "only RSA private keys are supported (Entra certificate credentials use RSA)"
                        .into(),
                ),
                _ => continue,
            };
        if key.is_some() {
            return Err("the PEM text holds more than one private key".into());
        }
        key = Some(parsed);
    }
    let mut key = key.ok_or("no PRIVATE KEY or RSA PRIVATE KEY block found")?;
    let bits = key.size() * 8;
    if !(MIN_KEY_BITS..=MAX_KEY_BITS).contains(&bits) {
        return Err(format!(
            "the RSA key has {bits} bits; Entra needs at least {MIN_KEY_BITS} and the filter \
             signs with at most {MAX_KEY_BITS}"
        ));
    }
    key.validate()
        .map_err(|_| "the RSA private key is inconsistent (validation failed)".to_string())?;
    key.precompute()
        .map_err(|_| "the RSA private key is inconsistent (CRT values)".to_string())?;
    Ok((key, certificates))
}

fn parse_pkcs8(der: &[u8]) -> Result<RsaPrivateKey, String> {
    let info = rsa::pkcs8::PrivateKeyInfo::try_from(der)
        .map_err(|_| "the PKCS#8 private key is malformed".to_string())?;
    if info.algorithm.oid != rsa::pkcs1::ALGORITHM_OID {
        return Err(
            "the PKCS#8 private key is not an RSA key (Entra certificate credentials use RSA)"
                .into(),
        );
    }
    RsaPrivateKey::from_pkcs8_der(der)
        .map_err(|_| "the PKCS#8 RSA private key is malformed".to_string())
}

/// The DER of every certificate in a PEM text (at least one).
pub fn parse_certificates_pem(text: &str) -> Result<Vec<Vec<u8>>, String> {
    let certs: Vec<Vec<u8>> = pem_blocks(text)?
        .into_iter()
        .filter(|b| b.label == "CERTIFICATE")
        .map(|b| b.der)
        .collect();
    if certs.is_empty() {
        return Err("no CERTIFICATE block found".into());
    }
    Ok(certs)
}

/// True when the certificate (DER) carries this key's public modulus, i.e. it is the key's
/// certificate. (The modulus is a 256+ byte INTEGER inside the SubjectPublicKeyInfo; finding it
/// verbatim is as good as parsing the X.509 structure for this purpose.)
pub fn certificate_matches_key(key: &RsaPrivateKey, certificate_der: &[u8]) -> bool {
    let n = key.n().to_bytes_be();
    !n.is_empty() && certificate_der.windows(n.len()).any(|w| w == n.as_slice())
}

/// The first certificate of the list that belongs to the key (the leaf of a chain).
pub fn certificate_for_key<'a>(key: &RsaPrivateKey, certs: &'a [Vec<u8>]) -> Option<&'a [u8]> {
    certs
        .iter()
        .find(|c| certificate_matches_key(key, c))
        .map(|c| c.as_slice())
}

pub fn sha256_thumbprint(der: &[u8]) -> [u8; 32] {
    Sha256::digest(der).into()
}

pub fn sha1_thumbprint(der: &[u8]) -> [u8; 20] {
    Sha1::digest(der).into()
}

/// Reads a thumbprint written as hex (any case, `:` or spaces allowed between bytes, as
/// `openssl x509 -fingerprint` and the Azure portal print them) or base64url / base64.
pub fn parse_thumbprint<const N: usize>(text: &str) -> Option<[u8; N]> {
    let compact: String = text
        .chars()
        .filter(|c| *c != ':' && !c.is_whitespace())
        .collect();
    if compact.len() == 2 * N && compact.bytes().all(|b| b.is_ascii_hexdigit()) {
        let mut out = [0u8; N];
        for (i, byte) in out.iter_mut().enumerate() {
            let pair = compact.get(2 * i..2 * i + 2)?;
            *byte = u8::from_str_radix(pair, 16).ok()?;
        }
        return Some(out);
    }
    let unpadded = compact.trim_end_matches('=');
    let url_safe: String = unpadded
        .chars()
        .map(|c| match c {
            '+' => '-',
            '/' => '_',
            c => c,
        })
        .collect();
    let bytes = URL_SAFE_NO_PAD.decode(url_safe.as_bytes()).ok()?;
    bytes.try_into().ok()
}

impl AssertionKey {
    /// Combines a key with its certificate's thumbprints. PS256 assertions carry `x5t#S256`, so
    /// they need the SHA-256 thumbprint; RS256 ones work with either.
    pub fn new(
        key: RsaPrivateKey,
        algorithm: SigningAlgorithm,
        sha256: Option<[u8; 32]>,
        sha1: Option<[u8; 20]>,
    ) -> Result<AssertionKey, String> {
        match (algorithm, sha256, sha1) {
            (_, None, None) => {
                return Err(
                    "the certificate is unknown: give certificate_thumbprint_sha256 or \
                     certificate_pem (or put the certificate after the key in the PEM)"
                        .into(),
                )
            }
            (SigningAlgorithm::Ps256, None, Some(_)) => {
                return Err(
                    "PS256 assertions carry x5t#S256: give certificate_thumbprint_sha256 \
                     or certificate_pem, or use algorithm RS256 with the SHA-1 thumbprint"
                        .into(),
                )
            }
            _ => {}
        }
        Ok(AssertionKey {
            key,
            algorithm,
            x5t_s256: sha256.map(|t| URL_SAFE_NO_PAD.encode(t)),
            x5t: sha1.map(|t| URL_SAFE_NO_PAD.encode(t)),
        })
    }

    pub fn bits(&self) -> usize {
        self.key.size() * 8
    }

    pub fn algorithm(&self) -> SigningAlgorithm {
        self.algorithm
    }

    /// The `x5t#S256` header value, if the SHA-256 thumbprint is known.
    pub fn x5t_s256(&self) -> Option<&str> {
        self.x5t_s256.as_deref()
    }

    /// The public key, for tests and diagnostics.
    pub fn public_key(&self) -> rsa::RsaPublicKey {
        self.key.to_public_key()
    }

    /// Signs a client assertion for `audience` (the token endpoint URL). The error is a
    /// description without key material.
    pub fn sign_assertion(
        &self,
        audience: &str,
        client_id: &str,
        now_s: u64,
    ) -> Result<String, String> {
        let mut rng = assertion_rng(now_s, &self.key, os_seed());
        let jti = uuid_v4(&mut rng);
        let mut header = serde_json::Map::new();
        header.insert("alg".into(), self.algorithm.as_str().into());
        header.insert("typ".into(), "JWT".into());
        if let Some(t) = &self.x5t_s256 {
            header.insert("x5t#S256".into(), t.clone().into());
        }
        // `x5t` (SHA-1) only beside RS256, as MSAL does; PS256 goes with `x5t#S256` alone.
        if let (SigningAlgorithm::Rs256, Some(t)) = (self.algorithm, &self.x5t) {
            header.insert("x5t".into(), t.clone().into());
        }
        let claims = serde_json::json!({
            "aud": audience,
            "iss": client_id,
            "sub": client_id,
            "jti": jti,
            "nbf": now_s,
            "iat": now_s,
            "exp": now_s.saturating_add(ASSERTION_LIFETIME_S),
        });
        let header = serde_json::Value::Object(header).to_string();
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let digest = Sha256::digest(signing_input.as_bytes());
        // Blinded private-key operation in both cases; PSS salt = 32 bytes (hash length).
        let signature = match self.algorithm {
            SigningAlgorithm::Ps256 => {
                self.key
                    .sign_with_rng(&mut rng, Pss::new_blinded::<Sha256>(), &digest)
            }
            SigningAlgorithm::Rs256 => {
                self.key
                    .sign_with_rng(&mut rng, Pkcs1v15Sign::new::<Sha256>(), &digest)
            }
        }
        .map_err(|_| "signing the client assertion failed".to_string())?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature)
        ))
    }
}

static FALLBACK_COUNTER: AtomicU64 = AtomicU64::new(0);

/// 32 bytes from the host (WASI `random_get`, which Envoy implements), or None.
fn os_seed() -> Option<[u8; 32]> {
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed).ok().map(|()| seed)
}

/// The RNG for one assertion (PSS salt, RSA blinding, jti). Seeded from the host's randomness;
/// if that ever fails the fetch must not: the seed then comes from a hash of the private
/// exponent (unknown outside), the time and a per-VM counter, which keeps jti unique and the
/// salt unpredictable.
fn assertion_rng(now_s: u64, key: &RsaPrivateKey, os: Option<[u8; 32]>) -> ChaCha20Rng {
    let seed = os.unwrap_or_else(|| {
        let counter = FALLBACK_COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut h = Sha256::new();
        h.update(b"azure-llm-filter assertion rng fallback\0");
        h.update(key.d().to_bytes_be());
        h.update(now_s.to_be_bytes());
        h.update(counter.to_be_bytes());
        h.finalize().into()
    });
    ChaCha20Rng::from_seed(seed)
}

/// A random (version 4) UUID, the usual shape of a `jti`.
fn uuid_v4(rng: &mut impl RngCore) -> String {
    let mut b = [0u8; 16];
    rng.fill_bytes(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        hex.get(0..8).unwrap_or_default(),
        hex.get(8..12).unwrap_or_default(),
        hex.get(12..16).unwrap_or_default(),
        hex.get(16..20).unwrap_or_default(),
        hex.get(20..32).unwrap_or_default()
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rsa::RsaPublicKey;

    pub const KEY_PKCS8: &str = include_str!("../../tests/keys/client-pkcs8.pem");
    pub const KEY_PKCS1: &str = include_str!("../../tests/keys/client-pkcs1.pem");
    pub const CERT: &str = include_str!("../../tests/keys/client-cert.pem");
    pub const OTHER_KEY: &str = include_str!("../../tests/keys/other-pkcs8.pem");
    pub const OTHER_CERT: &str = include_str!("../../tests/keys/other-cert.pem");
    pub const WEAK_KEY: &str = include_str!("../../tests/keys/weak-1024.pem");
    pub const EC_KEY: &str = include_str!("../../tests/keys/ec-p256.pem");
    pub const CERT_SHA256_HEX: &str =
        "3B:80:EA:6F:6B:59:43:B4:38:D1:65:40:33:8D:78:C4:CA:69:E1:F4:C0:D3:38:DD:33:08:F7:2E:45:71:8A:C0";
    pub const CERT_SHA1_HEX: &str = "19FAA04F6A6602350D8EE689BDB3143D5B396F58";

    /// Decodes a compact JWS and checks its signature with the public key; returns the header
    /// and claims.
    pub fn verify_jwt(jwt: &str, public: &RsaPublicKey) -> (serde_json::Value, serde_json::Value) {
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3, "not a compact JWS");
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        let sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        let digest = Sha256::digest(format!("{}.{}", parts[0], parts[1]).as_bytes());
        match header["alg"].as_str().unwrap() {
            "PS256" => public
                .verify(Pss::new::<Sha256>(), &digest, &sig)
                .expect("PS256 signature verifies"),
            "RS256" => public
                .verify(Pkcs1v15Sign::new::<Sha256>(), &digest, &sig)
                .expect("RS256 signature verifies"),
            other => panic!("unexpected alg {other}"),
        }
        (header, claims)
    }

    pub fn test_key(alg: SigningAlgorithm) -> AssertionKey {
        let (key, _) = parse_private_key_pem(KEY_PKCS8).unwrap();
        AssertionKey::new(
            key,
            alg,
            parse_thumbprint(CERT_SHA256_HEX),
            parse_thumbprint(CERT_SHA1_HEX),
        )
        .unwrap()
    }

    #[test]
    fn pkcs8_and_pkcs1_give_the_same_key() {
        let (a, certs) = parse_private_key_pem(KEY_PKCS8).unwrap();
        assert!(certs.is_empty());
        let (b, _) = parse_private_key_pem(KEY_PKCS1).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.size() * 8, 2048);
    }

    #[test]
    fn pem_tolerance() {
        // CRLF, a one-line PEM, literal \n sequences, text around the block.
        let crlf = KEY_PKCS8.replace('\n', "\r\n");
        let one_line = KEY_PKCS8.replace('\n', " ");
        let escaped = KEY_PKCS8.replace('\n', "\\n");
        let wrapped = format!("Bag Attributes\n  friendlyName: x\n{KEY_PKCS8}\ntrailing");
        let (reference, _) = parse_private_key_pem(KEY_PKCS8).unwrap();
        for text in [crlf, one_line, escaped, wrapped] {
            let (k, _) = parse_private_key_pem(&text).unwrap();
            assert_eq!(k, reference);
        }
    }

    #[test]
    fn bad_keys_are_refused_without_quoting_them() {
        let truncated = &KEY_PKCS8[..KEY_PKCS8.len() / 2];
        let mut corrupted = KEY_PKCS8.to_string();
        corrupted.replace_range(100..110, "AAAAAAAAAA");
        let cases = [
            ("", "no PEM block"),
            ("not a pem", "no PEM block"),
            (CERT, "no PRIVATE KEY"),
            (truncated, "no END line"),
            (WEAK_KEY, "1024 bits"),
            (EC_KEY, "not an RSA key"),
            (
                "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----",
                "encrypted",
            ),
            (
                "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00\n\nAAAA\n-----END RSA PRIVATE KEY-----",
                "encrypted",
            ),
            (
                "-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----",
                "base64",
            ),
        ];
        for (text, want) in cases {
            let e = parse_private_key_pem(text).unwrap_err();
            assert!(e.contains(want), "{want:?} not in {e:?}");
            assert!(!e.contains("MII"), "key material in error: {e}");
        }
        let e = parse_private_key_pem(&corrupted).unwrap_err();
        assert!(!e.contains("MII"), "{e}");
        let two = format!("{KEY_PKCS8}\n{OTHER_KEY}");
        assert!(parse_private_key_pem(&two)
            .unwrap_err()
            .contains("more than one"));
    }

    #[test]
    fn certificate_thumbprints_and_matching() {
        let certs = parse_certificates_pem(CERT).unwrap();
        assert_eq!(certs.len(), 1);
        assert_eq!(
            Some(sha256_thumbprint(&certs[0])),
            parse_thumbprint(CERT_SHA256_HEX)
        );
        assert_eq!(
            Some(sha1_thumbprint(&certs[0])),
            parse_thumbprint(CERT_SHA1_HEX)
        );
        let (key, _) = parse_private_key_pem(KEY_PKCS8).unwrap();
        assert!(certificate_matches_key(&key, &certs[0]));
        let other = parse_certificates_pem(OTHER_CERT).unwrap();
        assert!(!certificate_matches_key(&key, &other[0]));
        // A chain: the key's certificate is found wherever it is.
        let chain = parse_certificates_pem(&format!("{OTHER_CERT}{CERT}")).unwrap();
        assert_eq!(certificate_for_key(&key, &chain), Some(certs[0].as_slice()));
        // A bundle: key and certificate in one PEM.
        let (_, in_bundle) = parse_private_key_pem(&format!("{KEY_PKCS8}{CERT}")).unwrap();
        assert_eq!(in_bundle, certs);
        assert!(parse_certificates_pem(KEY_PKCS8).is_err());
    }

    #[test]
    fn thumbprint_formats() {
        let want: [u8; 32] = parse_thumbprint(CERT_SHA256_HEX).unwrap();
        let lower = CERT_SHA256_HEX.replace(':', "").to_lowercase();
        let b64url = URL_SAFE_NO_PAD.encode(want);
        let b64 = STANDARD.encode(want);
        for text in [lower.as_str(), b64url.as_str(), b64.as_str()] {
            assert_eq!(parse_thumbprint::<32>(text), Some(want), "{text}");
        }
        assert_eq!(parse_thumbprint::<32>(CERT_SHA1_HEX), None);
        assert_eq!(parse_thumbprint::<32>("zz"), None);
        assert_eq!(parse_thumbprint::<32>(""), None);
        assert_eq!(parse_thumbprint::<20>(&"g".repeat(40)), None);
    }

    #[test]
    fn ps256_assertion_verifies_and_has_the_claims() {
        let key = test_key(SigningAlgorithm::Ps256);
        let aud = "https://login.microsoftonline.com/tenant-1/oauth2/v2.0/token";
        let jwt = key.sign_assertion(aud, "app-1", 1_700_000_000).unwrap();
        let (header, claims) = verify_jwt(&jwt, &key.public_key());
        assert_eq!(header["alg"], "PS256");
        assert_eq!(header["typ"], "JWT");
        let want_s256 = URL_SAFE_NO_PAD.encode(parse_thumbprint::<32>(CERT_SHA256_HEX).unwrap());
        assert_eq!(header["x5t#S256"], want_s256.as_str());
        assert!(header.get("x5t").is_none(), "PS256 carries x5t#S256 only");
        assert_eq!(claims["aud"], aud);
        assert_eq!(claims["iss"], "app-1");
        assert_eq!(claims["sub"], "app-1");
        assert_eq!(claims["nbf"], 1_700_000_000u64);
        assert_eq!(claims["iat"], 1_700_000_000u64);
        assert_eq!(claims["exp"], 1_700_000_600u64);
        let jti = claims["jti"].as_str().unwrap();
        assert_eq!(jti.len(), 36);
        // Unique per assertion, even within one second.
        let again = key.sign_assertion(aud, "app-1", 1_700_000_000).unwrap();
        let (_, claims2) = verify_jwt(&again, &key.public_key());
        assert_ne!(claims2["jti"], claims["jti"]);
        // The signature does not verify with another key or over other claims.
        let (other, _) = parse_private_key_pem(OTHER_KEY).unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        let sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        let digest = Sha256::digest(format!("{}.{}", parts[0], parts[1]).as_bytes());
        assert!(other
            .to_public_key()
            .verify(Pss::new::<Sha256>(), &digest, &sig)
            .is_err());
        let digest2 = Sha256::digest(format!("{}.{}x", parts[0], parts[1]).as_bytes());
        assert!(key
            .public_key()
            .verify(Pss::new::<Sha256>(), &digest2, &sig)
            .is_err());
    }

    #[test]
    fn rs256_assertion_verifies() {
        let key = test_key(SigningAlgorithm::Rs256);
        let jwt = key
            .sign_assertion("https://a/t/oauth2/v2.0/token", "c", 5)
            .unwrap();
        let (header, claims) = verify_jwt(&jwt, &key.public_key());
        assert_eq!(header["alg"], "RS256");
        assert!(header["x5t#S256"].is_string());
        assert_eq!(
            header["x5t"],
            URL_SAFE_NO_PAD
                .encode(parse_thumbprint::<20>(CERT_SHA1_HEX).unwrap())
                .as_str()
        );
        assert_eq!(claims["exp"], 605);
    }

    #[test]
    fn thumbprint_requirements() {
        let (key, _) = parse_private_key_pem(KEY_PKCS8).unwrap();
        let s1 = parse_thumbprint::<20>(CERT_SHA1_HEX);
        assert!(AssertionKey::new(key.clone(), SigningAlgorithm::Ps256, None, None).is_err());
        assert!(AssertionKey::new(key.clone(), SigningAlgorithm::Ps256, None, s1).is_err());
        let rs = AssertionKey::new(key, SigningAlgorithm::Rs256, None, s1).unwrap();
        let jwt = rs
            .sign_assertion("https://a/t/oauth2/v2.0/token", "c", 5)
            .unwrap();
        let (header, _) = verify_jwt(&jwt, &rs.public_key());
        assert!(header.get("x5t#S256").is_none());
        assert!(header["x5t"].is_string());
    }

    #[test]
    fn rng_fallback_without_host_randomness_still_gives_unique_ids() {
        let (key, _) = parse_private_key_pem(KEY_PKCS8).unwrap();
        let mut a = assertion_rng(7, &key, None);
        let mut b = assertion_rng(7, &key, None);
        assert_ne!(uuid_v4(&mut a), uuid_v4(&mut b));
        let mut c = assertion_rng(7, &key, Some([1; 32]));
        let mut d = assertion_rng(7, &key, Some([1; 32]));
        assert_eq!(uuid_v4(&mut c), uuid_v4(&mut d));
    }

    #[test]
    fn debug_output_has_no_key_material() {
        let key = test_key(SigningAlgorithm::Ps256);
        let text = format!("{key:?}");
        assert!(text.contains("redacted"), "{text}");
        let (raw, _) = parse_private_key_pem(KEY_PKCS8).unwrap();
        let d_hex: String = raw.d().to_bytes_be()[..8]
            .iter()
            .map(|b| format!("{b:x}"))
            .collect();
        assert!(!text.contains(&d_hex));
        assert!(!text.contains("BigUint"), "{text}");
        assert!(text.len() < 300, "{text}");
    }

    #[test]
    fn random_text_never_panics_the_pem_parsers() {
        let mut rng = ChaCha20Rng::from_seed([9; 32]);
        let pieces = [
            "-----BEGIN ",
            "-----END ",
            "PRIVATE KEY",
            "RSA PRIVATE KEY",
            "CERTIFICATE",
            "-----",
            "\n",
            "\\n",
            "MIIB",
            "Proc-Type:",
            "=",
            "é",
        ];
        for _ in 0..3000 {
            let mut text = String::new();
            for _ in 0..(rng.next_u32() % 12) {
                if rng.next_u32() % 3 == 0 {
                    let mut b = [0u8; 8];
                    rng.fill_bytes(&mut b);
                    text.push_str(&String::from_utf8_lossy(&b));
                } else {
                    text.push_str(pieces[(rng.next_u32() as usize) % pieces.len()]);
                }
            }
            let _ = parse_private_key_pem(&text);
            let _ = parse_certificates_pem(&text);
            let _ = parse_thumbprint::<32>(&text);
            let _ = parse_thumbprint::<20>(&text);
        }
        // Mutated real keys.
        for i in 0..200 {
            let mut bytes = KEY_PKCS1.as_bytes().to_vec();
            let pos = (rng.next_u32() as usize) % bytes.len();
            bytes[pos] = b"ABCxyz+/=\n-"[i % 11];
            let _ = parse_private_key_pem(&String::from_utf8_lossy(&bytes));
        }
    }
}
