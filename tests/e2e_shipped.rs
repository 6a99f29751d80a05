//! Issue 22: the shipped files end to end. envoy/azure-production.yaml and
//! envoy/aks-workload-identity.yaml, retargeted at stand-ins behind a TLS front
//! (tests/shipped), as operators run them.
//!
//! Their TLS, against three kinds of peer on the path to Entra and Azure:
//!
//! - a certificate of the test CA for the real names (the CA is the trusted bundle): served;
//! - a self-signed certificate for the real names (DNS hijack, a transparent proxy): refused;
//! - a certificate of the test CA for another name (a real certificate, someone else's):
//!   refused.
//!
//! Behind each impostor listener runs a stand-in that would answer everything (it shares the
//! real one's keys): nothing reaching it is the proof that nothing was sent, and a control
//! with the verification removed shows the same setup leaking.

mod common;
mod shipped;

use azure_standin::{
    v2_issuer, ClientRegistration, Deployment, EndpointKind, Fault, KubernetesIssuer, StandIn,
    StandInConfig, DEFAULT_MI_OBJECT_ID,
};
use common::{client, Envoy};
use serde_json::{json, Value};
use shipped::{Peer, Pki, TlsFront};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

// ---------------------------------------------------------------------------------------------
// envoy/azure-production.yaml

const PRODUCTION: &str = "envoy/azure-production.yaml";
/// The shipped file's tenant (caller tokens, JWKS).
const TENANT: &str = "00000000-0000-0000-0000-000000000000";
/// The partner's tenant in the shipped file: the stand-in plays one tenant, so the test names
/// the same tenant for the partner (an identifier an operator changes anyway).
const PARTNER_TENANT: &str = "99999999-9999-9999-9999-999999999999";
const PARTNER_CLIENT: &str = "88888888-8888-8888-8888-888888888888";
const ENTRA: &str = "login.microsoftonline.com";
const PTU: &str = "contoso-ptu.openai.azure.com";
const PAYG: &str = "partner-payg.openai.azure.com";
const FOUNDRY: &str = "contoso-foundry.services.ai.azure.com";

fn production_standin_config() -> StandInConfig {
    StandInConfig {
        tenant_id: TENANT.into(),
        // The partner's multi-tenant app, trusting the VM's managed identity (federated).
        clients: vec![ClientRegistration::with_federated(
            PARTNER_CLIENT,
            &v2_issuer(TENANT),
            DEFAULT_MI_OBJECT_ID,
        )],
        deployments: vec![
            Deployment::new("gpt-4o-ptu", "gpt-4o", "OpenAI"),
            Deployment::new("gpt-4o-global", "gpt-4o", "OpenAI"),
            Deployment::new("claude-opus-4-5", "claude-opus-4-5", "Anthropic"),
        ],
        ..StandInConfig::default()
    }
}

/// The real Entra / Azure, and an impostor that would answer everything as well.
struct Sides {
    real: StandIn,
    impostor: StandIn,
    front: TlsFront,
    _pki: Pki,
}

async fn sides(config: StandInConfig) -> (Sides, PathBuf) {
    let real = StandIn::start(config.clone()).await.unwrap();
    let impostor = StandIn::start_sharing_keys(&real, config).await.unwrap();
    let pki = Pki::new();
    let front = TlsFront::start(
        &pki,
        &[
            (Peer::Trusted, real.port()),
            (Peer::SelfSigned, impostor.port()),
            (Peer::WrongName, impostor.port()),
        ],
    )
    .await;
    let ca = pki.ca();
    (
        Sides {
            real,
            impostor,
            front,
            _pki: pki,
        },
        ca,
    )
}

impl Sides {
    /// Nothing reached the impostor: no request at all (so no token, secret or assertion),
    /// and no byte on any connection to the impostor listeners.
    fn assert_impostor_got_nothing(&self) {
        let got = self.impostor.requests();
        assert!(
            got.is_empty(),
            "the impostor received {:?}",
            got.iter()
                .map(|r| format!("{} {}", r.method, r.path))
                .collect::<Vec<_>>()
        );
        for c in self.front.connections() {
            if c.peer != Peer::Trusted.name() {
                assert_eq!(c.bytes_received, 0, "bytes sent to an impostor: {c:?}");
            }
        }
    }
}

