//! The credential kinds, through the whole configuration (so errors are checked with the
//! field names operators see).

use super::federated::DEFAULT_TOKEN_EXCHANGE_AUDIENCE;
use super::managed_identity::{DEFAULT_IDENTITY_PATH, DEFAULT_IMDS_AUTHORITY};
use super::*;
use crate::config::resolve_secrets;
use crate::config::tests::{
    base, cert_cred, err_field, federated, mi_cred, parse, with_credentials,
};
use crate::entra::assertion::parse_thumbprint;
use crate::entra::assertion::tests::{
    CERT, CERT_SHA1_HEX, CERT_SHA256_HEX, EC_KEY, KEY_PKCS1, KEY_PKCS8, OTHER_CERT, WEAK_KEY,
};
use serde_json::json;

#[test]
fn secret_sources() {
    let mut v = base();
    v["credentials"]["main"]["client_secret_env"] = json!("X");
    assert!(parse(v).unwrap_err().reason.contains("not both"));
    let mut v = base();
    v["credentials"]["main"]
        .as_object_mut()
        .unwrap()
        .remove("client_secret");
    assert_eq!(
        parse(v).unwrap_err().field,
        "credentials.main.client_secret"
    );
    let mut v = base();
    v["credentials"]["main"]
        .as_object_mut()
        .unwrap()
        .remove("client_secret");
    v["credentials"]["main"]["client_secret_env"] = json!("MY_SECRET");
    let c = parse(v).unwrap();
    let ok = resolve_secrets(&c, |k| (k == "MY_SECRET").then(|| "v".to_string())).unwrap();
    assert_eq!(ok[0], ResolvedSecret::ClientSecret("v".into()));
    let e = resolve_secrets(&c, |_| None).unwrap_err();
    assert_eq!(e.field, "credentials.main.client_secret_env");
}

#[test]
fn fingerprint_changes_with_credential() {
    let a = parse(base()).unwrap();
    let mut v = base();
    v["credentials"]["main"]["client_id"] = json!("c2");
    let b = parse(v).unwrap();
    assert_ne!(
        a.credentials[0].fingerprint(),
        b.credentials[0].fingerprint()
    );
    assert_eq!(
        a.credentials[0].fingerprint(),
        parse(base()).unwrap().credentials[0].fingerprint()
    );
}

#[test]
fn client_certificate_config() {
    let c = parse(with_credentials(json!({"cert": cert_cred()}))).unwrap();
    let cred = &c.credentials[0];
    let CredentialKind::ClientCertificate {
        algorithm,
        thumbprint_sha256,
        thumbprint_sha1,
        ..
    } = &cred.kind
    else {
        panic!("wrong kind")
    };
    assert_eq!(*algorithm, SigningAlgorithm::Ps256);
    assert_eq!(*thumbprint_sha256, parse_thumbprint(CERT_SHA256_HEX));
    assert_eq!(*thumbprint_sha1, parse_thumbprint(CERT_SHA1_HEX));
    assert_eq!(cred.authority_host, DEFAULT_AUTHORITY_HOST);
    assert_eq!(cred.scope, DEFAULT_SCOPE);
    let secrets = resolve_secrets(&c, |_| None).unwrap();
    let ResolvedSecret::SigningKey(key) = &secrets[0] else {
        panic!("not a key")
    };
    assert_eq!(key.algorithm(), SigningAlgorithm::Ps256);
    assert_eq!(
        key.x5t_s256(),
        Some("O4Dqb2tZQ7Q40WVAM414xMpp4fTA0zjdMwj3LkVxisA")
    );

    // Thumbprint only (hex or base64url), PKCS#1 key, RS256.
    for tp in [
        CERT_SHA256_HEX,
        "O4Dqb2tZQ7Q40WVAM414xMpp4fTA0zjdMwj3LkVxisA",
    ] {
        let mut cred = cert_cred();
        cred.as_object_mut().unwrap().remove("certificate_pem");
        cred["certificate_thumbprint_sha256"] = json!(tp);
        cred["private_key_pem"] = json!(KEY_PKCS1);
        cred["algorithm"] = json!("RS256");
        let c = parse(with_credentials(json!({"cert": cred}))).unwrap();
        assert!(resolve_secrets(&c, |_| None).is_ok());
    }
    // RS256 with the SHA-1 thumbprint only works; PS256 needs SHA-256.
    let mut cred = cert_cred();
    cred.as_object_mut().unwrap().remove("certificate_pem");
    cred["certificate_thumbprint_sha1"] = json!(CERT_SHA1_HEX);
    cred["algorithm"] = json!("RS256");
    assert!(parse(with_credentials(json!({"cert": cred.clone()}))).is_ok());
    cred["algorithm"] = json!("PS256");
    assert_eq!(
        err_field(with_credentials(json!({"cert": cred}))),
        "credentials.cert.certificate_thumbprint_sha256"
    );
    // A key+certificate bundle needs nothing else.
    let mut cred = cert_cred();
    cred.as_object_mut().unwrap().remove("certificate_pem");
    cred["private_key_pem"] = json!(format!("{KEY_PKCS8}{CERT}"));
    let c = parse(with_credentials(json!({"cert": cred}))).unwrap();
    assert!(matches!(
        &c.credentials[0].kind,
        CredentialKind::ClientCertificate {
            thumbprint_sha256: Some(_),
            ..
        }
    ));
}

