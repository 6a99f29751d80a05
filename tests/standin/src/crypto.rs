//! Keys, certificates and JWTs (RS256 / PS256) for the stand-in.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use rsa::pkcs1::{DecodeRsaPrivateKey as _, DecodeRsaPublicKey as _};
use rsa::pkcs8::{DecodePrivateKey as _, DecodePublicKey as _};
use rsa::signature::{SignatureEncoding as _, Signer as _, Verifier as _};
use rsa::traits::PublicKeyParts as _;
use rsa::{RsaPrivateKey, RsaPublicKey};
use serde_json::{json, Map, Value};
use sha1::Sha1;
use sha2::{Digest as _, Sha256};
use std::sync::{Arc, OnceLock};

const PRIMARY_KEY: &str = include_str!("../keys/entra-primary-TEST-ONLY.key.pem");
const PRIMARY_CERT: &str = include_str!("../keys/entra-primary-TEST-ONLY.cert.pem");
const SECONDARY_KEY: &str = include_str!("../keys/entra-secondary-TEST-ONLY.key.pem");
const SECONDARY_CERT: &str = include_str!("../keys/entra-secondary-TEST-ONLY.cert.pem");
const KUBERNETES_KEY: &str = include_str!("../keys/kubernetes-issuer-TEST-ONLY.key.pem");
const KUBERNETES_CERT: &str = include_str!("../keys/kubernetes-issuer-TEST-ONLY.cert.pem");

/// One PEM block: label and DER.
pub struct PemBlock {
    pub label: String,
    pub der: Vec<u8>,
}

/// Every `-----BEGIN X-----` block of `text` (undecodable blocks are skipped).
pub fn pem_blocks(text: &str) -> Vec<PemBlock> {
    let mut out = Vec::new();
    let mut label: Option<String> = None;
    let mut b64 = String::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("-----BEGIN ") {
            label = Some(rest.trim_end_matches('-').to_string());
            b64.clear();
        } else if line.starts_with("-----END ") {
            if let Some(l) = label.take() {
                if let Ok(der) = STANDARD.decode(b64.as_bytes()) {
                    out.push(PemBlock { label: l, der });
                }
            }
            b64.clear();
        } else if label.is_some() && !line.contains(':') {
            b64.push_str(line);
        }
    }
    out
}

/// One DER TLV: (tag, whole TLV, contents, rest).
type Tlv<'a> = (u8, &'a [u8], &'a [u8], &'a [u8]);

fn der_tlv(input: &[u8]) -> Option<Tlv<'_>> {
    let tag = *input.first()?;
    let first = *input.get(1)? as usize;
    let (len, hdr) = if first < 0x80 {
        (first, 2)
    } else {
        let n = first & 0x7f;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | *input.get(2 + i)? as usize;
        }
        (len, 2 + n)
    };
    let end = hdr.checked_add(len)?;
    if end > input.len() {
        return None;
    }
    Some((tag, &input[..end], &input[hdr..end], &input[end..]))
}

/// The SubjectPublicKeyInfo (whole TLV) of an X.509 certificate.
pub fn certificate_spki(cert_der: &[u8]) -> Option<&[u8]> {
    let (tag, _, cert, _) = der_tlv(cert_der)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, _, tbs, _) = der_tlv(cert)?;
    if tag != 0x30 {
        return None;
    }
    let mut rest = tbs;
    // Optional explicit [0] version.
    if rest.first() == Some(&0xa0) {
        rest = der_tlv(rest)?.3;
    }
    // serialNumber, signature, issuer, validity, subject.
    for _ in 0..5 {
        rest = der_tlv(rest)?.3;
    }
    let (tag, spki, _, _) = der_tlv(rest)?;
    (tag == 0x30).then_some(spki)
}

/// A public key a client registered to verify its assertions with, and the certificate's
/// thumbprints when it was registered as a certificate.
pub struct RegisteredKey {
    pub key: RsaPublicKey,
    pub sha1: Option<[u8; 20]>,
    pub sha256: Option<[u8; 32]>,
}

/// Reads certificates (`CERTIFICATE`) and public keys (`PUBLIC KEY`, `RSA PUBLIC KEY`) from a PEM.
pub fn registered_keys(pem: &str) -> Vec<RegisteredKey> {
    let mut out = Vec::new();
    for block in pem_blocks(pem) {
        match block.label.as_str() {
            "CERTIFICATE" => {
                if let Some(key) = certificate_spki(&block.der)
                    .and_then(|s| RsaPublicKey::from_public_key_der(s).ok())
                {
                    out.push(RegisteredKey {
                        key,
                        sha1: Some(Sha1::digest(&block.der).into()),
                        sha256: Some(Sha256::digest(&block.der).into()),
                    });
                }
            }
            "PUBLIC KEY" => {
                if let Ok(key) = RsaPublicKey::from_public_key_der(&block.der) {
                    out.push(RegisteredKey {
                        key,
                        sha1: None,
                        sha256: None,
                    });
                }
            }
            "RSA PUBLIC KEY" => {
                if let Ok(key) = RsaPublicKey::from_pkcs1_der(&block.der) {
                    out.push(RegisteredKey {
                        key,
                        sha1: None,
                        sha256: None,
                    });
                }
            }
            _ => {}
        }
    }
    out
}