/// azure-production.yaml with each Azure / Entra host played by a front listener (`peer_of`),
/// IMDS by the real stand-in (plain HTTP, link-local in production), the collector absent.
async fn production(sides: &Sides, ca: &Path, peer_of: impl Fn(&str) -> Peer) -> Envoy {
    let raw = production_raw(sides, ca, peer_of, false);
    shipped::start(raw, vec![], 1).await
}

fn production_raw(
    sides: &Sides,
    ca: &Path,
    peer_of: impl Fn(&str) -> Peer,
    strip_verification: bool,
) -> String {
    let port = |h: &str| sides.front.port(peer_of(h));
    let hosts = [
        (ENTRA, port(ENTRA)),
        (PTU, port(PTU)),
        (PAYG, port(PAYG)),
        (FOUNDRY, port(FOUNDRY)),
        ("169.254.169.254", sides.real.port()),
        ("otel-collector.observability.internal", common::free_port()),
    ];
    let raw = shipped::retarget(PRODUCTION, &hosts, ca, &[(PARTNER_TENANT, TENANT)]);
    if strip_verification {
        strip_validation_contexts(&raw)
    } else {
        raw
    }
}

/// The bootstrap without its validation contexts: what the files shipped before issue 22.
fn strip_validation_contexts(raw: &str) -> String {
    let mut doc: serde_yaml::Value = serde_yaml::from_str(raw).unwrap();
    fn strip(v: &mut serde_yaml::Value) {
        match v {
            serde_yaml::Value::Mapping(m) => {
                m.remove("validation_context");
                m.iter_mut().for_each(|(_, c)| strip(c));
            }
            serde_yaml::Value::Sequence(s) => s.iter_mut().for_each(strip),
            _ => {}
        }
    }
    strip(&mut doc);
    let out = serde_yaml::to_string(&doc).unwrap();
    assert!(!out.contains("trusted_ca"));
    out
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A caller token as the shipped file's provider `entra` accepts it, signed by `signer`.
fn caller_token(signer: &StandIn) -> String {
    let t = now();
    signer.sign_token(json!({
        "iss": v2_issuer(TENANT), "aud": "api://llm-gateway", "azp": "reporting-app",
        "tid": TENANT, "sub": "sp-reporting-app", "roles": ["LLM.Invoke"],
        "iat": t, "nbf": t - 5, "exp": t + 600, "ver": "2.0"
    }))
}

async fn send(envoy: &Envoy, path: &str, token: &str, body: Value) -> (u16, String) {
    let resp = client()
        .post(envoy.url(path))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .expect("Envoy answers");
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

async fn chat(envoy: &Envoy, token: &str) -> (u16, String) {
    let body = json!({"model": "gpt-4o", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]});
    send(envoy, "/v1/chat/completions", token, body).await
}

async fn claude(envoy: &Envoy, token: &str) -> (u16, String) {
    let body = json!({"model": "claude-opus-4-5", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]});
    send(envoy, "/v1/messages", token, body).await
}

