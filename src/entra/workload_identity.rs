//! AKS workload identity (and any projected service-account token) without a sidecar: the
//! pure parts. The AKS webhook gives the pod `AZURE_CLIENT_ID`, `AZURE_TENANT_ID`,
//! `AZURE_AUTHORITY_HOST` and a projected token file `AZURE_FEDERATED_TOKEN_FILE`; a Wasm VM
//! cannot read files, so Envoy serves the file from an internal listener with a Lua filter
//! (envoy/aks-workload-identity.yaml) and the credential fetches it before every exchange.
//!
//! Here: the webhook's variables as the credential's defaults, the cloud's names by authority
//! host, a look at the assertion before it is sent (expired, wrong audience: clear errors
//! instead of an Entra round trip), the token route's error header, and what Entra's federated
//! errors mean for this setup. Nothing here logs or keeps the assertion.

use super::TokenFailure;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

pub const ENV_CLIENT_ID: &str = "AZURE_CLIENT_ID";
pub const ENV_TENANT_ID: &str = "AZURE_TENANT_ID";
pub const ENV_AUTHORITY_HOST: &str = "AZURE_AUTHORITY_HOST";
pub const ENV_TOKEN_FILE: &str = "AZURE_FEDERATED_TOKEN_FILE";
/// The token route of envoy/aks-workload-identity.yaml: cluster, `:authority`, path.
pub const DEFAULT_TOKEN_CLUSTER: &str = "workload_identity_token";
pub const DEFAULT_TOKEN_AUTHORITY: &str = "workload-identity.internal";
pub const DEFAULT_TOKEN_PATH: &str = "/token";
/// The token route's failure reason (it never answers the file's content with an error).
pub const TOKEN_FILE_ERROR_HEADER: &str = "x-azure-llm-token-file-error";
/// Federated credentials' audience in the public cloud (what the AKS webhook projects).
pub const PUBLIC_TOKEN_EXCHANGE_AUDIENCE: &str = "api://AzureADTokenExchange";

/// A cloud's names, chosen by its Entra authority host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cloud {
    /// The audience federated identity credentials expect in assertions.
    pub token_exchange_audience: &'static str,
    /// The Azure OpenAI / AI Services token scope.
    pub scope: &'static str,
}

/// The cloud of an authority host: Azure Government (`login.microsoftonline.us`), Azure China
/// (`login.chinacloudapi.cn`, `login.partner.microsoftonline.cn`), else the public cloud.
pub fn cloud_of(authority_host: &str) -> Cloud {
    let host = authority_host.to_ascii_lowercase();
    if host == "login.microsoftonline.us" {
        Cloud {
            token_exchange_audience: "api://AzureADTokenExchangeUSGov",
            scope: "https://cognitiveservices.azure.us/.default",
        }
    } else if host == "login.chinacloudapi.cn" || host == "login.partner.microsoftonline.cn" {
        Cloud {
            token_exchange_audience: "api://AzureADTokenExchangeChina",
            scope: "https://cognitiveservices.azure.cn/.default",
        }
    } else {
        Cloud {
            token_exchange_audience: PUBLIC_TOKEN_EXCHANGE_AUDIENCE,
            scope: "https://cognitiveservices.azure.com/.default",
        }
    }
}

/// `AZURE_AUTHORITY_HOST` as the webhook sets it (`https://login.microsoftonline.com/`), or a
/// bare host, as the host the token request goes to.
pub fn authority_host_from_env(value: &str) -> Result<String, String> {
    let v = value.trim();
    let rest = v
        .strip_prefix("https://")
        .or_else(|| v.strip_prefix("HTTPS://"))
        .unwrap_or(v);
    let host = rest.trim_end_matches('/');
    let ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b':');
    if ok {
        Ok(host.to_ascii_lowercase())
    } else {
        Err(format!(
            "{ENV_AUTHORITY_HOST} is not an https URL or host name (it is {} characters long)",
            v.len()
        ))
    }
}