#[test]
fn client_certificate_errors_name_the_field() {
    let cases: Vec<(&str, serde_json::Value, &str)> = vec![
        ("private_key_pem", json!("garbage"), "private_key_pem"),
        ("private_key_pem", json!(WEAK_KEY), "private_key_pem"),
        ("private_key_pem", json!(EC_KEY), "private_key_pem"),
        ("private_key_pem", json!(""), "private_key_pem"),
        ("private_key_env", json!("K"), "private_key_pem"), // both given
        ("certificate_pem", json!(OTHER_CERT), "certificate_pem"),
        ("certificate_pem", json!("nope"), "certificate_pem"),
        (
            "certificate_thumbprint_sha256",
            json!("abcd"),
            "certificate_thumbprint_sha256",
        ),
        (
            "certificate_thumbprint_sha256",
            json!("00".repeat(32)),
            "certificate_thumbprint_sha256",
        ),
        (
            "certificate_thumbprint_sha1",
            json!("00".repeat(20)),
            "certificate_thumbprint_sha1",
        ),
        ("algorithm", json!("ES256"), "algorithm"),
        ("tenant_id", json!("a/b"), "tenant_id"),
        ("token_cluster", json!(""), "token_cluster"),
        ("authority_host", json!("https://x"), "authority_host"),
        ("timeout_ms", json!(0), "timeout_ms"),
    ];
    for (key, value, want) in cases {
        let mut cred = cert_cred();
        cred[key] = value;
        assert_eq!(
            err_field(with_credentials(json!({"cert": cred}))),
            format!("credentials.cert.{want}"),
            "{key}"
        );
    }
    let mut cred = cert_cred();
    cred.as_object_mut().unwrap().remove("certificate_pem");
    assert_eq!(
        err_field(with_credentials(json!({"cert": cred}))),
        "credentials.cert.certificate_thumbprint_sha256"
    );
    let mut cred = cert_cred();
    cred.as_object_mut().unwrap().remove("private_key_pem");
    assert_eq!(
        err_field(with_credentials(json!({"cert": cred}))),
        "credentials.cert.private_key_pem"
    );
    let mut cred = cert_cred();
    cred["private_key_sha"] = json!(1);
    assert_eq!(
        err_field(with_credentials(json!({"cert": cred}))),
        "credentials.cert"
    );
}

