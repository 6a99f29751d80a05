//! The Entra ID part: token endpoint (client secret, certificate and federated assertions),
//! JWKS and OpenID configuration, IMDS and the App Service identity endpoint.

use crate::crypto::{decode_thumbprint, registered_keys, Jwt};
use crate::util::{entra_timestamp, now_secs, random_b64, same_resource, uuid_from, uuid_v4};
use crate::{
    v1_issuer, v2_issuer, ClientRegistration, Ctx, EndpointKind, Reply, Shared,
    JWT_BEARER_ASSERTION_TYPE, TOKEN_EXCHANGE_AUDIENCE,
};
use serde_json::{json, Value};

/// Clock skew allowed on `nbf` (and on `exp` of data-plane tokens), as Entra and Azure allow.
pub const SKEW_SECS: i64 = 300;

/// Longest client assertion lifetime (`exp - nbf`) Entra accepts.
const MAX_ASSERTION_LIFETIME_SECS: i64 = 600;

pub fn handle(shared: &Shared, kind: EndpointKind, ctx: &Ctx) -> Reply {
    match kind {
        EndpointKind::Token => token(shared, ctx),
        EndpointKind::Jwks => discovery(shared, ctx),
        EndpointKind::Imds => imds(shared, ctx),
        EndpointKind::AppServiceIdentity => app_service(shared, ctx),
        EndpointKind::DataPlane => crate::dataplane::handle(shared, ctx),
        EndpointKind::ContentSafety => crate::contentsafety::handle(shared, ctx),
    }
}

/// The object id of a client's service principal (stable, derived from the client id).
pub fn service_principal_oid(client_id: &str) -> String {
    uuid_from(&format!("service-principal:{client_id}"))
}

/// An Entra error: `{"error","error_description":"AADSTS{code}: ... Trace ID: ... Correlation
/// ID: ... Timestamp: ...","error_codes":[code],"timestamp","trace_id","correlation_id"}`.
fn aad_error(status: u16, error: &str, code: u64, description: &str, ctx: &Ctx) -> Reply {
    let trace = uuid_v4();
    let correlation = ctx
        .header("client-request-id")
        .filter(|v| !v.is_empty() && v.len() <= 64)
        .map(str::to_string)
        .unwrap_or_else(uuid_v4);
    let ts = entra_timestamp(now_secs());
    let body = json!({
        "error": error,
        "error_description": format!(
            "AADSTS{code}: {description} Trace ID: {trace} Correlation ID: {correlation} Timestamp: {ts}"
        ),
        "error_codes": [code],
        "timestamp": ts,
        "trace_id": trace,
        "correlation_id": correlation,
    });
    entra_headers(Reply::json(status, &body), ctx, &trace)
}

fn entra_headers(reply: Reply, ctx: &Ctx, request_id: &str) -> Reply {
    let mut r = reply
        .with_content_type("application/json; charset=utf-8")
        .with_header("cache-control", "no-store, no-cache")
        .with_header("pragma", "no-cache")
        .with_header("x-ms-request-id", request_id)
        .with_header("x-ms-ests-server", "2.1.standin");
    if let Some(id) = ctx.header("client-request-id").filter(|v| v.len() <= 64) {
        r = r.with_header("client-request-id", id);
    }
    r
}

/// Managed-identity style error (IMDS, App Service).
fn mi_error(status: u16, error: &str, description: &str) -> Reply {
    Reply::json(
        status,
        &json!({"error": error, "error_description": description}),
    )
    .with_content_type("application/json; charset=utf-8")
}

pub fn rate_limited(_shared: &Shared, kind: EndpointKind, ctx: &Ctx, secs: u64) -> Reply {
    match kind {
        EndpointKind::Imds | EndpointKind::AppServiceIdentity => mi_error(
            429,
            "too_many_requests",
            &format!("Too many requests. Retry after {secs} seconds."),
        )
        .with_header("retry-after", secs.to_string()),
        _ => aad_error(
            429,
            "temporarily_unavailable",
            90055,
            "TenantThrottlingError - There are too many incoming requests. Please try again later.",
            ctx,
        )
        .with_header("retry-after", secs.to_string()),
    }
}