/// Sends until the JWKS is loaded (the first fetch runs right after start): the first answer
/// that is not 503 jwks_unavailable.
async fn once_keys_loaded(envoy: &Envoy, token: &str) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = chat(envoy, token).await;
        if !(status == 503 && body.contains("jwks_unavailable")) {
            return (status, body);
        }
        assert!(
            Instant::now() < deadline,
            "JWKS never loaded: {}",
            envoy.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn stat(envoy: &Envoy, name: &str) -> u64 {
    envoy.stat(name).await.unwrap_or(0)
}

/// (b) Against peers whose certificates chain to the test CA, the shipped file works: caller
/// keys from Entra, the PTU, the Foundry resource, and (PTU throttled) the partner's PAYG with a
/// token exchanged at Entra, each over TLS with its own host as SNI.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn production_works_against_peers_the_trusted_ca_certified() {
    let (s, ca) = sides(production_standin_config()).await;
    let envoy = production(&s, &ca, |_| Peer::Trusted).await;
    let token = caller_token(&s.real);
    let (status, body) = once_keys_loaded(&envoy, &token).await;
    assert_eq!(status, 200, "{body}\n{}", envoy.logs());
    let (status, body) = claude(&envoy, &token).await;
    assert_eq!(status, 200, "{body}\n{}", envoy.logs());
    // Before the PTU is throttled below: the caller's request would start at the PTU.
    caller_envoy_headers_change_nothing(&s, &envoy, &token).await;
    s.real.push_fault(
        EndpointKind::DataPlane,
        Fault::RateLimited {
            retry_after_secs: 30,
        },
        1,
    );
    let (status, body) = chat(&envoy, &token).await;
    assert_eq!(status, 200, "{body}\n{}", envoy.logs());

    let served: Vec<(String, String)> = s
        .real
        .requests_of(EndpointKind::DataPlane)
        .iter()
        .map(|r| (r.header("host").unwrap_or("").to_string(), r.path.clone()))
        .collect();
    for (host, path) in [
        (PTU, "/openai/deployments/gpt-4o-ptu/chat/completions"),
        (FOUNDRY, "/anthropic/v1/messages"),
        (PAYG, "/openai/v1/chat/completions"),
    ] {
        assert!(
            served.iter().any(|(h, p)| h == host && p == path),
            "{host}{path} not served: {served:?}"
        );
    }
    for r in s.real.requests_of(EndpointKind::DataPlane) {
        let bearer = r
            .header("authorization")
            .unwrap_or("")
            .trim_start_matches("Bearer ");
        assert!(s.real.verify_access_token(bearer).is_ok(), "{:?}", r.path);
        assert_ne!(bearer, token, "the caller's token reached Azure");
        assert_eq!(r.header("x-azure-llm-backend"), None);
    }
    // The partner's token came from an exchange at Entra (its assertion the VM's identity).
    let exchanges = s.real.requests_of(EndpointKind::Token);
    assert!(
        exchanges
            .iter()
            .any(|r| r.form_value("client_id").as_deref() == Some(PARTNER_CLIENT)),
        "no partner exchange"
    );
    let snis = s.front.snis_once_seen(&[ENTRA, PTU, PAYG, FOUNDRY]).await;
    let mut expected: Vec<String> = [ENTRA, PTU, PAYG, FOUNDRY].map(String::from).to_vec();
    expected.sort();
    assert_eq!(snis, expected, "one SNI per cluster, each its host");
    for cluster in ["entra", "ptu", "payg", "foundry"] {
        assert!(
            stat(&envoy, &format!("cluster.{cluster}.ssl.handshake")).await >= 1,
            "{cluster}"
        );
    }
    s.assert_impostor_got_nothing();
}

/// (a) An impostor Entra (self-signed) gets no connection: the caller keys are never loaded
/// (503 jwks_unavailable; an impostor's JWKS would let anyone mint caller tokens) and nothing
/// reaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn production_refuses_an_impostor_entra() {
    let (s, ca) = sides(production_standin_config()).await;
    let envoy = production(&s, &ca, |h| {
        if h == ENTRA {
            Peer::SelfSigned
        } else {
            Peer::Trusted
        }
    })
    .await;
    // A token the impostor's keys would verify (it shares them with the real Entra).
    let token = caller_token(&s.impostor);
    s.front.wait_for_connection(Peer::SelfSigned).await;
    for _ in 0..3 {
        let (status, body) = chat(&envoy, &token).await;
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("jwks_unavailable"), "{body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(stat(&envoy, "cluster.entra.ssl.fail_verify_error").await >= 1);
    // The filter fetches every pool target's token at start; the partner tenant's chain begins
    // with the VM identity at IMDS, which the real stand-in plays here (plain HTTP, link-local
    // in production). Past IMDS the chain needs Entra, the impostor: nothing else of the real
    // side (Entra's token endpoint or keys, an Azure resource) was reached.
    let reached: Vec<_> = s
        .real
        .requests()
        .into_iter()
        .filter(|r| r.kind != EndpointKind::Imds)
        .map(|r| r.path)
        .collect();
    assert!(reached.is_empty(), "the real side received {reached:?}");
    s.assert_impostor_got_nothing();
}

/// (a) Impostor resources get no connection either: the Foundry resource's impostor (a test-CA
/// certificate for another name) makes the caller's Claude request a 503; the PTU's
/// (self-signed) is skipped by the failover pool, which serves gpt-4o from the partner's PAYG.
/// Neither impostor receives a byte, so no token and no prompt.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn production_refuses_impostor_resources() {
    let (s, ca) = sides(production_standin_config()).await;
    let envoy = production(&s, &ca, |h| match h {
        PTU => Peer::SelfSigned,
        FOUNDRY => Peer::WrongName,
        _ => Peer::Trusted,
    })
    .await;
    let token = caller_token(&s.real);
    let (status, body) = once_keys_loaded(&envoy, &token).await;
    assert_eq!(status, 200, "{body}\n{}", envoy.logs());
    let (status, body) = claude(&envoy, &token).await;
    assert_eq!(status, 503, "{body}");
    assert!(stat(&envoy, "cluster.foundry.ssl.fail_verify_san").await >= 1);
    assert!(stat(&envoy, "cluster.ptu.ssl.fail_verify_error").await >= 1);
    let served = s.real.requests_of(EndpointKind::DataPlane);
    assert_eq!(served.len(), 1, "only the PAYG answer");
    assert_eq!(served[0].header("host"), Some(PAYG));
    s.assert_impostor_got_nothing();
}