/// One value of the identity: given in the configuration, else from a webhook variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvValue {
    Value(String),
    /// The variable was not set (or empty) in the VM.
    Missing(&'static str),
    /// The variable is set but unusable (why).
    Invalid(&'static str, String),
}

impl EnvValue {
    /// `given`, else the variable `var` from `lookup`, checked by `check`.
    pub fn resolve(
        given: Option<&str>,
        var: &'static str,
        lookup: &impl Fn(&str) -> Option<String>,
        check: impl Fn(&str) -> Result<String, String>,
    ) -> EnvValue {
        if let Some(v) = given {
            return EnvValue::Value(v.to_string());
        }
        match lookup(var).map(|v| v.trim().to_string()) {
            Some(v) if !v.is_empty() => match check(&v) {
                Ok(v) => EnvValue::Value(v),
                Err(why) => EnvValue::Invalid(var, why),
            },
            _ => EnvValue::Missing(var),
        }
    }

    /// The value, or the failure a token fetch reports (naming the variable).
    pub fn get(&self) -> Result<&str, TokenFailure> {
        match self {
            EnvValue::Value(v) => Ok(v),
            EnvValue::Missing(var) => Err(TokenFailure {
                status: 0,
                code: "workload_identity_env_missing".into(),
                description: format!(
                    "{var} is not set in the Wasm VM: on AKS label the pod \
                     azure.workload.identity/use: \"true\", annotate its ServiceAccount \
                     azure.workload.identity/client-id, and list {var} in \
                     vm_config.environment_variables.host_env_keys (or set the credential's \
                     field)"
                ),
                retry_after_ms: None,
            }),
            EnvValue::Invalid(var, why) => Err(TokenFailure {
                status: 0,
                code: "workload_identity_env_invalid".into(),
                description: format!("{var}: {why}"),
                retry_after_ms: None,
            }),
        }
    }
}

/// A tenant or client id from the environment: a GUID or a domain-like name, printable.
pub fn check_id(v: &str) -> Result<String, String> {
    let ok = v.len() <= 256
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    if ok {
        Ok(v.to_string())
    } else {
        Err("not a GUID or name (letters, digits, '-', '.', '_')".into())
    }
}

/// Reads the token route's failure reason (single line, short, no JWT-shaped words).
pub fn token_route_failure(status: u32, reason: Option<&str>, file: Option<&str>) -> TokenFailure {
    let mut description = match reason.map(str::trim).filter(|r| !r.is_empty()) {
        Some(r) => super::sanitize(r, 300),
        None => format!("the token route answered HTTP {status}"),
    };
    if let Some(f) = file.filter(|f| !description.contains(f)) {
        description.push_str(&format!(" ({ENV_TOKEN_FILE}={})", super::sanitize(f, 200)));
    }
    TokenFailure {
        status,
        code: "token_file_unavailable".into(),
        description,
        retry_after_ms: None,
    }
}

/// What a projected token says about itself (for log lines: never the token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssertionInfo {
    pub issuer: String,
    pub subject: String,
}

/// Looks at the assertion before the exchange (no signature check: Entra does that): a JWT
/// whose `exp` has not passed and whose `aud` holds one of `audiences`. Failures name what is
/// wrong and never quote the token.
pub fn check_assertion(
    jwt: &str,
    audiences: &[&str],
    now_s: u64,
) -> Result<AssertionInfo, TokenFailure> {
    let bad = |code: &str, why: String| TokenFailure {
        status: 0,
        code: code.into(),
        description: why,
        retry_after_ms: None,
    };
    let claims = jwt
        .split('.')
        .nth(1)
        .and_then(|p| URL_SAFE_NO_PAD.decode(p.trim_end_matches('=')).ok())
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .filter(serde_json::Value::is_object)
        .ok_or_else(|| {
            bad(
                "malformed_assertion",
                format!("the token in {ENV_TOKEN_FILE} is not a JWT with a JSON payload"),
            )
        })?;
    let text = |k: &str| {
        claims
            .get(k)
            .and_then(|v| v.as_str())
            .map(|s| super::sanitize(s, 200))
            .unwrap_or_default()
    };
    let info = AssertionInfo {
        issuer: text("iss"),
        subject: text("sub"),
    };
    if let Some(exp) = claims.get("exp").and_then(serde_json::Value::as_u64) {
        if exp <= now_s {
            return Err(bad(
                "assertion_expired",
                format!(
                    "the token in {ENV_TOKEN_FILE} (subject {:?}) expired {} s ago: the kubelet \
                     no longer rotates it (is the pod's projected volume still mounted?)",
                    info.subject,
                    now_s - exp
                ),
            ));
        }
    }
    let aud: Vec<&str> = match claims.get("aud") {
        Some(serde_json::Value::String(s)) => vec![s.as_str()],
        Some(serde_json::Value::Array(a)) => a.iter().filter_map(|v| v.as_str()).collect(),
        _ => Vec::new(),
    };
    if !aud.iter().any(|a| audiences.contains(a)) {
        let shown: Vec<String> = aud.iter().map(|a| super::sanitize(a, 100)).collect();
        return Err(bad(
            "assertion_audience_mismatch",
            format!(
                "the token in {ENV_TOKEN_FILE} has audience {shown:?}, not {audiences:?}: Entra \
                 would refuse it (AADSTS700212); set the projected token's audience or the \
                 credential's `audience`"
            ),
        ));
    }
    Ok(info)
}

