//! Test-only keys (generated deterministically from fixed seeds, never used outside tests)
//! and a token signer.

use super::jwt::Alg;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rsa::signature::{RandomizedSigner, SignatureEncoding, Signer};
use rsa::traits::PublicKeyParts;
use rsa::{BigUint, RsaPrivateKey};
use serde_json::{json, Value};
use sha2::{Digest, Sha256, Sha384, Sha512};
use std::sync::OnceLock;

pub fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

/// The main test RSA key: 2048 bits, e = 65537.
pub fn rsa_key() -> &'static RsaPrivateKey {
    static K: OnceLock<RsaPrivateKey> = OnceLock::new();
    K.get_or_init(|| RsaPrivateKey::new(&mut ChaCha8Rng::seed_from_u64(1), 2048).unwrap())
}

/// A second 2048-bit key (a key the JWKS does not publish).
pub fn rsa_key2() -> &'static RsaPrivateKey {
    static K: OnceLock<RsaPrivateKey> = OnceLock::new();
    K.get_or_init(|| RsaPrivateKey::new(&mut ChaCha8Rng::seed_from_u64(2), 2048).unwrap())
}

type KeyCache = std::sync::Mutex<Vec<((usize, u64), RsaPrivateKey)>>;

/// Any RSA key, cached by (bits, e).
pub fn rsa_key_with(bits: usize, e: u64) -> RsaPrivateKey {
    static K: OnceLock<KeyCache> = OnceLock::new();
    let m = K.get_or_init(Default::default);
    let mut list = m.lock().unwrap();
    if let Some((_, k)) = list.iter().find(|(id, _)| *id == (bits, e)) {
        return k.clone();
    }
    let k = RsaPrivateKey::new_with_exp(
        &mut ChaCha8Rng::seed_from_u64(bits as u64 ^ e),
        bits,
        &BigUint::from(e),
    )
    .unwrap();
    list.push(((bits, e), k.clone()));
    k
}

pub fn rsa_jwk_of(key: &RsaPrivateKey, kid: &str) -> Value {
    json!({"kty": "RSA", "kid": kid, "n": b64(&key.n().to_bytes_be()), "e": b64(&key.e().to_bytes_be())})
}

pub fn rsa_jwk(kid: &str) -> Value {
    rsa_jwk_of(rsa_key(), kid)
}

pub fn p256_key() -> p256::ecdsa::SigningKey {
    p256::ecdsa::SigningKey::from_slice(&[0x11; 32]).unwrap()
}

pub fn p384_key() -> p384::ecdsa::SigningKey {
    p384::ecdsa::SigningKey::from_slice(&[0x22; 48]).unwrap()
}

pub fn ed25519_key() -> ed25519_compact::KeyPair {
    ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new([0x33; 32]))
}

pub fn p256_jwk(kid: &str) -> Value {
    let p = p256_key().verifying_key().to_encoded_point(false);
    json!({"kty": "EC", "crv": "P-256", "kid": kid,
        "x": b64(p.x().unwrap()), "y": b64(p.y().unwrap())})
}

pub fn p384_jwk(kid: &str) -> Value {
    let p = p384_key().verifying_key().to_encoded_point(false);
    json!({"kty": "EC", "crv": "P-384", "kid": kid,
        "x": b64(p.x().unwrap()), "y": b64(p.y().unwrap())})
}

pub fn ed25519_jwk(kid: &str) -> Value {
    json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64(ed25519_key().pk.as_ref())})
}

/// Signs `input` with the test key of `alg` (`rsa` picks the RSA key).
pub fn sign_with(alg: Alg, rsa: &RsaPrivateKey, input: &[u8]) -> Vec<u8> {
    let mut rng = ChaCha8Rng::seed_from_u64(99);
    match alg {
        Alg::RS256 => rsa::pkcs1v15::SigningKey::<Sha256>::new(rsa.clone())
            .sign(input)
            .to_vec(),
        Alg::RS384 => rsa::pkcs1v15::SigningKey::<Sha384>::new(rsa.clone())
            .sign(input)
            .to_vec(),
        Alg::RS512 => rsa::pkcs1v15::SigningKey::<Sha512>::new(rsa.clone())
            .sign(input)
            .to_vec(),
        Alg::PS256 => rsa::pss::SigningKey::<Sha256>::new(rsa.clone())
            .sign_with_rng(&mut rng, input)
            .to_vec(),
        Alg::PS384 => rsa::pss::SigningKey::<Sha384>::new(rsa.clone())
            .sign_with_rng(&mut rng, input)
            .to_vec(),
        Alg::PS512 => rsa::pss::SigningKey::<Sha512>::new(rsa.clone())
            .sign_with_rng(&mut rng, input)
            .to_vec(),
        Alg::ES256 => {
            let s: p256::ecdsa::Signature = p256_key().sign(input);
            s.to_bytes().to_vec()
        }
        Alg::ES384 => {
            let s: p384::ecdsa::Signature = p384_key().sign(input);
            s.to_bytes().to_vec()
        }
        Alg::EdDSA => ed25519_key().sk.sign(input, None).to_vec(),
    }
}

/// A compact JWS over `header` and `claims`, signed with the test key of `alg`.
pub fn token(alg: Alg, header: &Value, claims: &Value) -> String {
    token_with_key(alg, rsa_key(), header, claims)
}

pub fn token_with_key(alg: Alg, rsa: &RsaPrivateKey, header: &Value, claims: &Value) -> String {
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let sig = sign_with(alg, rsa, input.as_bytes());
    format!("{input}.{}", b64(&sig))
}

/// HMAC-SHA256 (RFC 2104), for algorithm-confusion tokens.
pub fn hmac_sha256(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let ipad: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
    let opad: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
    let inner = Sha256::new()
        .chain_update(&ipad)
        .chain_update(msg)
        .finalize();
    Sha256::new()
        .chain_update(&opad)
        .chain_update(inner)
        .finalize()
        .to_vec()
}