/// The control: the same peers with the verification removed (the files as shipped before):
/// the impostor Foundry answers the caller and receives the Entra token.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn control_without_verification_the_impostor_gets_the_token() {
    let (s, ca) = sides(production_standin_config()).await;
    let raw = production_raw(
        &s,
        &ca,
        |h| {
            if h == FOUNDRY {
                Peer::WrongName
            } else {
                Peer::Trusted
            }
        },
        true,
    );
    let envoy = shipped::start(raw, vec![], 1).await;
    let token = caller_token(&s.real);
    let (status, body) = once_keys_loaded(&envoy, &token).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = claude(&envoy, &token).await;
    assert_eq!(status, 200, "{body}");
    let stolen = s.impostor.requests_of(EndpointKind::DataPlane);
    assert_eq!(stolen.len(), 1);
    let bearer = stolen[0]
        .header("authorization")
        .unwrap()
        .trim_start_matches("Bearer ");
    assert!(
        s.impostor.verify_access_token(bearer).is_ok(),
        "a valid Entra token leaked"
    );
}

// ---------------------------------------------------------------------------------------------
// envoy/aks-workload-identity.yaml

const AKS: &str = "envoy/aks-workload-identity.yaml";
const AKS_RESOURCE: &str = "contoso-eastus.openai.azure.com";
const WI_CLIENT: &str = "55555555-5555-5555-5555-555555555555";

struct Aks {
    sides: Sides,
    envoy: Envoy,
    projected: String,
}

/// The shipped AKS file with its Entra and resource played by `entra` / `resource` peers, the
/// webhook's environment and a projected service-account token file.
async fn aks(entra: Peer, resource: Peer, strip_verification: bool) -> Aks {
    let issuer = KubernetesIssuer::new().unwrap();
    let config = StandInConfig {
        clients: vec![issuer.federated_client(WI_CLIENT, "llm-gateway", "llm-gateway")],
        external_issuers: vec![issuer.trust()],
        deployments: vec![Deployment::new("gpt-4o", "gpt-4o", "OpenAI")],
        ..StandInConfig::default()
    };
    let (sides, ca) = sides(config).await;
    let dir = common::workspace_root().join(format!(
        "target/e2e/shipped-tls/{}-{}",
        std::process::id(),
        common::free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("azure-identity-token");
    let projected = issuer.service_account_token("llm-gateway", "llm-gateway", 3600);
    std::fs::write(&file, &projected).unwrap();
    let hosts = [
        (ENTRA, sides.front.port(entra)),
        (AKS_RESOURCE, sides.front.port(resource)),
        ("otel-collector.observability.internal", common::free_port()),
    ];
    let mut raw = shipped::retarget(AKS, &hosts, &ca, &[]);
    if strip_verification {
        raw = strip_validation_contexts(&raw);
    }
    let env = vec![
        ("AZURE_CLIENT_ID".to_string(), WI_CLIENT.to_string()),
        ("AZURE_TENANT_ID".to_string(), sides.real.tenant_id()),
        (
            "AZURE_AUTHORITY_HOST".to_string(),
            "https://login.microsoftonline.com/".to_string(),
        ),
        (
            "AZURE_FEDERATED_TOKEN_FILE".to_string(),
            file.to_string_lossy().into_owned(),
        ),
    ];
    let envoy = shipped::start(raw, env, 1).await;
    Aks {
        sides,
        envoy,
        projected,
    }
}

async fn aks_chat(envoy: &Envoy) -> (u16, String) {
    let resp = client()
        .post(envoy.url("/v1/chat/completions"))
        .json(&json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .expect("Envoy answers");
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

/// (b) The AKS file works against peers the trusted CA certified: the projected token is
/// exchanged at Entra and the resource answers, each over TLS with its host as SNI.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn aks_works_against_peers_the_trusted_ca_certified() {
    let a = aks(Peer::Trusted, Peer::Trusted, false).await;
    let (status, body) = aks_chat(&a.envoy).await;
    assert_eq!(status, 200, "{body}\n{}", a.envoy.logs());
    let exchange = a.sides.real.requests_of(EndpointKind::Token);
    assert_eq!(
        exchange[0].form_value("client_assertion").as_deref(),
        Some(a.projected.as_str())
    );
    let served = a.sides.real.requests_of(EndpointKind::DataPlane);
    assert_eq!(served.len(), 1);
    assert_eq!(served[0].header("host"), Some(AKS_RESOURCE));
    // The routing header stays in the proxy (the AKS file used to forward it).
    assert_eq!(served[0].header("x-azure-llm-backend"), None);
    let snis = a.sides.front.snis_once_seen(&[ENTRA, AKS_RESOURCE]).await;
    assert_eq!(snis, vec![AKS_RESOURCE.to_string(), ENTRA.to_string()]);
    a.sides.assert_impostor_got_nothing();
}

/// (a) The finding: an impostor login.microsoftonline.com (self-signed) received the
/// projected service-account token. Now the exchange never connects: the caller gets 503
/// backend_token_unavailable and the impostor nothing, although Envoy read the token file.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn aks_refuses_an_impostor_entra_and_sends_it_no_assertion() {
    let a = aks(Peer::SelfSigned, Peer::Trusted, false).await;
    let (status, body) = aks_chat(&a.envoy).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("backend_token_unavailable"), "{body}");
    assert!(stat(&a.envoy, "http.workload_identity_token.downstream_rq_total").await >= 1);
    assert!(stat(&a.envoy, "cluster.entra.ssl.fail_verify_error").await >= 1);
    assert!(a.sides.real.requests().is_empty());
    a.sides.assert_impostor_got_nothing();
}

/// (a) An impostor resource (a test-CA certificate for another name) gets no connection: 503,
/// and no Entra token leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn aks_refuses_an_impostor_resource() {
    let a = aks(Peer::Trusted, Peer::WrongName, false).await;
    let (status, body) = aks_chat(&a.envoy).await;
    assert_eq!(status, 503, "{body}");
    assert!(stat(&a.envoy, "cluster.aoai.ssl.fail_verify_san").await >= 1);
    assert!(a.sides.real.requests_of(EndpointKind::DataPlane).is_empty());
    a.sides.assert_impostor_got_nothing();
}