/// An Entra signing key: private key, public key, certificate and `kid`.
pub struct EntraSigningKey {
    pub private: RsaPrivateKey,
    pub public: RsaPublicKey,
    pub cert_der: Vec<u8>,
    /// base64url SHA-1 of the certificate DER (Entra's `kid` and `x5t`).
    pub kid: String,
}

impl EntraSigningKey {
    pub(crate) fn load(key_pem: &str, cert_pem: &str) -> Result<EntraSigningKey, String> {
        let key_block = pem_blocks(key_pem)
            .into_iter()
            .next()
            .ok_or("no PEM block in the key file")?;
        let private = match key_block.label.as_str() {
            "PRIVATE KEY" => {
                RsaPrivateKey::from_pkcs8_der(&key_block.der).map_err(|e| e.to_string())?
            }
            "RSA PRIVATE KEY" => {
                RsaPrivateKey::from_pkcs1_der(&key_block.der).map_err(|e| e.to_string())?
            }
            other => return Err(format!("unexpected PEM label {other}")),
        };
        let cert_der = pem_blocks(cert_pem)
            .into_iter()
            .find(|b| b.label == "CERTIFICATE")
            .ok_or("no certificate")?
            .der;
        let public = private.to_public_key();
        let kid = URL_SAFE_NO_PAD.encode(Sha1::digest(&cert_der));
        Ok(EntraSigningKey {
            private,
            public,
            cert_der,
            kid,
        })
    }

    /// The JWK of this key (Entra's shape).
    pub fn jwk(&self, issuer: Option<&str>) -> Value {
        let mut jwk = json!({
            "kty": "RSA",
            "use": "sig",
            "kid": self.kid,
            "x5t": self.kid,
            "n": URL_SAFE_NO_PAD.encode(self.public.n().to_bytes_be()),
            "e": URL_SAFE_NO_PAD.encode(self.public.e().to_bytes_be()),
            "x5c": [STANDARD.encode(&self.cert_der)],
        });
        if let Some(iss) = issuer {
            jwk["issuer"] = json!(iss);
        }
        jwk
    }

    /// RS256 JWT over `claims` with header `{"typ":"JWT","alg":"RS256","kid":kid,"x5t":kid}`,
    /// signed by this key but naming `kid`.
    pub fn sign_rs256_as(&self, kid: &str, claims: &Value) -> String {
        let header = json!({"typ": "JWT", "alg": "RS256", "kid": kid, "x5t": kid});
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signer = rsa::pkcs1v15::SigningKey::<Sha256>::new(self.private.clone());
        let sig = signer.sign(input.as_bytes()).to_vec();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
    }
}

/// The stand-in's key material: the key its Entra signs with and an unrelated "foreign" key.
pub struct KeySet {
    pub signing: Arc<EntraSigningKey>,
    pub foreign: Arc<EntraSigningKey>,
}

type KeyPair = (Arc<EntraSigningKey>, Arc<EntraSigningKey>);

fn builtin() -> Result<&'static KeyPair, String> {
    static KEYS: OnceLock<Result<KeyPair, String>> = OnceLock::new();
    KEYS.get_or_init(|| {
        let primary = EntraSigningKey::load(PRIMARY_KEY, PRIMARY_CERT)?;
        let secondary = EntraSigningKey::load(SECONDARY_KEY, SECONDARY_CERT)?;
        Ok((Arc::new(primary), Arc::new(secondary)))
    })
    .as_ref()
    .map_err(|e| format!("built-in test keys: {e}"))
}

impl KeySet {
    pub fn builtin(secondary: bool) -> Result<KeySet, String> {
        let (p, s) = builtin()?;
        Ok(if secondary {
            KeySet {
                signing: s.clone(),
                foreign: p.clone(),
            }
        } else {
            KeySet {
                signing: p.clone(),
                foreign: s.clone(),
            }
        })
    }
}