#[test]
fn client_certificate_key_from_the_environment() {
    let mut cred = cert_cred();
    cred.as_object_mut().unwrap().remove("private_key_pem");
    cred.as_object_mut().unwrap().remove("certificate_pem");
    cred["private_key_env"] = json!("KEY");
    let c = parse(with_credentials(json!({"cert": cred.clone()}))).unwrap();
    // A bundle in the environment gives the thumbprints.
    let bundle = format!("{KEY_PKCS8}{CERT}").replace('\n', "\\n");
    let ok = resolve_secrets(&c, |k| (k == "KEY").then(|| bundle.clone())).unwrap();
    let ResolvedSecret::SigningKey(key) = &ok[0] else {
        panic!()
    };
    assert!(key.x5t_s256().is_some());
    let e = resolve_secrets(&c, |_| None).unwrap_err();
    assert_eq!(e.field, "credentials.cert.private_key_env");
    let e = resolve_secrets(&c, |_| {
        Some("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----".into())
    })
    .unwrap_err();
    assert_eq!(e.field, "credentials.cert.private_key_env");
    // A key alone in the environment, and no thumbprint anywhere.
    let e = resolve_secrets(&c, |_| Some(KEY_PKCS8.into())).unwrap_err();
    assert_eq!(e.field, "credentials.cert.certificate_thumbprint_sha256");
    cred["certificate_pem"] = json!(CERT);
    let c = parse(with_credentials(json!({"cert": cred}))).unwrap();
    assert!(resolve_secrets(&c, |_| Some(KEY_PKCS8.into())).is_ok());
}

#[test]
fn managed_identity_config() {
    let c = parse(with_credentials(json!({"mi": mi_cred()}))).unwrap();
    let cred = &c.credentials[0];
    assert_eq!(cred.authority_host, DEFAULT_IMDS_AUTHORITY);
    assert_eq!(cred.scope, DEFAULT_SCOPE);
    assert_eq!(
        cred.kind,
        CredentialKind::ManagedIdentity(ManagedIdentity {
            endpoint: ManagedIdentityEndpoint::Imds,
            selector: None,
            path: String::new(),
            identity_header_env: None,
        })
    );
    assert_eq!(
        resolve_secrets(&c, |_| None).unwrap()[0],
        ResolvedSecret::ManagedIdentity {
            identity_header: None
        }
    );
    for (key, want) in [
        ("client_id", IdentitySelector::ClientId("x".into())),
        ("object_id", IdentitySelector::ObjectId("x".into())),
        ("principal_id", IdentitySelector::ObjectId("x".into())),
        ("msi_res_id", IdentitySelector::ResourceId("x".into())),
        ("mi_res_id", IdentitySelector::ResourceId("x".into())),
    ] {
        let mut cred = mi_cred();
        cred[key] = json!("x");
        let c = parse(with_credentials(json!({"mi": cred}))).unwrap();
        let CredentialKind::ManagedIdentity(mi) = &c.credentials[0].kind else {
            panic!()
        };
        assert_eq!(mi.selector, Some(want));
    }
    // App Service.
    let app = json!({"kind": "managed_identity", "endpoint": "app_service", "token_cluster": "id",
                     "authority": "localhost:42356", "client_id": "c"});
    let c = parse(with_credentials(json!({"mi": app.clone()}))).unwrap();
    let CredentialKind::ManagedIdentity(mi) = &c.credentials[0].kind else {
        panic!()
    };
    assert_eq!(mi.path, DEFAULT_IDENTITY_PATH);
    assert_eq!(mi.identity_header_env.as_deref(), Some("IDENTITY_HEADER"));
    assert_eq!(c.credentials[0].authority_host, "localhost:42356");
    let ok = resolve_secrets(&c, |k| (k == "IDENTITY_HEADER").then(|| "h".into())).unwrap();
    assert_eq!(
        ok[0],
        ResolvedSecret::ManagedIdentity {
            identity_header: Some("h".into())
        }
    );
    let e = resolve_secrets(&c, |_| None).unwrap_err();
    assert_eq!(e.field, "credentials.mi.identity_header_env");
    let e = resolve_secrets(&c, |_| Some("a\r\nInjected: 1".into())).unwrap_err();
    assert_eq!(e.field, "credentials.mi.identity_header_env");
    assert!(!e.to_string().contains("Injected"));
}