/// The control: without verification the impostor Entra receives the projected token as
/// client_assertion and issues a token; the caller gets 200 (the observation).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn control_without_verification_the_impostor_gets_the_assertion() {
    let a = aks(Peer::SelfSigned, Peer::Trusted, true).await;
    let (status, body) = aks_chat(&a.envoy).await;
    assert_eq!(status, 200, "{body}");
    let stolen = a.sides.impostor.requests_of(EndpointKind::Token);
    assert_eq!(
        stolen[0].form_value("client_assertion").as_deref(),
        Some(a.projected.as_str())
    );
}

// ---------------------------------------------------------------------------------------------
// What a caller's x-envoy-* headers do through the shipped files: nothing.

/// Every header of Envoy's router and connection manager a caller could send to change what
/// Envoy does with its request, with values that would make a difference: retry an answered
/// request (on the pool route, whose retry policy already has retriable-status-codes), time
/// it out at once, hedge it, rename its stats, force a trace, pass for internal.
const CALLER_ENVOY_HEADERS: [(&str, &str); 13] = [
    ("x-envoy-retry-on", "5xx,retriable-status-codes,reset"),
    ("x-envoy-retriable-status-codes", "200,429"),
    ("x-envoy-retriable-header-names", "content-type"),
    ("x-envoy-max-retries", "5"),
    ("x-envoy-upstream-rq-timeout-ms", "1"),
    ("x-envoy-upstream-rq-per-try-timeout-ms", "1"),
    ("x-envoy-hedge-on-per-try-timeout", "true"),
    ("x-envoy-upstream-alt-stat-name", "caller-chosen"),
    ("x-envoy-upstream-rq-timeout-alt-response", "204"),
    ("x-envoy-expected-rq-timeout-ms", "1"),
    ("x-envoy-force-trace", "true"),
    ("x-envoy-internal", "true"),
    ("x-envoy-ip-tags", "internal"),
];

