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

use super::credential::{
    AssertionResponse, Credential, ResolvedWorkloadIdentity, WorkloadIdentity,
};
use super::{federated, CalloutRequest, Exchange, TokenFailure};
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

/// The first callout of a fetch (the token route) and the exchange that follows it. Fails,
/// naming the variable, when the environment lacked a value the credential needs.
pub(super) fn start(
    cred: &Credential,
    wi: &WorkloadIdentity,
    resolved: &ResolvedWorkloadIdentity,
) -> Result<(Exchange, CalloutRequest), TokenFailure> {
    let exchange = Exchange {
        cluster: cred.token_cluster.clone(),
        authority_host: resolved.authority_host.get()?.to_string(),
        tenant_id: resolved.tenant_id.get()?.to_string(),
        client_id: resolved.client_id.get()?.to_string(),
        scope: resolved.scope.clone(),
        timeout_ms: cred.timeout_ms,
    };
    let request = federated::assertion_request(
        &wi.assertion_cluster,
        &wi.assertion_authority,
        &wi.assertion_path,
        None,
        cred.timeout_ms,
    );
    Ok((exchange, request))
}

/// The token route's answer: the projected token, checked (`audiences`, expiry), or why not.
/// `reason`: its [`TOKEN_FILE_ERROR_HEADER`]; `file`: the file's name, if the VM knows it.
pub(super) fn read_token_file(
    status: u32,
    reason: Option<&str>,
    body: &[u8],
    audiences: &[String],
    file: &Option<String>,
    now_s: u64,
) -> Result<String, TokenFailure> {
    if status != 200 {
        return Err(token_route_failure(status, reason, file.as_deref()));
    }
    let jwt = federated::extract_assertion(&AssertionResponse::Text, status, None, body).map_err(
        |f| TokenFailure {
            description: format!("{ENV_TOKEN_FILE} does not hold a JWT: {}", f.description),
            ..f
        },
    )?;
    let audiences: Vec<&str> = audiences.iter().map(String::as_str).collect();
    check_assertion(&jwt, &audiences, now_s)?;
    Ok(jwt)
}