/// The stand-in Kubernetes issuer's TEST-ONLY key (`keys/kubernetes-issuer-TEST-ONLY.*`).
pub fn kubernetes_issuer_key() -> Result<Arc<EntraSigningKey>, String> {
    static KEY: OnceLock<Result<Arc<EntraSigningKey>, String>> = OnceLock::new();
    KEY.get_or_init(|| EntraSigningKey::load(KUBERNETES_KEY, KUBERNETES_CERT).map(Arc::new))
        .clone()
        .map_err(|e| format!("built-in Kubernetes issuer key: {e}"))
}

/// The stand-in's unrelated TEST-ONLY key (the secondary Entra key), for "signed by the wrong
/// key" tests of other issuers.
pub fn foreign_key() -> Result<Arc<EntraSigningKey>, String> {
    builtin().map(|(_, secondary)| secondary.clone())
}

/// A decoded (not yet verified) compact JWS.
pub struct Jwt {
    pub header: Map<String, Value>,
    pub claims: Map<String, Value>,
    signing_input: String,
    signature: Vec<u8>,
}

impl Jwt {
    pub fn decode(token: &str) -> Option<Jwt> {
        let mut parts = token.split('.');
        let (h, c, s) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || h.is_empty() || c.is_empty() || s.is_empty() {
            return None;
        }
        let header = serde_json::from_slice::<Value>(&URL_SAFE_NO_PAD.decode(h).ok()?).ok()?;
        let claims = serde_json::from_slice::<Value>(&URL_SAFE_NO_PAD.decode(c).ok()?).ok()?;
        let signature = URL_SAFE_NO_PAD.decode(s).ok()?;
        match (header, claims) {
            (Value::Object(header), Value::Object(claims)) => Some(Jwt {
                header,
                claims,
                signing_input: format!("{h}.{c}"),
                signature,
            }),
            _ => None,
        }
    }

    pub fn alg(&self) -> &str {
        self.header.get("alg").and_then(Value::as_str).unwrap_or("")
    }

    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.header.get(name).and_then(Value::as_str)
    }

    pub fn claim_str(&self, name: &str) -> Option<&str> {
        self.claims.get(name).and_then(Value::as_str)
    }

    /// A numeric date claim (integer or float seconds).
    pub fn claim_time(&self, name: &str) -> Option<i64> {
        let v = self.claims.get(name)?;
        v.as_i64()
            .or_else(|| v.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
    }

    /// `aud` as a list (string or array of strings).
    pub fn audiences(&self) -> Vec<&str> {
        match self.claims.get("aud") {
            Some(Value::String(s)) => vec![s.as_str()],
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        }
    }

    pub fn verify_rs256(&self, key: &RsaPublicKey) -> bool {
        let Ok(sig) = rsa::pkcs1v15::Signature::try_from(self.signature.as_slice()) else {
            return false;
        };
        rsa::pkcs1v15::VerifyingKey::<Sha256>::new(key.clone())
            .verify(self.signing_input.as_bytes(), &sig)
            .is_ok()
    }

    pub fn verify_ps256(&self, key: &RsaPublicKey) -> bool {
        let Ok(sig) = rsa::pss::Signature::try_from(self.signature.as_slice()) else {
            return false;
        };
        rsa::pss::VerifyingKey::<Sha256>::new(key.clone())
            .verify(self.signing_input.as_bytes(), &sig)
            .is_ok()
    }

    /// Verifies by `alg` (RS256 or PS256 only).
    pub fn verify(&self, key: &RsaPublicKey) -> bool {
        match self.alg() {
            "RS256" => self.verify_rs256(key),
            "PS256" => self.verify_ps256(key),
            _ => false,
        }
    }
}

/// base64url-decodes a thumbprint header value.
pub fn decode_thumbprint(v: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(v.trim_end_matches('=')).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_keys_load_and_differ() {
        let k = KeySet::builtin(false).unwrap();
        assert_ne!(k.signing.kid, k.foreign.kid);
        assert_eq!(k.signing.public.size(), 256);
        let spki = certificate_spki(&k.signing.cert_der).unwrap();
        assert_eq!(
            RsaPublicKey::from_public_key_der(spki).unwrap(),
            k.signing.public
        );
        let t = k.signing.sign_rs256_as(&k.signing.kid, &json!({"a": 1}));
        let jwt = Jwt::decode(&t).unwrap();
        assert!(jwt.verify(&k.signing.public));
        assert!(!jwt.verify(&k.foreign.public));
        assert_eq!(jwt.header_str("kid"), Some(k.signing.kid.as_str()));
    }

    #[test]
    fn registered_certificate_has_thumbprints() {
        let keys = registered_keys(PRIMARY_CERT);
        assert_eq!(keys.len(), 1);
        assert!(keys[0].sha1.is_some() && keys[0].sha256.is_some());
        assert!(registered_keys("garbage").is_empty());
        assert!(Jwt::decode("a.b").is_none());
        assert!(Jwt::decode("....").is_none());
    }
}