/// Through the shipped production file (the failover pool's route retries on 429 and 5xx), a
/// caller sending every x-envoy-* header Envoy acts on, and claiming an internal address in
/// x-forwarded-for, gets one answer served once: no retry to the second target, no early
/// timeout, no renamed stats; no x-envoy-* header reaches Azure.
/// (Run by `production_works_against_peers_the_trusted_ca_certified`, on its Envoy.)
async fn caller_envoy_headers_change_nothing(s: &Sides, envoy: &Envoy, token: &str) {
    let earlier = s.real.requests_of(EndpointKind::DataPlane).len();
    let retries_before = stat(envoy, "cluster.ptu+payg.upstream_rq_retry").await;
    let mut req = client()
        .post(envoy.url("/v1/chat/completions"))
        .bearer_auth(token)
        .header("x-forwarded-for", "10.0.0.7")
        .json(&json!({"model": "gpt-4o", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}));
    for (k, v) in CALLER_ENVOY_HEADERS {
        req = req.header(k, v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let envoy_answer_headers: Vec<String> = resp
        .headers()
        .keys()
        .map(|k| k.as_str().to_string())
        .filter(|k| k.starts_with("x-envoy-"))
        .collect();
    let body = resp.text().await.unwrap();
    assert_eq!(status, 200, "{body}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let served: Vec<_> = s
        .real
        .requests_of(EndpointKind::DataPlane)
        .into_iter()
        .skip(earlier)
        .collect();
    assert_eq!(
        served
            .iter()
            .map(|r| r.header("host").unwrap_or(""))
            .collect::<Vec<_>>(),
        vec![PTU],
        "served once, by the first target"
    );
    for r in &served {
        let leaked: Vec<&str> = r
            .headers
            .iter()
            .map(|(k, _)| k.as_str())
            .filter(|k| k.starts_with("x-envoy-"))
            .collect();
        assert!(
            leaked.is_empty(),
            "x-envoy-* headers reached Azure: {leaked:?}"
        );
    }
    assert_eq!(
        stat(envoy, "cluster.ptu+payg.upstream_rq_retry").await,
        retries_before
    );
    let stats = client()
        .get(envoy.admin_url("/stats"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!stats.contains("caller-chosen"), "the caller named a stat");
    assert!(envoy_answer_headers.is_empty(), "{envoy_answer_headers:?}");
}

/// Where an operator's listener trusts callers (`internal_address_config` listing their
/// addresses; a caller's own x-forwarded-for decides without `use_remote_address`), Envoy obeys
/// their x-envoy-* headers: measured before the filter removed them, `x-envoy-retry-on:
/// retriable-status-codes` with `x-envoy-retriable-status-codes: 200` had the pool retry an
/// answered request (served by the PTU *and* the PAYG, billed twice) and the caller waited
/// for an answer that never came. The filter removes every caller x-envoy-* header, so even
/// then the request is served once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn production_caller_envoy_headers_change_nothing_even_where_callers_are_trusted() {
    let (s, ca) = sides(production_standin_config()).await;
    let raw = production_raw(&s, &ca, |_| Peer::Trusted, false);
    let hcm = "stat_prefix: llm_ingress\n";
    assert!(raw.contains(hcm));
    let trusting = raw.replace(
        hcm,
        "stat_prefix: llm_ingress\n          internal_address_config: { cidr_ranges: [{ address_prefix: 127.0.0.0, prefix_len: 8 }] }\n          use_remote_address: false\n",
    );
    let envoy = shipped::start(trusting, vec![], 1).await;
    let token = caller_token(&s.real);
    let (status, body) = once_keys_loaded(&envoy, &token).await;
    assert_eq!(status, 200, "{body}");
    s.real.clear_requests();
    let resp = client()
        .post(envoy.url("/v1/chat/completions"))
        .bearer_auth(&token)
        .header("x-forwarded-for", "127.0.0.5")
        .header("x-envoy-retry-on", "retriable-status-codes")
        .header("x-envoy-retriable-status-codes", "200")
        .header("x-envoy-max-retries", "3")
        .json(&json!({"model": "gpt-4o", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}))
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .expect("an answer");
    assert_eq!(resp.status(), 200);
    let _ = resp.text().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let served = s.real.requests_of(EndpointKind::DataPlane);
    assert_eq!(
        served
            .iter()
            .map(|r| r.header("host").unwrap_or(""))
            .collect::<Vec<_>>(),
        vec![PTU],
        "served once"
    );
    assert_eq!(stat(&envoy, "cluster.ptu+payg.upstream_rq_retry").await, 0);
}