/// Claims of an app token. Audience `api://AzureADTokenExchange` gets a v2 token (iss
/// `https://login.microsoftonline.com/{tid}/v2.0`, `azp`), anything else a v1 token (iss
/// `https://sts.windows.net/{tid}/`, `appid`).
pub fn app_token_claims(
    shared: &Shared,
    audience: &str,
    app_id: &str,
    oid: &str,
    acr: &str,
    lifetime_secs: u64,
    mi_res_id: Option<&str>,
) -> Value {
    let tid = &shared.cfg.tenant_id;
    let now = now_secs();
    let exp = now.saturating_add(i64::try_from(lifetime_secs).unwrap_or(i64::MAX / 2));
    let rh = format!("0.{}.", random_b64(48));
    let mut claims = if same_resource(audience, TOKEN_EXCHANGE_AUDIENCE) {
        json!({
            "aud": audience,
            "iss": v2_issuer(tid),
            "iat": now,
            "nbf": now,
            "exp": exp,
            "azp": app_id,
            "azpacr": acr,
            "idtyp": "app",
            "oid": oid,
            "rh": rh,
            "sub": oid,
            "tid": tid,
            "uti": random_b64(16),
            "ver": "2.0",
        })
    } else {
        json!({
            "aud": audience,
            "iss": v1_issuer(tid),
            "iat": now,
            "nbf": now,
            "exp": exp,
            "aio": random_b64(40),
            "appid": app_id,
            "appidacr": acr,
            "idp": v1_issuer(tid),
            "idtyp": "app",
            "oid": oid,
            "rh": rh,
            "sub": oid,
            "tid": tid,
            "uti": random_b64(16),
            "ver": "1.0",
        })
    };
    if let Some(r) = mi_res_id {
        claims["xms_mirid"] = json!(r);
    }
    claims
}

fn sign(shared: &Shared, claims: &Value) -> String {
    let k = &shared.keys.signing;
    k.sign_rs256_as(&k.kid, claims)
}

/// The resources tokens can be issued for.
fn known_resource(shared: &Shared, resource: &str) -> Option<String> {
    if same_resource(resource, &shared.cfg.accepted_audience) {
        Some(shared.cfg.accepted_audience.clone())
    } else if same_resource(resource, TOKEN_EXCHANGE_AUDIENCE) {
        Some(TOKEN_EXCHANGE_AUDIENCE.to_string())
    } else {
        None
    }
}

fn tenant_not_found(tenant: &str, ctx: &Ctx) -> Reply {
    aad_error(
        400,
        "invalid_request",
        90002,
        &format!(
            "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and \
             are signing into the correct cloud. Check with your subscription administrator, \
             this may happen if there are no active subscriptions for the tenant."
        ),
        ctx,
    )
}

// ---------------------------------------------------------------------------------------------
// Token endpoint

