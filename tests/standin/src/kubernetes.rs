//! A stand-in Kubernetes service-account token issuer: the OIDC issuer of an AKS cluster, whose
//! projected service-account tokens (`AZURE_FEDERATED_TOKEN_FILE` under AKS workload identity)
//! are the client assertions of a federated identity credential.
//!
//! Tokens look like the kubelet's projected tokens: header `{"alg":"RS256","kid"}`, claims
//! `aud` (a list, `api://AzureADTokenExchange`), `exp`, `iat`, `nbf`, `iss`, `sub`
//! (`system:serviceaccount:<namespace>:<name>`) and the `kubernetes.io` claim naming the
//! namespace, service account and pod. They are signed with a TEST-ONLY key of their own
//! (`keys/kubernetes-issuer-TEST-ONLY.*`), which the stand-in's Entra trusts only when
//! `StandInConfig::external_issuers` holds [`KubernetesIssuer::trust`], as Entra knows an
//! issuer's keys from its OIDC discovery document.

use crate::crypto::{foreign_key, kubernetes_issuer_key, EntraSigningKey};
use crate::util::{now_secs, uuid_v4};
use crate::{ClientRegistration, TOKEN_EXCHANGE_AUDIENCE};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rsa::pkcs8::EncodePublicKey as _;
use rsa::RsaPublicKey;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use std::fmt;
use std::io;
use std::sync::Arc;

/// The issuer URL of the default stand-in cluster, in the shape of AKS OIDC issuers
/// (`https://<region>.oic.prod-aks.azure.com/<tenant>/<guid>/`).
pub const DEFAULT_KUBERNETES_ISSUER: &str =
    "https://eastus.oic.prod-aks.azure.com/11111111-1111-1111-1111-111111111111/5a0e5d55-0a5c-4c1e-9e0e-5a4d1e000001/";

/// `system:serviceaccount:<namespace>:<name>`, the subject of a service account's tokens.
pub fn service_account_subject(namespace: &str, service_account: &str) -> String {
    format!("system:serviceaccount:{namespace}:{service_account}")
}

/// A Kubernetes cluster's service-account token issuer.
#[derive(Clone)]
pub struct KubernetesIssuer {
    issuer: String,
    key: Arc<EntraSigningKey>,
    kid: String,
}

impl fmt::Debug for KubernetesIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubernetesIssuer")
            .field("issuer", &self.issuer)
            .field("kid", &self.kid)
            .finish()
    }
}

impl KubernetesIssuer {
    /// An issuer at [`DEFAULT_KUBERNETES_ISSUER`].
    pub fn new() -> io::Result<KubernetesIssuer> {
        KubernetesIssuer::with_issuer(DEFAULT_KUBERNETES_ISSUER)
    }

    /// An issuer at `issuer` (the URL Entra's federated credential must name exactly).
    pub fn with_issuer(issuer: &str) -> io::Result<KubernetesIssuer> {
        let key = kubernetes_issuer_key().map_err(io::Error::other)?;
        // Like kube-apiserver: the key id is the base64url SHA-256 of the public key (SPKI DER).
        let spki = key
            .public
            .to_public_key_der()
            .map_err(|e| io::Error::other(e.to_string()))?;
        let kid = URL_SAFE_NO_PAD.encode(Sha256::digest(spki.as_bytes()));
        Ok(KubernetesIssuer {
            issuer: issuer.to_string(),
            key,
            kid,
        })
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The claims of a projected token for `namespace`/`service_account`, audience
    /// `api://AzureADTokenExchange`, valid for `lifetime_secs` from now.
    pub fn service_account_claims(
        &self,
        namespace: &str,
        service_account: &str,
        lifetime_secs: u64,
    ) -> Value {
        let now = now_secs();
        let lifetime = i64::try_from(lifetime_secs).unwrap_or(i64::MAX / 2);
        json!({
            "aud": [TOKEN_EXCHANGE_AUDIENCE],
            "exp": now.saturating_add(lifetime),
            "iat": now,
            "nbf": now,
            "iss": self.issuer,
            "jti": uuid_v4(),
            "kubernetes.io": {
                "namespace": namespace,
                "node": {"name": "aks-nodepool1-standin-vmss000000", "uid": uuid_v4()},
                "pod": {"name": format!("{service_account}-standin-pod"), "uid": uuid_v4()},
                "serviceaccount": {"name": service_account, "uid": uuid_v4()}
            },
            "sub": service_account_subject(namespace, service_account)
        })
    }

    /// A signed projected service-account token (what the kubelet writes into
    /// `AZURE_FEDERATED_TOKEN_FILE`). Each call gives a new token (new `jti`, pod uid, times).
    pub fn service_account_token(
        &self,
        namespace: &str,
        service_account: &str,
        lifetime_secs: u64,
    ) -> String {
        self.sign(&self.service_account_claims(namespace, service_account, lifetime_secs))
    }

    /// Signs `claims` RS256 with this issuer's key, header `{"alg":"RS256","kid"}`.
    pub fn sign(&self, claims: &Value) -> String {
        sign_as(&self.key, &self.kid, claims)
    }

    /// Signs `claims` with an unrelated TEST-ONLY key while naming this issuer's `kid`: a token
    /// only a signature check refuses.
    pub fn sign_with_foreign_key(&self, claims: &Value) -> String {
        match foreign_key() {
            Ok(k) => sign_as(&k, &self.kid, claims),
            Err(_) => String::new(),
        }
    }

    /// `{"keys":[...]}`, the issuer's JWKS.
    pub fn jwks_json(&self) -> Value {
        let mut jwk = self.key.jwk(None);
        jwk["kid"] = json!(self.kid);
        if let Some(o) = jwk.as_object_mut() {
            o.remove("x5t");
            o.remove("x5c");
            o.insert("alg".into(), json!("RS256"));
        }
        json!({"keys": [jwk]})
    }

    /// What the stand-in's Entra needs to verify this issuer's tokens (for
    /// `StandInConfig::external_issuers`).
    pub fn trust(&self) -> ExternalIssuer {
        ExternalIssuer {
            issuer: self.issuer.clone(),
            keys: vec![self.key.public.clone()],
        }
    }

    /// An app registration whose only credential is a federated identity credential trusting
    /// this issuer's tokens for `namespace`/`service_account` (audience
    /// `api://AzureADTokenExchange`): the "user-assigned managed identity + federated
    /// credential" of AKS workload identity.
    pub fn federated_client(
        &self,
        client_id: &str,
        namespace: &str,
        service_account: &str,
    ) -> ClientRegistration {
        ClientRegistration::with_federated(
            client_id,
            &self.issuer,
            &service_account_subject(namespace, service_account),
        )
    }
}

/// RS256 JWT with a Kubernetes-style header (`alg`, `kid`; no `typ`, no `x5t`).
fn sign_as(key: &EntraSigningKey, kid: &str, claims: &Value) -> String {
    use rsa::signature::{SignatureEncoding as _, Signer as _};
    let header = json!({"alg": "RS256", "kid": kid});
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signer = rsa::pkcs1v15::SigningKey::<Sha256>::new(key.private.clone());
    let sig = signer.sign(input.as_bytes()).to_vec();
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
}

/// An OIDC issuer other than the stand-in's own Entra whose signing keys its Entra knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExternalIssuer {
    pub issuer: String,
    pub keys: Vec<RsaPublicKey>,
}