#[test]
fn managed_identity_errors_name_the_field() {
    let cases: Vec<(serde_json::Value, &str)> = vec![
        (json!({"client_id": "a", "object_id": "b"}), "object_id"),
        (json!({"client_id": ""}), "client_id"),
        (json!({"msi_res_id": "a b"}), "msi_res_id"),
        (json!({"path": "/x"}), "path"),
        (json!({"identity_header_env": "X"}), "identity_header_env"),
        (json!({"endpoint": "arc"}), "endpoint"),
        (json!({"endpoint": "app_service"}), "authority"),
        (
            json!({"endpoint": "app_service", "authority": "l:1", "path": "x"}),
            "path",
        ),
        (
            json!({"endpoint": "app_service", "authority": "l:1", "path": "/x?y"}),
            "path",
        ),
        (
            json!({"endpoint": "app_service", "authority": "l:1", "identity_header_env": "A B"}),
            "identity_header_env",
        ),
        (json!({"authority": "a/b"}), "authority"),
        (json!({"scope": "a b"}), "scope"),
        (json!({"tenant_id": "t"}), ""),
    ];
    for (extra, want) in cases {
        let mut cred = mi_cred();
        for (k, v) in extra.as_object().unwrap() {
            cred[k] = v.clone();
        }
        let want = if want.is_empty() {
            "credentials.mi".to_string()
        } else {
            format!("credentials.mi.{want}")
        };
        assert_eq!(
            err_field(with_credentials(json!({"mi": cred}))),
            want,
            "{extra}"
        );
    }
}

#[test]
fn federated_config() {
    // The managed identity may sort after the credential that uses it.
    let c = parse(with_credentials(json!({
        "a-customer": federated(json!({"source": "managed_identity", "credential": "z-mi"})),
        "z-mi": {"kind": "managed_identity", "token_cluster": "imds", "client_id": "u", "timeout_ms": 900}
    })))
    .unwrap();
    let cred = &c.credentials[c.credential_index("a-customer").unwrap()];
    let CredentialKind::Federated { assertion, .. } = &cred.kind else {
        panic!()
    };
    assert_eq!(
        assertion,
        &AssertionSource::ManagedIdentity {
            credential: "z-mi".into(),
            identity: ManagedIdentity {
                endpoint: ManagedIdentityEndpoint::Imds,
                selector: Some(IdentitySelector::ClientId("u".into())),
                path: String::new(),
                identity_header_env: None,
            },
            cluster: "imds".into(),
            authority: DEFAULT_IMDS_AUTHORITY.into(),
            timeout_ms: 900,
            audience: DEFAULT_TOKEN_EXCHANGE_AUDIENCE.into(),
        }
    );
    assert_eq!(cred.fetch_budget_ms(), 900 + DEFAULT_TOKEN_FETCH_TIMEOUT_MS);
    assert_eq!(resolve_secrets(&c, |_| None).unwrap().len(), 2);

    let c = parse(with_credentials(json!({"f": federated(json!({
        "source": "http", "cluster": "oidc", "authority": "issuer:8080", "path": "/t?aud=x",
        "header_env": "AUTH", "response": "json_field:token"}))})))
    .unwrap();
    let CredentialKind::Federated { assertion, .. } = &c.credentials[0].kind else {
        panic!()
    };
    assert!(matches!(
        assertion,
        AssertionSource::Http { response: AssertionResponse::JsonField(f), .. } if f == "token"
    ));
    let ok = resolve_secrets(&c, |_| Some("Bearer k".into())).unwrap();
    assert_eq!(
        ok[0],
        ResolvedSecret::AssertionEndpoint {
            authorization: Some("Bearer k".into())
        }
    );
    assert_eq!(
        resolve_secrets(&c, |_| None).unwrap_err().field,
        "credentials.f.assertion.header_env"
    );
}