fn token(shared: &Shared, ctx: &Ctx) -> Reply {
    let segs: Vec<&str> = ctx.path.trim_start_matches('/').split('/').collect();
    let tenant = segs.first().copied().unwrap_or("");
    let v1_endpoint = segs.get(2) == Some(&"token");
    if ctx.method != "POST" {
        return aad_error(
            400,
            "invalid_request",
            900561,
            &format!(
                "The endpoint only accepts POST, OPTIONS requests. Received a {} request.",
                ctx.method
            ),
            ctx,
        );
    }
    if !tenant.eq_ignore_ascii_case(&shared.cfg.tenant_id) {
        return tenant_not_found(tenant, ctx);
    }
    let is_form = ctx
        .header("content-type")
        .map(|ct| {
            ct.to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        })
        .unwrap_or(false);
    let form: Vec<(String, String)> = if is_form {
        form_urlencoded::parse(&ctx.body).into_owned().collect()
    } else {
        Vec::new()
    };
    let field = |name: &str| -> Option<&str> {
        form.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    };
    let missing = |name: &str| {
        aad_error(
            400,
            "invalid_request",
            900144,
            &format!("The request body must contain the following parameter: '{name}'."),
            ctx,
        )
    };
    let Some(grant_type) = field("grant_type") else {
        return missing("grant_type");
    };
    if grant_type != "client_credentials" {
        return aad_error(
            400,
            "unsupported_grant_type",
            70003,
            &format!("The app requested an unsupported grant type '{grant_type}'."),
            ctx,
        );
    }
    let Some(client_id) = field("client_id") else {
        return missing("client_id");
    };
    let Some(client) = shared
        .cfg
        .clients
        .iter()
        .find(|c| c.client_id.eq_ignore_ascii_case(client_id))
    else {
        return aad_error(
            400,
            "unauthorized_client",
            700016,
            &format!(
                "Application with identifier '{client_id}' was not found in the directory '{tenant}'. \
                 This can happen if the application has not been installed by the administrator of \
                 the tenant or consented to by any user in the tenant. You may have sent your \
                 authentication request to the wrong tenant."
            ),
            ctx,
        );
    };

    // Resource: `scope` on v2 (`{resource}/.default`), `resource` on v1.
    let resource = if v1_endpoint {
        let Some(r) = field("resource") else {
            return missing("resource");
        };
        match known_resource(shared, r) {
            Some(r) => r,
            None => {
                return aad_error(
                    400,
                    "invalid_resource",
                    500011,
                    &format!(
                    "The resource principal named {r} was not found in the tenant named {tenant}. \
                         This can happen if the application has not been installed by the \
                         administrator of the tenant or consented to by any user in the tenant. \
                         You might have sent your authentication request to the wrong tenant."
                ),
                    ctx,
                )
            }
        }
    } else {
        let Some(scope) = field("scope") else {
            return missing("scope");
        };
        let scope = scope.trim();
        let invalid = || {
            aad_error(
                400,
                "invalid_scope",
                70011,
                &format!(
                    "The provided request must include a 'scope' input parameter. The provided \
                     value for the input parameter 'scope' is not valid. The scope {scope} is not valid."
                ),
                ctx,
            )
        };
        if scope.split_whitespace().count() != 1 {
            return invalid();
        }
        let Some(r) = scope.strip_suffix("/.default") else {
            return aad_error(
                400,
                "invalid_scope",
                1002012,
                &format!(
                    "The provided value for scope {scope} is not valid. Client credential flows \
                     must have a scope value with /.default suffixed to the resource identifier \
                     (application ID URI)."
                ),
                ctx,
            );
        };
        match known_resource(shared, r) {
            Some(r) => r,
            None => return invalid(),
        }
    };

    // Client authentication.
    let secret = field("client_secret");
    let assertion = field("client_assertion");
    let acr = match (secret, assertion) {
        (Some(_), Some(_)) => {
            return aad_error(
                400,
                "invalid_request",
                90014,
                "Only one client authentication method may be used: 'client_secret' or \
                 'client_assertion'.",
                ctx,
            )
        }
        (Some(secret), None) => {
            if client.client_secret.as_deref() != Some(secret) {
                return aad_error(
                    401,
                    "invalid_client",
                    7000215,
                    &format!(
                        "Invalid client secret provided. Ensure the secret being sent in the \
                         request is the client secret value, not the client secret ID, for a \
                         secret added to app '{}'.",
                        client.client_id
                    ),
                    ctx,
                );
            }
            "1"
        }
        (None, Some(assertion)) => {
            if field("client_assertion_type") != Some(JWT_BEARER_ASSERTION_TYPE) {
                return aad_error(
                    400,
                    "invalid_request",
                    50027,
                    &format!(
                        "The provided value for the input parameter 'client_assertion_type' is not \
                         valid. Expected '{JWT_BEARER_ASSERTION_TYPE}'."
                    ),
                    ctx,
                );
            }
            if let Err(reply) = verify_assertion(shared, ctx, client, tenant, assertion) {
                return reply;
            }
            "2"
        }
        (None, None) => {
            return aad_error(
                401,
                "invalid_client",
                7000216,
                "'client_assertion', 'client_secret' or 'request' is required for the \
                 'client_credentials' grant type.",
                ctx,
            )
        }
    };

    let lifetime = shared.cfg.token_lifetime_secs;
    let claims = app_token_claims(
        shared,
        &resource,
        &client.client_id,
        &service_principal_oid(&client.client_id),
        acr,
        lifetime,
        None,
    );
    let token = sign(shared, &claims);
    let mut body = json!({
        "token_type": "Bearer",
        "expires_in": lifetime,
        "ext_expires_in": lifetime,
        "access_token": token,
    });
    if v1_endpoint {
        let exp = claims["exp"].clone();
        body["expires_on"] = json!(exp.to_string());
        body["resource"] = json!(resource);
    }
    entra_headers(Reply::json(200, &body), ctx, &uuid_v4())
}