/// Adds what an Entra refusal of the exchange means for this setup to its description.
pub(super) fn with_hint(mut failure: TokenFailure) -> TokenFailure {
    if let Some(h) = hint(&failure.code) {
        failure.description = format!("{} [{h}]", failure.description);
    }
    failure
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

    // ---------------------------------------------------------------------------------------
    // The credential kind through configuration, secrets and a whole fetch.

    use crate::config::{resolve_secrets, Config};
    use crate::entra::{FetchStep, TokenFetch};

    const NOW: u64 = 1_700_000_000;
    const TENANT: &str = "11111111-1111-1111-1111-111111111111";
    const CLIENT: &str = "55555555-5555-5555-5555-555555555555";

    fn config(cred: serde_json::Value) -> Result<Config, crate::config::ConfigError> {
        let v = json!({
            "credentials": {"aks": cred},
            "backends": {"aoai": {"kind": "azure_openai", "host": "r.openai.azure.com",
                                  "api_version": "2024-10-21", "credential": "aks"}},
            "models": {"m": {"backend": "aoai", "deployment": "d"}}
        });
        Config::parse(v.to_string().as_bytes())
    }

    fn webhook_env(k: &str) -> Option<String> {
        match k {
            "AZURE_TENANT_ID" => Some(TENANT.into()),
            "AZURE_CLIENT_ID" => Some(CLIENT.into()),
            "AZURE_AUTHORITY_HOST" => Some("https://login.microsoftonline.com/".into()),
            "AZURE_FEDERATED_TOKEN_FILE" => {
                Some("/var/run/secrets/azure/tokens/azure-identity-token".into())
            }
            _ => None,
        }
    }

    fn start(
        cred: serde_json::Value,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<(TokenFetch, CalloutRequest), TokenFailure> {
        let c = config(cred).unwrap();
        let secrets = resolve_secrets(&c, env).unwrap();
        TokenFetch::start(&c.credentials[0], &secrets[0], NOW)
    }

    fn projected(aud: &str, exp: u64) -> String {
        jwt(json!({"iss": "https://eastus.oic.prod-aks.azure.com/t/c/",
                   "sub": "system:serviceaccount:llm-gateway:llm-gateway", "aud": [aud], "exp": exp}))
    }

    fn form_value(r: &CalloutRequest, name: &str) -> Option<String> {
        url::form_urlencoded::parse(&r.body)
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }

    #[test]
    fn minimal_credential_takes_the_webhook_environment_and_the_token_route() {
        let (mut fetch, first) = start(
            json!({"kind": "workload_identity", "token_cluster": "entra"}),
            webhook_env,
        )
        .unwrap();
        assert_eq!(first.cluster, "workload_identity_token");
        assert_eq!(first.authority, "workload-identity.internal");
        assert_eq!((first.method, first.path.as_str()), ("GET", "/token"));
        assert_eq!(fetch.wanted_header(), Some(TOKEN_FILE_ERROR_HEADER));
        let assertion = projected("api://AzureADTokenExchange", NOW + 3600);
        let FetchStep::Next(exchange) =
            fetch.on_response_with(Some(200), None, None, assertion.as_bytes(), NOW)
        else {
            panic!("the exchange follows the token file");
        };
        assert_eq!(fetch.wanted_header(), None);
        assert_eq!(exchange.cluster, "entra");
        assert_eq!(exchange.authority, "login.microsoftonline.com");
        assert_eq!(exchange.path, format!("/{TENANT}/oauth2/v2.0/token"));
        assert_eq!(form_value(&exchange, "client_id").as_deref(), Some(CLIENT));
        assert_eq!(form_value(&exchange, "client_assertion"), Some(assertion));
        assert_eq!(
            form_value(&exchange, "scope").as_deref(),
            Some("https://cognitiveservices.azure.com/.default")
        );
        let ok = br#"{"token_type":"Bearer","expires_in":3599,"access_token":"a.b.c"}"#;
        let FetchStep::Done(Ok(grant)) = fetch.on_response(Some(200), None, ok, NOW) else {
            panic!("granted");
        };
        assert_eq!(grant.expires_in_s, 3599);
    }

    #[test]
    fn given_fields_win_and_sovereign_clouds_get_their_scope_and_audience() {
        let gov = |k: &str| match k {
            "AZURE_AUTHORITY_HOST" => Some("https://login.microsoftonline.us/".to_string()),
            other => webhook_env(other),
        };
        let (mut fetch, _) = start(
            json!({"kind": "workload_identity", "token_cluster": "entra"}),
            gov,
        )
        .unwrap();
        let usgov = projected("api://AzureADTokenExchangeUSGov", NOW + 60);
        let FetchStep::Next(exchange) =
            fetch.on_response_with(Some(200), None, None, usgov.as_bytes(), NOW)
        else {
            panic!("the USGov audience is accepted");
        };
        assert_eq!(exchange.authority, "login.microsoftonline.us");
        assert_eq!(
            form_value(&exchange, "scope").as_deref(),
            Some("https://cognitiveservices.azure.us/.default")
        );
        let cred = json!({"kind": "workload_identity", "token_cluster": "entra",
            "tenant_id": "contoso.onmicrosoft.com", "client_id": "c", "authority_host": "127.0.0.1:8089",
            "scope": "https://ai.azure.com/.default", "audience": "api://custom",
            "assertion_cluster": "tokens", "assertion_authority": "t.local", "assertion_path": "/sa-token"});
        let (mut fetch, first) = start(cred, gov).unwrap();
        assert_eq!(
            (first.cluster.as_str(), first.authority.as_str()),
            ("tokens", "t.local")
        );
        assert_eq!(first.path, "/sa-token");
        let public = projected("api://AzureADTokenExchange", NOW + 60);
        let FetchStep::Done(Err(e)) =
            fetch.on_response_with(Some(200), None, None, public.as_bytes(), NOW)
        else {
            panic!("only the configured audience");
        };
        assert_eq!(e.code, "assertion_audience_mismatch");
        let (mut fetch, _) = start(
            json!({"kind": "workload_identity", "token_cluster": "entra",
                   "tenant_id": "contoso.onmicrosoft.com", "client_id": "c",
                   "authority_host": "127.0.0.1:8089", "scope": "https://ai.azure.com/.default"}),
            gov,
        )
        .unwrap();
        let FetchStep::Next(exchange) =
            fetch.on_response_with(Some(200), None, None, public.as_bytes(), NOW)
        else {
            panic!("next");
        };
        assert_eq!(exchange.authority, "127.0.0.1:8089");
        assert_eq!(exchange.path, "/contoso.onmicrosoft.com/oauth2/v2.0/token");
        assert_eq!(form_value(&exchange, "client_id").as_deref(), Some("c"));
        assert_eq!(
            form_value(&exchange, "scope").as_deref(),
            Some("https://ai.azure.com/.default")
        );
    }

    #[test]
    fn missing_variables_fail_the_fetch_naming_them_not_the_configuration() {
        let cred = json!({"kind": "workload_identity", "token_cluster": "entra"});
        let e = start(cred.clone(), |_| None).unwrap_err();
        assert_eq!(e.code, "workload_identity_env_missing");
        assert!(e.summary().contains("AZURE_TENANT_ID is not set"), "{e:?}");
        let only_tenant = |k: &str| (k == "AZURE_TENANT_ID").then(|| TENANT.to_string());
        let e = start(cred.clone(), only_tenant).unwrap_err();
        assert!(e.summary().contains("AZURE_CLIENT_ID is not set"), "{e:?}");
        // AZURE_AUTHORITY_HOST may be missing (public cloud), not malformed.
        let no_host = |k: &str| {
            (k != "AZURE_AUTHORITY_HOST")
                .then(|| webhook_env(k))
                .flatten()
        };
        assert!(start(cred.clone(), no_host).is_ok());
        let bad_host = |k: &str| match k {
            "AZURE_AUTHORITY_HOST" => Some("https://evil host/".to_string()),
            other => webhook_env(other),
        };
        let e = start(cred, bad_host).unwrap_err();
        assert_eq!(e.code, "workload_identity_env_invalid");
        assert!(e.summary().contains("AZURE_AUTHORITY_HOST"));
    }

    #[test]
    fn token_route_and_entra_failures_are_named() {
        let cred = json!({"kind": "workload_identity", "token_cluster": "entra"});
        let (mut fetch, _) = start(cred.clone(), webhook_env).unwrap();
        let reason = "cannot open AZURE_FEDERATED_TOKEN_FILE: /x: No such file or directory";
        let FetchStep::Done(Err(e)) =
            fetch.on_response_with(Some(503), None, Some(reason), b"", NOW)
        else {
            panic!("done");
        };
        assert_eq!(e.code, "token_file_unavailable");
        assert!(e.summary().contains(reason), "{e:?}");
        let (mut fetch, _) = start(cred.clone(), webhook_env).unwrap();
        let FetchStep::Done(Err(e)) = fetch.on_response_with(None, None, None, b"", NOW) else {
            panic!("done");
        };
        assert!(e.summary().contains("token route"), "{e:?}");
        let (mut fetch, _) = start(cred.clone(), webhook_env).unwrap();
        let expired = projected("api://AzureADTokenExchange", NOW - 1);
        let FetchStep::Done(Err(e)) =
            fetch.on_response_with(Some(200), None, None, expired.as_bytes(), NOW)
        else {
            panic!("done");
        };
        assert_eq!(e.code, "assertion_expired");
        let (mut fetch, _) = start(cred.clone(), webhook_env).unwrap();
        let FetchStep::Done(Err(e)) =
            fetch.on_response_with(Some(200), None, None, b"not a token", NOW)
        else {
            panic!("done");
        };
        assert_eq!(e.code, "malformed_assertion");
        assert!(e
            .summary()
            .contains("AZURE_FEDERATED_TOKEN_FILE does not hold a JWT"));
        // Entra's refusal of the exchange, with what it means here.
        let (mut fetch, _) = start(cred, webhook_env).unwrap();
        let token = projected("api://AzureADTokenExchange", NOW + 60);
        let _ = fetch.on_response_with(Some(200), None, None, token.as_bytes(), NOW);
        let refusal = br#"{"error":"invalid_client","error_description":"AADSTS70021: No matching federated identity record found for presented assertion. Assertion Issuer: 'https://x/'. Assertion Subject: 'system:serviceaccount:a:b'.\r\nTrace ID: 1","error_codes":[70021]}"#;
        let FetchStep::Done(Err(e)) = fetch.on_response(Some(400), None, refusal, NOW) else {
            panic!("done");
        };
        assert_eq!(e.code, "AADSTS70021");
        assert!(e.summary().contains("system:serviceaccount:a:b"), "{e:?}");
        assert!(e.summary().contains("oidcIssuerProfile.issuerUrl"), "{e:?}");
        assert!(!e.summary().contains(&token), "never the assertion");
    }

    #[test]
    fn configuration_errors_name_the_field() {
        for (cred, field) in [
            (json!({"kind": "workload_identity"}), "credentials.aks"),
            (
                json!({"kind": "workload_identity", "token_cluster": "entra", "tenant": "x"}),
                "credentials.aks",
            ),
            (
                json!({"kind": "workload_identity", "token_cluster": "entra", "tenant_id": "a b"}),
                "credentials.aks.tenant_id",
            ),
            (
                json!({"kind": "workload_identity", "token_cluster": "entra", "assertion_cluster": "entra"}),
                "credentials.aks.assertion_cluster",
            ),
            (
                json!({"kind": "workload_identity", "token_cluster": "entra", "assertion_path": "token"}),
                "credentials.aks.assertion_path",
            ),
            (
                json!({"kind": "workload_identity", "token_cluster": "entra", "assertion_authority": "a/b"}),
                "credentials.aks.assertion_authority",
            ),
            (
                json!({"kind": "workload_identity", "token_cluster": "entra", "audience": ""}),
                "credentials.aks.audience",
            ),
        ] {
            let e = config(cred.clone()).unwrap_err();
            assert!(e.field.starts_with(field), "{cred}: {e}");
        }
        // No backend may be routed to the token route's cluster.
        let v = json!({
            "credentials": {"aks": {"kind": "workload_identity", "token_cluster": "entra"}},
            "backends": {"workload_identity_token": {"kind": "azure_openai", "host": "r.openai.azure.com",
                                  "api_version": "2024-10-21", "credential": "aks"}},
            "models": {"m": {"backend": "workload_identity_token", "deployment": "d"}}
        });
        let e = Config::parse(v.to_string().as_bytes()).unwrap_err();
        assert_eq!(e.field, "backends.workload_identity_token", "{e}");
    }

    #[test]
    fn fingerprint_follows_every_field() {
        let base = json!({"kind": "workload_identity", "token_cluster": "entra"});
        let fp = |v: &serde_json::Value| config(v.clone()).unwrap().credentials[0].fingerprint();
        let mut seen = vec![fp(&base)];
        for (k, v) in [
            ("tenant_id", "t"),
            ("client_id", "c"),
            ("authority_host", "login.microsoftonline.us"),
            ("scope", "https://ai.azure.com/.default"),
            ("audience", "api://x"),
            ("assertion_cluster", "other"),
            ("assertion_authority", "other.local"),
            ("assertion_path", "/other"),
        ] {
            let mut c = base.clone();
            c[k] = json!(v);
            let f = fp(&c);
            assert!(!seen.contains(&f), "{k}");
            seen.push(f);
        }
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