#[test]
fn federated_errors_name_the_field() {
    let http = json!({"source": "http", "cluster": "oidc", "authority": "issuer", "path": "/t"});
    let cases: Vec<(serde_json::Value, &str)> = vec![
        (
            json!({"source": "managed_identity", "credential": "nope"}),
            "assertion.credential",
        ),
        (
            json!({"source": "managed_identity", "credential": "f"}),
            "assertion.credential",
        ),
        (
            json!({"source": "managed_identity", "credential": "mi", "audience": ""}),
            "assertion.audience",
        ),
        (json!({"source": "file", "path": "/x"}), "assertion.source"),
        (
            json!({"source": "http", "cluster": "", "authority": "a", "path": "/"}),
            "assertion.cluster",
        ),
        (
            json!({"source": "http", "cluster": "c", "authority": "a b", "path": "/"}),
            "assertion.authority",
        ),
        (
            json!({"source": "http", "cluster": "c", "authority": "a", "path": "t"}),
            "assertion.path",
        ),
        (
            json!({"source": "http", "cluster": "c", "authority": "a", "path": "/", "response": "xml"}),
            "assertion.response",
        ),
        (
            json!({"source": "http", "cluster": "c", "authority": "a", "path": "/", "response": "json_field:"}),
            "assertion.response",
        ),
        (
            json!({"source": "http", "cluster": "c", "authority": "a", "path": "/", "header_env": ""}),
            "assertion.header_env",
        ),
    ];
    for (assertion, want) in cases {
        let v = with_credentials(json!({
            "f": federated(assertion.clone()),
            "mi": mi_cred(),
        }));
        let field = err_field(v);
        assert!(
            field == format!("credentials.f.{want}")
                || (want == "assertion.source" && field == "credentials.f.assertion"),
            "{assertion}: {field}"
        );
    }
    let mut bad = http.clone();
    bad["extra"] = json!(1);
    let field = err_field(with_credentials(json!({"f": federated(bad)})));
    assert!(field.starts_with("credentials.f"), "{field}");
    let mut cred = federated(http);
    cred.as_object_mut().unwrap().remove("tenant_id");
    assert_eq!(
        err_field(with_credentials(json!({"f": cred}))),
        "credentials.f"
    );
}

#[test]
fn fingerprint_changes_with_everything_that_decides_the_token() {
    let fp = |v: serde_json::Value, name: &str| -> u64 {
        let c = parse(v).unwrap();
        c.credentials[c.credential_index(name).unwrap()].fingerprint()
    };
    let variants: Vec<(serde_json::Value, &str, &str, serde_json::Value)> = vec![
        (
            base()["credentials"]["main"].clone(),
            "tenant_id",
            "",
            json!("t2"),
        ),
        (
            base()["credentials"]["main"].clone(),
            "client_secret",
            "",
            json!("s2"),
        ),
        (
            base()["credentials"]["main"].clone(),
            "scope",
            "",
            json!("https://ai.azure.com/.default"),
        ),
        (
            base()["credentials"]["main"].clone(),
            "authority_host",
            "",
            json!("login.microsoftonline.us"),
        ),
        (
            base()["credentials"]["main"].clone(),
            "token_cluster",
            "",
            json!("entra2"),
        ),
        (cert_cred(), "algorithm", "", json!("RS256")),
        (cert_cred(), "client_id", "", json!("c2")),
        (mi_cred(), "client_id", "", json!("u2")),
        (mi_cred(), "authority", "", json!("169.254.169.254:80")),
        (
            federated(json!({"source": "managed_identity", "credential": "mi"})),
            "assertion",
            "audience",
            json!("api://AzureADTokenExchangeUSGov"),
        ),
        (
            federated(json!({"source": "http", "cluster": "c", "authority": "a", "path": "/"})),
            "assertion",
            "path",
            json!("/other"),
        ),
        (
            federated(json!({"source": "http", "cluster": "c", "authority": "a", "path": "/"})),
            "assertion",
            "response",
            json!("json_field:t"),
        ),
    ];
    for (cred, key, sub, value) in variants {
        let v1 = with_credentials(json!({"x": cred.clone(), "mi": mi_cred()}));
        let mut changed = cred.clone();
        if sub.is_empty() {
            changed[key] = value;
        } else {
            changed[key][sub] = value;
        }
        let v2 = with_credentials(json!({"x": changed, "mi": mi_cred()}));
        assert_eq!(fp(v1.clone(), "x"), fp(v1.clone(), "x"), "stable");
        assert_ne!(fp(v1, "x"), fp(v2, "x"), "{key}.{sub}");
    }
    // The managed identity behind a federated chain decides its token too.
    let fed = federated(json!({"source": "managed_identity", "credential": "mi"}));
    let mut other_mi = mi_cred();
    other_mi["client_id"] = json!("u3");
    assert_ne!(
        fp(
            with_credentials(json!({"x": fed.clone(), "mi": mi_cred()})),
            "x"
        ),
        fp(with_credentials(json!({"x": fed, "mi": other_mi})), "x")
    );
    // A timeout does not.
    let mut slow = mi_cred();
    slow["timeout_ms"] = json!(9000);
    assert_eq!(
        fp(with_credentials(json!({"x": mi_cred()})), "x"),
        fp(with_credentials(json!({"x": slow})), "x")
    );
}