/// Verifies a `client_assertion`: a certificate assertion (iss == sub == client id) against the
/// registered certificate / key, or a federated assertion against the registered (iss, sub)
/// pairs and the stand-in's own Entra key.
fn verify_assertion(
    shared: &Shared,
    ctx: &Ctx,
    client: &ClientRegistration,
    tenant: &str,
    assertion: &str,
) -> Result<(), Reply> {
    let invalid_client = |status: u16, code: u64, description: &str| {
        aad_error(status, "invalid_client", code, description, ctx)
    };
    let Some(jwt) = Jwt::decode(assertion) else {
        return Err(invalid_client(
            400,
            50027,
            "JWT token is invalid or malformed (client_assertion).",
        ));
    };
    let iss = jwt.claim_str("iss").unwrap_or("");
    let sub = jwt.claim_str("sub").unwrap_or("");
    let now = now_secs();
    let aud_text = jwt.audiences().join(",");

    if iss.eq_ignore_ascii_case(&client.client_id) && sub.eq_ignore_ascii_case(&client.client_id) {
        // Certificate credential (private_key_jwt).
        let Some(pem) = client.certificate_pem.as_deref() else {
            return Err(invalid_client(
                401,
                700027,
                "Client assertion failed signature validation. The application has no \
                 certificate credential registered.",
            ));
        };
        let keys = registered_keys(pem);
        if keys.is_empty() {
            return Err(invalid_client(
                401,
                700027,
                "Client assertion failed signature validation. No usable key in the registered \
                 certificate credential.",
            ));
        }
        if !matches!(jwt.alg(), "PS256" | "RS256") {
            return Err(invalid_client(
                400,
                5002738,
                &format!(
                    "Invalid JWT token. '{}' is not a supported signature algorithm. Supported \
                     signing algorithms are: 'RS256, PS256'.",
                    jwt.alg()
                ),
            ));
        }
        let s256 = jwt.header_str("x5t#S256").map(decode_thumbprint);
        let s1 = jwt.header_str("x5t").map(decode_thumbprint);
        let mut thumbprint_matched = false;
        let mut signature_ok = false;
        for k in &keys {
            let ok_key = if k.sha1.is_some() || k.sha256.is_some() {
                // A certificate: the header must name it, and every thumbprint given must match.
                if s256.is_none() && s1.is_none() {
                    false
                } else {
                    let m256 = match &s256 {
                        None => true,
                        Some(t) => t.as_deref() == k.sha256.as_ref().map(|x| x.as_slice()),
                    };
                    let m1 = match &s1 {
                        None => true,
                        Some(t) => t.as_deref() == k.sha1.as_ref().map(|x| x.as_slice()),
                    };
                    m256 && m1
                }
            } else {
                true
            };
            if !ok_key {
                continue;
            }
            thumbprint_matched = true;
            if jwt.verify(&k.key) {
                signature_ok = true;
                break;
            }
        }
        if !thumbprint_matched {
            return Err(invalid_client(
                401,
                700027,
                "Client assertion failed signature validation. The certificate with identifier \
                 used to sign the client assertion is not registered on application \
                 (x5t#S256 / x5t header missing or not matching a registered certificate).",
            ));
        }
        if !signature_ok {
            return Err(invalid_client(
                401,
                700027,
                "Client assertion failed signature validation.",
            ));
        }
        let expected_path = format!("/{tenant}/oauth2/v2.0/token");
        let aud_ok = jwt.audiences().iter().any(|aud| {
            aud.strip_prefix("https://")
                .and_then(|rest| rest.find('/').map(|i| (&rest[..i], &rest[i..])))
                .is_some_and(|(host, path)| {
                    !host.is_empty() && path.eq_ignore_ascii_case(&expected_path)
                })
        });
        if !aud_ok {
            return Err(invalid_client(
                400,
                50027,
                &format!(
                    "Invalid JWT token. AUD claim '{aud_text}' is not valid: expected \
                     'https://{{authority}}{expected_path}'."
                ),
            ));
        }
        let exp = jwt.claim_time("exp");
        let nbf = jwt.claim_time("nbf").or_else(|| jwt.claim_time("iat"));
        let (Some(exp), Some(nbf)) = (exp, nbf) else {
            return Err(invalid_client(
                400,
                50027,
                "Invalid JWT token. The client assertion must carry 'exp' and 'nbf'.",
            ));
        };
        if exp <= now
            || nbf > now.saturating_add(SKEW_SECS)
            || exp.saturating_sub(nbf) > MAX_ASSERTION_LIFETIME_SECS
        {
            return Err(invalid_client(
                400,
                700024,
                &format!(
                    "Client assertion is not within its valid time range. Current time: {}, \
                     assertion valid from {}, expiry time of assertion {}. Assertions may be \
                     valid for at most {MAX_ASSERTION_LIFETIME_SECS} seconds.",
                    entra_timestamp(now),
                    entra_timestamp(nbf),
                    entra_timestamp(exp)
                ),
            ));
        }
        if jwt.claim_str("jti").is_none_or(str::is_empty) {
            return Err(invalid_client(
                400,
                50027,
                "Invalid JWT token. The client assertion has no 'jti' claim.",
            ));
        }
        return Ok(());
    }

    // Federated identity credential: Entra looks up the app's credentials by issuer, checks the
    // signature with that issuer's keys, then audience, subject and lifetime, and names the
    // first mismatch (AADSTS700211 issuer, 700212 audience, 70021 no record for the subject).
    verify_federated(shared, client, &jwt, iss, sub, &aud_text, now)
        .map_err(|(status, code, description)| invalid_client(status, code, &description))
}