/// What Entra's federated-credential errors mean here, appended to the log line.
pub fn hint(code: &str) -> Option<&'static str> {
    Some(match code {
        "AADSTS70021" => {
            "no federated identity credential of the identity matches the token: create one \
             with the cluster's OIDC issuer URL (az aks show --query \
             oidcIssuerProfile.issuerUrl), subject system:serviceaccount:<namespace>:<service \
             account> and audience api://AzureADTokenExchange"
        }
        "AADSTS700211" => {
            "the token's issuer is not the issuer of any federated identity credential of the \
             identity: it must be the cluster's OIDC issuer URL exactly (trailing slash \
             included)"
        }
        "AADSTS700212" => {
            "the token's audience is not the federated identity credential's audience \
             (api://AzureADTokenExchange unless changed on both sides)"
        }
        "AADSTS700213" => {
            "the token's subject is not the federated identity credential's subject \
             (system:serviceaccount:<namespace>:<service account>, case-sensitive)"
        }
        "AADSTS700024" => {
            "the projected token is expired or not yet valid: check the node's clock and that \
             the kubelet rotates the file"
        }
        "AADSTS700016" => {
            "AZURE_CLIENT_ID names no identity in AZURE_TENANT_ID: check the ServiceAccount's \
             azure.workload.identity/client-id annotation"
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn jwt(claims: serde_json::Value) -> String {
        format!(
            "eyJhbGciOiJSUzI1NiJ9.{}.c2ln",
            URL_SAFE_NO_PAD.encode(claims.to_string())
        )
    }

    #[test]
    fn clouds_by_authority_host() {
        assert_eq!(
            cloud_of("login.microsoftonline.com").token_exchange_audience,
            "api://AzureADTokenExchange"
        );
        let gov = cloud_of("LOGIN.microsoftonline.us");
        assert_eq!(
            gov.token_exchange_audience,
            "api://AzureADTokenExchangeUSGov"
        );
        assert_eq!(gov.scope, "https://cognitiveservices.azure.us/.default");
        let cn = cloud_of("login.chinacloudapi.cn");
        assert_eq!(
            cn.token_exchange_audience,
            "api://AzureADTokenExchangeChina"
        );
        assert_eq!(cn.scope, "https://cognitiveservices.azure.cn/.default");
        assert_eq!(
            cloud_of("localhost:8089"),
            cloud_of("login.microsoftonline.com")
        );
    }

    #[test]
    fn authority_host_as_the_webhook_sets_it() {
        for (v, host) in [
            (
                "https://login.microsoftonline.com/",
                "login.microsoftonline.com",
            ),
            (
                "https://login.microsoftonline.us",
                "login.microsoftonline.us",
            ),
            ("login.chinacloudapi.cn", "login.chinacloudapi.cn"),
            (" https://127.0.0.1:8089/ ", "127.0.0.1:8089"),
        ] {
            assert_eq!(authority_host_from_env(v).as_deref(), Ok(host), "{v}");
        }
        for v in [
            "",
            "https://",
            "https://a b/",
            "https://h/path",
            "http://x\r\ny",
        ] {
            assert!(authority_host_from_env(v).is_err(), "{v:?}");
        }
    }

    #[test]
    fn identity_values_come_from_config_else_env_and_missing_ones_name_the_variable() {
        let env = |k: &str| match k {
            "AZURE_CLIENT_ID" => Some("55555555-5555-5555-5555-555555555555".to_string()),
            "AZURE_AUTHORITY_HOST" => Some("https://bad host/".to_string()),
            _ => None,
        };
        let client = EnvValue::resolve(None, ENV_CLIENT_ID, &env, check_id);
        assert_eq!(
            client.get().unwrap(),
            "55555555-5555-5555-5555-555555555555"
        );
        let given = EnvValue::resolve(Some("t"), ENV_TENANT_ID, &env, check_id);
        assert_eq!(given.get().unwrap(), "t");
        let missing = EnvValue::resolve(None, ENV_TENANT_ID, &env, check_id);
        let e = missing.get().unwrap_err();
        assert_eq!(e.code, "workload_identity_env_missing");
        assert!(
            e.description.starts_with("AZURE_TENANT_ID is not set"),
            "{e:?}"
        );
        let bad = EnvValue::resolve(None, ENV_AUTHORITY_HOST, &env, authority_host_from_env);
        assert_eq!(bad.get().unwrap_err().code, "workload_identity_env_invalid");
        assert!(check_id("a\r\nb").is_err());
    }

    #[test]
    fn assertion_checks_name_the_problem_and_never_quote_the_token() {
        let now = 1_700_000_000;
        let ok = jwt(
            json!({"iss": "https://oidc/x/", "sub": "system:serviceaccount:a:b",
                            "aud": ["api://AzureADTokenExchange"], "exp": now + 60}),
        );
        let info = check_assertion(&ok, &[PUBLIC_TOKEN_EXCHANGE_AUDIENCE], now).unwrap();
        assert_eq!(info.subject, "system:serviceaccount:a:b");
        assert_eq!(info.issuer, "https://oidc/x/");
        let expired = jwt(json!({"sub": "s", "aud": "api://AzureADTokenExchange", "exp": now - 5}));
        let e = check_assertion(&expired, &[PUBLIC_TOKEN_EXCHANGE_AUDIENCE], now).unwrap_err();
        assert_eq!(e.code, "assertion_expired");
        assert!(e.description.contains("expired 5 s ago"), "{e:?}");
        let other = jwt(json!({"aud": ["https://kubernetes.default.svc"], "exp": now + 60}));
        let e = check_assertion(&other, &[PUBLIC_TOKEN_EXCHANGE_AUDIENCE], now).unwrap_err();
        assert_eq!(e.code, "assertion_audience_mismatch");
        assert!(e.description.contains("kubernetes.default.svc"));
        for garbage in ["x", "a.b.c", "a.bm90IGpzb24.c", "a.WzFd.c"] {
            let e = check_assertion(garbage, &[PUBLIC_TOKEN_EXCHANGE_AUDIENCE], now).unwrap_err();
            assert_eq!(e.code, "malformed_assertion", "{garbage}");
        }
        for e in [
            check_assertion(&expired, &["x"], now).unwrap_err(),
            check_assertion(&other, &["x"], now).unwrap_err(),
        ] {
            assert!(!e.summary().contains(".c2ln") && !e.summary().contains("eyJ"));
        }
    }

    #[test]
    fn token_route_failures_carry_the_reason_and_the_file() {
        let f = token_route_failure(
            503,
            Some("cannot open AZURE_FEDERATED_TOKEN_FILE: /var/run/x: No such file or directory"),
            Some("/var/run/x"),
        );
        assert_eq!(f.code, "token_file_unavailable");
        assert_eq!(
            f.description,
            "cannot open AZURE_FEDERATED_TOKEN_FILE: /var/run/x: No such file or directory"
        );
        let f = token_route_failure(404, None, Some("/var/run/x"));
        assert_eq!(
            f.description,
            "the token route answered HTTP 404 (AZURE_FEDERATED_TOKEN_FILE=/var/run/x)"
        );
        let f = token_route_failure(
            503,
            Some("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.sig x"),
            None,
        );
        assert!(!f.description.contains("eyJ"), "{f:?}");
    }

    #[test]
    fn federated_errors_have_hints() {
        for code in [
            "AADSTS70021",
            "AADSTS700211",
            "AADSTS700212",
            "AADSTS700213",
        ] {
            assert!(hint(code).is_some(), "{code}");
        }
        assert!(hint("AADSTS7000215").is_none());
    }
}