/// The checks of a federated assertion; Err = (status, AADSTS code, description).
fn verify_federated(
    shared: &Shared,
    client: &ClientRegistration,
    jwt: &Jwt,
    iss: &str,
    sub: &str,
    aud_text: &str,
    now: i64,
) -> Result<(), (u16, u64, String)> {
    const SEE: &str = "Please check your federated identity credential Subject, Audience and \
                       Issuer against the presented assertion. \
                       https://learn.microsoft.com/entra/workload-id/workload-identity-federation";
    // Matching is case-sensitive, as Entra's is.
    if !client.federated_issuers.iter().any(|(i, _)| i == iss) {
        return Err((
            400,
            700211,
            format!(
                "No matching federated identity record found for presented assertion issuer \
                 '{iss}'. {SEE}"
            ),
        ));
    }
    let external = shared.cfg.external_issuers.iter().find(|e| e.issuer == iss);
    let signed = jwt.alg() == "RS256"
        && match external {
            Some(e) => e.keys.iter().any(|k| jwt.verify_rs256(k)),
            None => jwt.verify_rs256(&shared.keys.signing.public),
        };
    if !signed {
        return Err((
            401,
            700027,
            "Client assertion failed signature validation (federated assertion not signed by a \
             key of its issuer)."
                .into(),
        ));
    }
    if !jwt
        .audiences()
        .contains(&client.federated_audience.as_str())
    {
        return Err((
            400,
            700212,
            format!(
                "No matching federated identity record found for presented assertion audience \
                 '{aud_text}'. {SEE}"
            ),
        ));
    }
    if !client
        .federated_issuers
        .iter()
        .any(|(i, s)| i == iss && s == sub)
    {
        return Err((
            400,
            70021,
            format!(
                "No matching federated identity record found for presented assertion. Assertion \
                 Issuer: '{iss}'. Assertion Subject: '{sub}'. Assertion Audience: '{aud_text}'."
            ),
        ));
    }
    let exp = jwt.claim_time("exp");
    let nbf = jwt.claim_time("nbf").unwrap_or(i64::MIN);
    if exp.is_none_or(|e| e <= now) || nbf > now.saturating_add(SKEW_SECS) {
        return Err((
            400,
            700024,
            "Client assertion is not within its valid time range.".into(),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// JWKS and OpenID configuration

pub fn jwks(shared: &Shared, v2_tenant: Option<&str>) -> Value {
    let issuer = v2_tenant.map(|t| {
        if is_multi_tenant_alias(t) {
            v2_issuer("{tenantid}")
        } else {
            v2_issuer(t)
        }
    });
    json!({"keys": [shared.keys.signing.jwk(issuer.as_deref())]})
}

fn is_multi_tenant_alias(t: &str) -> bool {
    ["common", "organizations", "consumers"]
        .iter()
        .any(|a| a.eq_ignore_ascii_case(t))
}

fn discovery(shared: &Shared, ctx: &Ctx) -> Reply {
    let segs: Vec<&str> = ctx.path.trim_start_matches('/').split('/').collect();
    let tenant = segs.first().copied().unwrap_or("");
    if ctx.method != "GET" {
        return aad_error(
            400,
            "invalid_request",
            900561,
            &format!(
                "The endpoint only accepts GET requests. Received a {} request.",
                ctx.method
            ),
            ctx,
        );
    }
    if !tenant.eq_ignore_ascii_case(&shared.cfg.tenant_id) && !is_multi_tenant_alias(tenant) {
        return tenant_not_found(tenant, ctx);
    }
    let v2 = segs.get(1) == Some(&"v2.0") || segs.get(2) == Some(&"v2.0");
    let body = if segs.contains(&"keys") {
        jwks(shared, v2.then_some(tenant))
    } else {
        let host = ctx.header("host").unwrap_or("login.microsoftonline.com");
        let base = format!("http://{host}/{tenant}");
        let (issuer, token, keys) = if v2 {
            (
                v2_issuer(if is_multi_tenant_alias(tenant) {
                    "{tenantid}"
                } else {
                    tenant
                }),
                format!("{base}/oauth2/v2.0/token"),
                format!("{base}/discovery/v2.0/keys"),
            )
        } else {
            (
                v1_issuer(if is_multi_tenant_alias(tenant) {
                    "{tenantid}"
                } else {
                    tenant
                }),
                format!("{base}/oauth2/token"),
                format!("{base}/discovery/keys"),
            )
        };
        json!({
            "issuer": issuer,
            "token_endpoint": token,
            "jwks_uri": keys,
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "subject_types_supported": ["pairwise"],
            "tenant_region_scope": "NA",
        })
    };
    entra_headers(Reply::json(200, &body), ctx, &uuid_v4())
}

// ---------------------------------------------------------------------------------------------
// Managed identity: IMDS and App Service

/// Issues a managed-identity token for `resource`; Err = the error reply.
fn mi_token(shared: &Shared, resource: &str) -> Result<(String, Value, String), Reply> {
    let Some(mi) = shared.cfg.managed_identity.as_ref() else {
        return Err(mi_error(400, "invalid_request", "Identity not found"));
    };
    let Some(aud) = known_resource(shared, resource) else {
        return Err(mi_error(
            400,
            "invalid_resource",
            &format!(
                "AADSTS500011: The resource principal named {resource} was not found in the tenant \
                 named {}. This can happen if the application has not been installed by the \
                 administrator of the tenant or consented to by any user in the tenant. You \
                 might have sent your authentication request to the wrong tenant. Trace ID: {} \
                 Correlation ID: {} Timestamp: {}",
                shared.cfg.tenant_id,
                uuid_v4(),
                uuid_v4(),
                entra_timestamp(now_secs())
            ),
        ));
    };
    let claims = app_token_claims(
        shared,
        &aud,
        &mi.client_id,
        &mi.object_id,
        "2",
        shared.cfg.token_lifetime_secs,
        Some(&mi.msi_res_id),
    );
    Ok((sign(shared, &claims), claims, mi.client_id.clone()))
}

/// Checks the user-assigned identity selectors (at most one) against the registration.
fn check_selectors(shared: &Shared, ctx: &Ctx, names: [(&str, u8); 4]) -> Result<(), Reply> {
    let given: Vec<(u8, &str)> = names
        .iter()
        .filter_map(|(n, which)| ctx.query(n).map(|v| (*which, v)))
        .collect();
    if given.len() > 1 {
        return Err(mi_error(
            400,
            "invalid_request",
            "Only one of client_id, object_id and msi_res_id may be given",
        ));
    }
    let Some(mi) = shared.cfg.managed_identity.as_ref() else {
        return Err(mi_error(400, "invalid_request", "Identity not found"));
    };
    if let Some((which, v)) = given.first() {
        let ok = match which {
            0 => v.eq_ignore_ascii_case(&mi.client_id),
            1 => v.eq_ignore_ascii_case(&mi.object_id),
            _ => v.eq_ignore_ascii_case(&mi.msi_res_id),
        };
        if !ok {
            return Err(mi_error(400, "invalid_request", "Identity not found"));
        }
    }
    Ok(())
}

fn imds(shared: &Shared, ctx: &Ctx) -> Reply {
    if ctx.path != "/metadata/identity/oauth2/token" {
        return mi_error(404, "not_found", "The requested path was not found");
    }
    if ctx.method != "GET" {
        return mi_error(405, "invalid_request", "Only GET is supported");
    }
    if !ctx
        .header("metadata")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    {
        return mi_error(
            400,
            "invalid_request",
            "Required metadata header not specified",
        );
    }
    if ctx.header("x-forwarded-for").is_some() {
        return mi_error(
            400,
            "invalid_request",
            "Request contains the header X-Forwarded-For: IMDS does not accept proxied requests",
        );
    }
    if ctx.query("api-version").is_none_or(str::is_empty) {
        return mi_error(
            400,
            "invalid_request",
            "Required query variable 'api-version' is missing",
        );
    }
    let Some(resource) = ctx.query("resource").filter(|r| !r.is_empty()) else {
        return mi_error(
            400,
            "invalid_request",
            "Required query variable 'resource' is missing",
        );
    };
    if let Err(r) = check_selectors(
        shared,
        ctx,
        [
            ("client_id", 0),
            ("object_id", 1),
            ("msi_res_id", 2),
            ("mi_res_id", 2),
        ],
    ) {
        return r;
    }
    let (token, claims, client_id) = match mi_token(shared, resource) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let body = json!({
        "access_token": token,
        "refresh_token": "",
        "expires_in": shared.cfg.token_lifetime_secs.to_string(),
        "expires_on": claims["exp"].to_string(),
        "not_before": claims["nbf"].to_string(),
        "resource": resource,
        "token_type": "Bearer",
        "client_id": client_id,
    });
    Reply::json(200, &body).with_content_type("application/json; charset=utf-8")
}

fn app_service(shared: &Shared, ctx: &Ctx) -> Reply {
    if ctx.method != "GET" {
        return mi_error(405, "invalid_request", "Only GET is supported");
    }
    let expected = shared
        .cfg
        .managed_identity
        .as_ref()
        .map(|m| m.identity_header.as_str());
    match (ctx.header("x-identity-header"), expected) {
        (Some(got), Some(want)) if got == want => {}
        (None, _) => {
            return mi_error(
                400,
                "invalid_request",
                "The X-IDENTITY-HEADER header is missing",
            )
        }
        _ => {
            return mi_error(
                401,
                "invalid_request",
                "The X-IDENTITY-HEADER header value is not valid",
            )
        }
    }
    if ctx.query("api-version").is_none_or(str::is_empty) {
        return mi_error(
            400,
            "invalid_request",
            "Required query variable 'api-version' is missing",
        );
    }
    let Some(resource) = ctx.query("resource").filter(|r| !r.is_empty()) else {
        return mi_error(
            400,
            "invalid_request",
            "Required query variable 'resource' is missing",
        );
    };
    if let Err(r) = check_selectors(
        shared,
        ctx,
        [
            ("client_id", 0),
            ("principal_id", 1),
            ("object_id", 1),
            ("mi_res_id", 2),
        ],
    ) {
        return r;
    }
    let (token, claims, client_id) = match mi_token(shared, resource) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let body = json!({
        "access_token": token,
        "expires_on": claims["exp"].to_string(),
        "resource": resource,
        "token_type": "Bearer",
        "client_id": client_id,
    });
    Reply::json(200, &body).with_content_type("application/json; charset=utf-8")
}
