//! `azure-standin`: a stand-in for Microsoft Entra ID (token endpoint, JWKS, IMDS, App Service
//! identity endpoint) and an Azure OpenAI / Azure AI Foundry resource, for the end-to-end tests
//! and the demo of `azure-llm-filter`.
//!
//! It speaks the wire formats of `AZURE-WIRE.md` including errors, verifies client credentials
//! and bearer tokens like Azure does (tests can fail because of it), records every request and
//! injects faults on demand. See `README.md` beside this crate for the API, the deterministic
//! usage formula and the faults.
//!
//! The server runs on its own thread and Tokio runtime, so it keeps answering whatever the
//! calling test does with its own runtime (blocking included). Dropping [`StandIn`] stops it.

mod contentsafety;
mod crypto;
mod dataplane;
mod details;
mod entra;
mod kubernetes;
mod util;

#[cfg(test)]
mod tests;

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::{Request, Response};
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

pub use crate::contentsafety::ContentSafetyConfig;
pub use crate::kubernetes::{
    service_account_subject, ExternalIssuer, KubernetesIssuer, DEFAULT_KUBERNETES_ISSUER,
};
pub use crate::util::entra_timestamp;

/// Default tenant id.
pub const DEFAULT_TENANT_ID: &str = "11111111-1111-1111-1111-111111111111";
/// Default client (app registration) id.
pub const DEFAULT_CLIENT_ID: &str = "22222222-2222-2222-2222-222222222222";
/// Default client secret.
pub const DEFAULT_CLIENT_SECRET: &str = "standin-secret";
/// Default audience the data plane accepts (and the token endpoint issues for).
pub const DEFAULT_AUDIENCE: &str = "https://cognitiveservices.azure.com";
/// The audience of federated assertions (workload identity / managed identity as FIC).
pub const TOKEN_EXCHANGE_AUDIENCE: &str = "api://AzureADTokenExchange";
/// Default managed identity: client id.
pub const DEFAULT_MI_CLIENT_ID: &str = "33333333-3333-3333-3333-333333333333";
/// Default managed identity: object (principal) id.
pub const DEFAULT_MI_OBJECT_ID: &str = "44444444-4444-4444-4444-444444444444";
/// Default managed identity: resource id.
pub const DEFAULT_MI_RES_ID: &str = "/subscriptions/00000000-0000-0000-0000-000000000000/resourcegroups/standin-rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/standin-identity";
/// Default `X-IDENTITY-HEADER` value of the App Service identity endpoint.
pub const DEFAULT_IDENTITY_HEADER: &str = "standin-identity-header";
/// `client_assertion_type` of certificate and federated credentials.
pub const JWT_BEARER_ASSERTION_TYPE: &str =
    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// The v2 issuer of `tenant` (`https://login.microsoftonline.com/{tenant}/v2.0`), the issuer of
/// managed-identity tokens for `api://AzureADTokenExchange`.
pub fn v2_issuer(tenant: &str) -> String {
    format!("https://login.microsoftonline.com/{tenant}/v2.0")
}

/// The v1 issuer of `tenant` (`https://sts.windows.net/{tenant}/`), the issuer of the access
/// tokens the data plane accepts.
pub fn v1_issuer(tenant: &str) -> String {
    format!("https://sts.windows.net/{tenant}/")
}

/// Which built-in TEST-ONLY key the stand-in's Entra signs with.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum EntraKey {
    /// `keys/entra-primary-TEST-ONLY.*` (default).
    #[default]
    Primary,
    /// `keys/entra-secondary-TEST-ONLY.*`: an Entra whose tokens other stand-ins do not trust.
    Secondary,
}

/// Configuration of a stand-in.
#[derive(Clone, Debug)]
pub struct StandInConfig {
    /// Default [`DEFAULT_TENANT_ID`].
    pub tenant_id: String,
    /// Default: one client, [`ClientRegistration::default`].
    pub clients: Vec<ClientRegistration>,
    /// Lifetime of issued tokens (token endpoint, IMDS, App Service). Default 3599.
    pub token_lifetime_secs: u64,
    /// Audience of data-plane tokens. Default [`DEFAULT_AUDIENCE`].
    pub accepted_audience: String,
    /// Deployments of the resource. Default: `gpt-4o-prod` (gpt-4o, OpenAI),
    /// `text-embedding-3-small` (OpenAI), `claude-opus-4-5` (Anthropic).
    pub deployments: Vec<Deployment>,
    /// `api-key` values the data plane accepts besides bearer tokens. Default empty.
    pub api_keys: Vec<String>,
    /// The Azure AI Content Safety resource under `/contentsafety/` (keys and verdicts).
    pub content_safety: ContentSafetyConfig,
    /// The identity IMDS and the App Service endpoint issue tokens for (None: "Identity not
    /// found"). Default `Some(ManagedIdentityRegistration::default())`.
    pub managed_identity: Option<ManagedIdentityRegistration>,
    /// Delay between streamed (SSE) chunks. Default 0.
    pub chunk_delay_ms: u64,
    /// Delay between a stream's headers and its first event. Default 0.
    pub first_chunk_delay_ms: u64,
    /// Delay before the first event of a stream that carries output (the model's time to
    /// first token), the token-less events before it (Azure OpenAI's `prompt_filter_results`
    /// and role chunks, Anthropic's `message_start`, the Responses API's `response.created`
    /// ...) being sent at once, as Azure does. Default 0.
    pub first_token_delay_ms: u64,
    /// Delay between a stream's last event and the end of its body (the terminating chunk of
    /// HTTP/1.1 chunked encoding, or HTTP/2's end of stream), as when Azure's front door
    /// holds it: a client that stops at the terminal event (`data: [DONE]`) has closed by
    /// then. Default 0.
    pub end_of_body_delay_ms: u64,
    /// The key the Entra part signs with. Default [`EntraKey::Primary`]. Ignored by
    /// [`StandIn::start_sharing_keys`].
    pub signing_key: EntraKey,
    /// One line per request on stderr (method, path, kind, status). Default false; the binary
    /// turns it on.
    pub log_requests: bool,
    /// OIDC issuers besides this Entra whose keys verify federated assertions (e.g.
    /// [`KubernetesIssuer::trust`]). Default empty: federated assertions must be signed by
    /// this Entra's own key (managed-identity tokens).
    pub external_issuers: Vec<ExternalIssuer>,
}

impl Default for StandInConfig {
    fn default() -> Self {
        StandInConfig {
            tenant_id: DEFAULT_TENANT_ID.to_string(),
            clients: vec![ClientRegistration::default()],
            token_lifetime_secs: 3599,
            accepted_audience: DEFAULT_AUDIENCE.to_string(),
            deployments: vec![
                Deployment::new("gpt-4o-prod", "gpt-4o", "OpenAI"),
                Deployment::new("text-embedding-3-small", "text-embedding-3-small", "OpenAI"),
                Deployment::new("claude-opus-4-5", "claude-opus-4-5", "Anthropic"),
            ],
            api_keys: Vec::new(),
            content_safety: ContentSafetyConfig::default(),
            managed_identity: Some(ManagedIdentityRegistration::default()),
            chunk_delay_ms: 0,
            first_chunk_delay_ms: 0,
            first_token_delay_ms: 0,
            end_of_body_delay_ms: 0,
            signing_key: EntraKey::Primary,
            log_requests: false,
            external_issuers: Vec::new(),
        }
    }
}

/// An app registration (service principal) of the tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientRegistration {
    pub client_id: String,
    pub client_secret: Option<String>,
    /// Certificate(s) (`CERTIFICATE`) or public key(s) (`PUBLIC KEY` / `RSA PUBLIC KEY`) PEM
    /// verifying `client_assertion`s. With a certificate the assertion header must carry its
    /// thumbprint (`x5t#S256` or `x5t`).
    pub certificate_pem: Option<String>,
    /// Federated identity credentials: trusted `(iss, sub)` pairs of assertions with audience
    /// `federated_audience` (signatures are checked with the issuer's key from
    /// `StandInConfig::external_issuers`, else with the stand-in's Entra key).
    pub federated_issuers: Vec<(String, String)>,
    /// The audience the federated credentials expect in assertions. Default
    /// [`TOKEN_EXCHANGE_AUDIENCE`] (sovereign clouds use their own, e.g.
    /// `api://AzureADTokenExchangeUSGov`).
    pub federated_audience: String,
}

impl Default for ClientRegistration {
    /// [`DEFAULT_CLIENT_ID`] with secret [`DEFAULT_CLIENT_SECRET`], trusting the default managed
    /// identity's federated tokens (iss `https://login.microsoftonline.com/{DEFAULT_TENANT_ID}/v2.0`,
    /// sub [`DEFAULT_MI_OBJECT_ID`]).
    fn default() -> Self {
        ClientRegistration {
            client_id: DEFAULT_CLIENT_ID.to_string(),
            client_secret: Some(DEFAULT_CLIENT_SECRET.to_string()),
            certificate_pem: None,
            federated_issuers: vec![(
                v2_issuer(DEFAULT_TENANT_ID),
                DEFAULT_MI_OBJECT_ID.to_string(),
            )],
            federated_audience: TOKEN_EXCHANGE_AUDIENCE.to_string(),
        }
    }
}

impl ClientRegistration {
    /// A client with a secret only.
    pub fn with_secret(client_id: &str, secret: &str) -> Self {
        ClientRegistration {
            client_id: client_id.to_string(),
            client_secret: Some(secret.to_string()),
            certificate_pem: None,
            federated_issuers: Vec::new(),
            federated_audience: TOKEN_EXCHANGE_AUDIENCE.to_string(),
        }
    }

    /// A client with a certificate (or public key) PEM only.
    pub fn with_certificate(client_id: &str, certificate_pem: &str) -> Self {
        ClientRegistration {
            client_id: client_id.to_string(),
            client_secret: None,
            certificate_pem: Some(certificate_pem.to_string()),
            federated_issuers: Vec::new(),
            federated_audience: TOKEN_EXCHANGE_AUDIENCE.to_string(),
        }
    }

    /// A client with one federated identity credential only.
    pub fn with_federated(client_id: &str, issuer: &str, subject: &str) -> Self {
        ClientRegistration {
            client_id: client_id.to_string(),
            client_secret: None,
            certificate_pem: None,
            federated_issuers: vec![(issuer.to_string(), subject.to_string())],
            federated_audience: TOKEN_EXCHANGE_AUDIENCE.to_string(),
        }
    }
}

/// A model deployment of the resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deployment {
    pub name: String,
    pub model: String,
    /// `OpenAI` or `Anthropic`.
    pub format: String,
}

impl Deployment {
    pub fn new(name: &str, model: &str, format: &str) -> Self {
        Deployment {
            name: name.to_string(),
            model: model.to_string(),
            format: format.to_string(),
        }
    }
}

/// The managed identity behind IMDS and the App Service identity endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManagedIdentityRegistration {
    pub client_id: String,
    pub object_id: String,
    pub msi_res_id: String,
    /// Expected `X-IDENTITY-HEADER` on the App Service endpoint.
    pub identity_header: String,
}

impl Default for ManagedIdentityRegistration {
    fn default() -> Self {
        ManagedIdentityRegistration {
            client_id: DEFAULT_MI_CLIENT_ID.to_string(),
            object_id: DEFAULT_MI_OBJECT_ID.to_string(),
            msi_res_id: DEFAULT_MI_RES_ID.to_string(),
            identity_header: DEFAULT_IDENTITY_HEADER.to_string(),
        }
    }
}

/// Which part of the stand-in a request reached.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum EndpointKind {
    /// `/{tenant}/oauth2/v2.0/token` (and `/{tenant}/oauth2/token`).
    Token,
    /// `/{tenant}/discovery/v2.0/keys`, `/{tenant}/discovery/keys`, OpenID configuration.
    Jwks,
    /// `/metadata/...` (IMDS).
    Imds,
    /// `/msi/token` (App Service / Container Apps identity endpoint).
    AppServiceIdentity,
    /// `/contentsafety/...` (Azure AI Content Safety).
    ContentSafety,
    /// Everything else (Azure OpenAI / Foundry paths and unknown paths).
    DataPlane,
}

/// A fault injected into answers of one [`EndpointKind`].
#[derive(Clone, Debug)]
pub enum Fault {
    /// Wait, then answer normally.
    Delay(Duration),
    /// Answer this status and body (content-type application/json) instead.
    Status { status: u16, body: String },
    /// An Azure / Entra style 429 with `retry-after` (data plane: also `retry-after-ms`).
    RateLimited { retry_after_secs: u64 },
    /// A data-plane 429 whose `retry-after-ms` is this (and `retry-after` the seconds rounded
    /// up), as Azure OpenAI sends when the wait is not whole seconds.
    RateLimitedMs { retry_after_ms: u64 },
    /// Close the connection without answering.
    DropConnection,
    /// 200 with a body that is not JSON.
    GarbageBody,
    /// Answer normally but drop the connection after `after_chunks` body chunks (SSE events of
    /// a stream; a non-streamed body counts as two halves).
    ResetMidStream { after_chunks: usize },
    /// Answer normally, with these headers added (or replacing the normal ones of that name).
    ExtraHeaders(Vec<(String, String)>),
    /// Wait, then apply the other fault (e.g. a 429 that comes late, so that many requests
    /// are in flight before the first one is answered).
    Delayed(Duration, Box<Fault>),
}

/// A request the stand-in received.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub kind: EndpointKind,
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// Raw query (without `?`), empty if none.
    pub query: String,
    /// Headers in arrival order, names lowercase.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub received_at: Instant,
    /// The status answered (0 if the connection was dropped or no answer was decided yet).
    pub outcome_status: u16,
}

impl RecordedRequest {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// How many times header `name` occurs.
    pub fn header_count(&self, name: &str) -> usize {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .count()
    }

    /// The body as JSON, if it is JSON.
    pub fn body_json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The body as form-urlencoded pairs.
    pub fn form(&self) -> Vec<(String, String)> {
        form_urlencoded::parse(&self.body).into_owned().collect()
    }

    /// The query as pairs.
    pub fn query_pairs(&self) -> Vec<(String, String)> {
        form_urlencoded::parse(self.query.as_bytes())
            .into_owned()
            .collect()
    }

    /// The first form field `name`.
    pub fn form_value(&self, name: &str) -> Option<String> {
        self.form()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }
}

// ---------------------------------------------------------------------------------------------
// Shared state

#[derive(Default)]
struct Recorder {
    list: Vec<RecordedRequest>,
    cleared: usize,
}

#[derive(Default)]
struct FaultSlot {
    queue: VecDeque<(Fault, usize)>,
    sticky: Option<Fault>,
}

/// Per-minute counters behind `x-ratelimit-remaining-*`.
#[derive(Default)]
pub(crate) struct RateWindow {
    pub minute: i64,
    pub tokens: u64,
    pub requests: u64,
}

pub(crate) struct Shared {
    pub cfg: StandInConfig,
    pub keys: Arc<crypto::KeySet>,
    recorder: Mutex<Recorder>,
    faults: Mutex<HashMap<EndpointKind, FaultSlot>>,
    pub window: Mutex<RateWindow>,
    /// Prompts served, for cached-token details (details.rs).
    pub prompt_cache: Mutex<details::PromptCache>,
}

/// Locks, ignoring poisoning (a panicking test thread must not take the stand-in down).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn record(&self, r: RecordedRequest) -> usize {
        let mut rec = lock(&self.recorder);
        let seq = rec.cleared + rec.list.len();
        rec.list.push(r);
        seq
    }

    fn set_outcome(&self, seq: usize, status: u16) {
        let mut rec = lock(&self.recorder);
        if let Some(i) = seq.checked_sub(rec.cleared) {
            if let Some(r) = rec.list.get_mut(i) {
                r.outcome_status = status;
            }
        }
    }

    fn take_fault(&self, kind: EndpointKind) -> Option<Fault> {
        let mut faults = lock(&self.faults);
        let slot = faults.get_mut(&kind)?;
        if let Some((fault, left)) = slot.queue.front_mut() {
            let fault = fault.clone();
            *left -= 1;
            if *left == 0 {
                slot.queue.pop_front();
            }
            return Some(fault);
        }
        slot.sticky.clone()
    }
}

// ---------------------------------------------------------------------------------------------
// Requests and replies (shared by the Entra and data-plane modules)

/// A request as the handlers see it.
pub(crate) struct Ctx {
    pub method: String,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Ctx {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn query(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

pub(crate) enum ReplyBody {
    Full(Vec<u8>),
    /// Server-sent events, one chunk each.
    Events(Vec<String>),
}

/// An answer before it is turned into an HTTP response.
pub(crate) struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: ReplyBody,
    /// Streams: the index of the first event that carries output.
    pub first_output_event: Option<usize>,
}

impl Reply {
    pub fn json(status: u16, v: &serde_json::Value) -> Reply {
        Reply::raw(status, "application/json", v.to_string().into_bytes())
    }

    pub fn raw(status: u16, content_type: &str, body: Vec<u8>) -> Reply {
        Reply {
            status,
            headers: vec![("content-type".into(), content_type.into())],
            body: ReplyBody::Full(body),
            first_output_event: None,
        }
    }

    pub fn events(events: Vec<String>) -> Reply {
        Reply {
            status: 200,
            headers: vec![
                (
                    "content-type".into(),
                    "text/event-stream; charset=utf-8".into(),
                ),
                ("cache-control".into(), "no-cache".into()),
            ],
            body: ReplyBody::Events(events),
            first_output_event: None,
        }
    }

    /// Marks the stream's first event that carries output (delayed by
    /// `StandInConfig::first_token_delay_ms`).
    pub fn with_first_output(mut self, index: usize) -> Reply {
        self.first_output_event = Some(index);
        self
    }

    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Reply {
        self.headers.push((name.to_string(), value.into()));
        self
    }

    /// Replaces the content type.
    pub fn with_content_type(mut self, ct: &str) -> Reply {
        self.headers.retain(|(k, _)| k != "content-type");
        self.headers.push(("content-type".into(), ct.into()));
        self
    }
}

/// Body of the stand-in's responses: whole, or fed chunk by chunk from a task.
enum OutBody {
    Full(Option<Bytes>),
    Channel(mpsc::Receiver<Result<Bytes, io::Error>>),
}

impl http_body::Body for OutBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match self.get_mut() {
            OutBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            OutBody::Channel(rx) => rx.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, OutBody::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            OutBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            OutBody::Full(None) => SizeHint::with_exact(0),
            OutBody::Channel(_) => SizeHint::default(),
        }
    }
}

/// The service's error: makes hyper close the connection without answering.
#[derive(Debug)]
struct DropConnection;

impl fmt::Display for DropConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("connection dropped by the stand-in")
    }
}

impl std::error::Error for DropConnection {}

fn classify(path: &str) -> EndpointKind {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segs.as_slice() {
        ["metadata", ..] => EndpointKind::Imds,
        ["msi", "token"] => EndpointKind::AppServiceIdentity,
        ["contentsafety", ..] => EndpointKind::ContentSafety,
        [_, "oauth2", "v2.0", "token"] | [_, "oauth2", "token"] => EndpointKind::Token,
        [_, "discovery", "v2.0", "keys"]
        | [_, "discovery", "keys"]
        | [_, "v2.0", ".well-known", "openid-configuration"]
        | [_, ".well-known", "openid-configuration"] => EndpointKind::Jwks,
        _ => EndpointKind::DataPlane,
    }
}

fn route(shared: &Shared, kind: EndpointKind, ctx: &Ctx) -> Reply {
    match kind {
        EndpointKind::DataPlane => dataplane::handle(shared, ctx),
        EndpointKind::ContentSafety => contentsafety::handle(shared, ctx),
        _ => entra::handle(shared, kind, ctx),
    }
}

fn garbage() -> Reply {
    Reply::raw(
        200,
        "application/json",
        b"<html><body>stand-in garbage: this is {not JSON".to_vec(),
    )
}

fn rate_limited(shared: &Shared, kind: EndpointKind, ctx: &Ctx, secs: u64) -> Reply {
    match kind {
        EndpointKind::DataPlane | EndpointKind::ContentSafety => dataplane::rate_limited(ctx, secs),
        _ => entra::rate_limited(shared, kind, ctx, secs),
    }
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<OutBody>, DropConnection> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(c) => c.to_bytes(),
        Err(_) => return Err(DropConnection),
    };
    let started = Instant::now();
    let path = parts.uri.path().to_string();
    let raw_query = parts.uri.query().unwrap_or("").to_string();
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let method = parts.method.as_str().to_string();
    let kind = classify(&path);
    let seq = shared.record(RecordedRequest {
        kind,
        method: method.clone(),
        path: path.clone(),
        query: raw_query.clone(),
        headers: headers.clone(),
        body: body.to_vec(),
        received_at: started,
        outcome_status: 0,
    });
    let ctx = Ctx {
        method,
        path,
        query: form_urlencoded::parse(raw_query.as_bytes())
            .into_owned()
            .collect(),
        headers,
        body,
    };
    let mut reset_after = None;
    let mut fault = shared.take_fault(kind);
    while let Some(Fault::Delayed(d, then)) = fault {
        tokio::time::sleep(d).await;
        fault = Some(*then);
    }
    let reply = match fault {
        None => Some(route(&shared, kind, &ctx)),
        Some(Fault::Delay(d)) => {
            tokio::time::sleep(d).await;
            Some(route(&shared, kind, &ctx))
        }
        Some(Fault::Status { status, body }) => {
            let mut r = Reply::raw(status, "application/json", body.into_bytes());
            if kind == EndpointKind::DataPlane {
                if let Some(code) = dataplane::error_code_of(&r) {
                    r = r.with_header("x-ms-error-code", code);
                }
            }
            Some(r)
        }
        Some(Fault::RateLimited { retry_after_secs }) => {
            Some(rate_limited(&shared, kind, &ctx, retry_after_secs))
        }
        Some(Fault::RateLimitedMs { retry_after_ms }) => {
            let mut r = rate_limited(&shared, kind, &ctx, retry_after_ms.div_ceil(1000));
            r.headers
                .retain(|(n, _)| !n.eq_ignore_ascii_case("retry-after-ms"));
            r.headers
                .push(("retry-after-ms".into(), retry_after_ms.to_string()));
            Some(r)
        }
        Some(Fault::DropConnection) => None,
        Some(Fault::GarbageBody) => Some(garbage()),
        Some(Fault::ResetMidStream { after_chunks }) => {
            reset_after = Some(after_chunks);
            Some(route(&shared, kind, &ctx))
        }
        Some(Fault::ExtraHeaders(extra)) => {
            let mut r = route(&shared, kind, &ctx);
            for (name, value) in extra {
                r.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(&name));
                r.headers.push((name, value));
            }
            Some(r)
        }
        Some(Fault::Delayed(..)) => Some(route(&shared, kind, &ctx)),
    };
    let log = |status: u16, note: &str| {
        if shared.cfg.log_requests {
            eprintln!(
                "azure-standin: {} {} -> {} ({:?}{}, {} ms)",
                ctx.method,
                ctx.path,
                status,
                kind,
                note,
                started.elapsed().as_millis()
            );
        }
    };
    let Some(reply) = reply else {
        log(0, ", connection dropped");
        return Err(DropConnection);
    };
    let reply = gzip_if_asked(reply, &ctx, kind);
    shared.set_outcome(seq, reply.status);
    log(
        reply.status,
        if reset_after.is_some() {
            ", reset mid-stream"
        } else {
            ""
        },
    );
    Ok(into_response(
        reply,
        reset_after,
        Delays {
            first: Duration::from_millis(shared.cfg.first_chunk_delay_ms),
            first_token: Duration::from_millis(shared.cfg.first_token_delay_ms),
            between: Duration::from_millis(shared.cfg.chunk_delay_ms),
            end: Duration::from_millis(shared.cfg.end_of_body_delay_ms),
        },
    ))
}

/// Data-plane answers are gzip-compressed (`content-encoding: gzip`) when the request accepts
/// it, as Azure's front door does: whatever reads usage from them must not be handed them.
fn gzip_if_asked(mut reply: Reply, ctx: &Ctx, kind: EndpointKind) -> Reply {
    use std::io::Write as _;
    let accepts = ctx
        .headers_named("accept-encoding")
        .iter()
        .any(|v| v.to_ascii_lowercase().contains("gzip"));
    if kind != EndpointKind::DataPlane || !accepts {
        return reply;
    }
    let ReplyBody::Full(body) = &reply.body else {
        return reply;
    };
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    if enc.write_all(body).is_err() {
        return reply;
    }
    let Ok(zipped) = enc.finish() else {
        return reply;
    };
    reply.body = ReplyBody::Full(zipped);
    reply.with_header("content-encoding", "gzip")
}

/// The pauses of a streamed answer.
struct Delays {
    first: Duration,
    /// Before the event `Reply::first_output_event`, instead of `between`.
    first_token: Duration,
    between: Duration,
    end: Duration,
}

fn into_response(reply: Reply, reset_after: Option<usize>, delays: Delays) -> Response<OutBody> {
    let Delays {
        first: first_delay,
        first_token,
        between: delay,
        end: end_delay,
    } = delays;
    let first_output = reply.first_output_event;
    let mut builder = Response::builder().status(reply.status);
    for (k, v) in &reply.headers {
        builder = builder.header(k.as_str(), v.as_str());
    }
    let body = match (reply.body, reset_after) {
        (ReplyBody::Full(b), None) => OutBody::Full(Some(Bytes::from(b))),
        (body, _) => {
            let streamed = matches!(body, ReplyBody::Events(_));
            let chunks: Vec<Bytes> = match body {
                ReplyBody::Full(b) => {
                    let mid = b.len() / 2;
                    vec![
                        Bytes::copy_from_slice(&b[..mid]),
                        Bytes::copy_from_slice(&b[mid..]),
                    ]
                }
                ReplyBody::Events(e) => e.into_iter().map(Bytes::from).collect(),
            };
            let (tx, rx) = mpsc::channel(4);
            tokio::spawn(async move {
                for (i, chunk) in chunks.into_iter().enumerate() {
                    if reset_after.is_some_and(|n| i >= n) {
                        break;
                    }
                    if i == 0 && !first_delay.is_zero() {
                        tokio::time::sleep(first_delay).await;
                    }
                    if first_output == Some(i) && !first_token.is_zero() {
                        tokio::time::sleep(first_token).await;
                    } else if i > 0 && !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    if tx.send(Ok(chunk)).await.is_err() {
                        return;
                    }
                }
                if streamed && reset_after.is_none() && !end_delay.is_zero() {
                    tokio::time::sleep(end_delay).await;
                }
                if reset_after.is_some() {
                    // Let hyper flush what was sent, then make it abort the connection.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let _ = tx
                        .send(Err(io::Error::new(
                            io::ErrorKind::ConnectionReset,
                            "stand-in fault: reset mid-stream",
                        )))
                        .await;
                }
            });
            OutBody::Channel(rx)
        }
    };
    builder.body(body).unwrap_or_else(|_| {
        let mut r = Response::new(OutBody::Full(Some(Bytes::from_static(
            b"{\"error\":{\"code\":\"500\",\"message\":\"stand-in: invalid response header\"}}",
        ))));
        *r.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
        r
    })
}

// ---------------------------------------------------------------------------------------------
// The server

/// A running stand-in. Dropping it stops the server (and frees the port).
pub struct StandIn {
    shared: Arc<Shared>,
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StandIn {
    /// Starts on 127.0.0.1 with a free port.
    pub async fn start(cfg: StandInConfig) -> io::Result<StandIn> {
        StandIn::start_blocking(SocketAddr::from(([127, 0, 0, 1], 0)), cfg)
    }

    /// Starts on `addr`.
    pub async fn start_on(addr: SocketAddr, cfg: StandInConfig) -> io::Result<StandIn> {
        StandIn::start_blocking(addr, cfg)
    }

    /// Starts a second stand-in (e.g. another Azure resource or tenant) whose Entra signs with
    /// and whose data plane trusts the same key as `other` (`cfg.signing_key` is ignored).
    pub async fn start_sharing_keys(other: &StandIn, cfg: StandInConfig) -> io::Result<StandIn> {
        StandIn::spawn(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            cfg,
            other.shared.keys.clone(),
        )
    }

    /// Like [`StandIn::start_on`], for code without an async runtime.
    pub fn start_blocking(addr: SocketAddr, cfg: StandInConfig) -> io::Result<StandIn> {
        let keys = crypto::KeySet::builtin(cfg.signing_key == EntraKey::Secondary)
            .map_err(io::Error::other)?;
        StandIn::spawn(addr, cfg, Arc::new(keys))
    }

    fn spawn(
        addr: SocketAddr,
        cfg: StandInConfig,
        keys: Arc<crypto::KeySet>,
    ) -> io::Result<StandIn> {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            cfg,
            keys,
            recorder: Mutex::new(Recorder::default()),
            faults: Mutex::new(HashMap::new()),
            window: Mutex::new(RateWindow::default()),
            prompt_cache: Mutex::new(details::PromptCache::default()),
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("azure-standin")
            .enable_all()
            .build()?;
        let (tx, rx) = oneshot::channel::<()>();
        let server_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("azure-standin-{}", addr.port()))
            .spawn(move || {
                runtime.block_on(serve(listener, server_shared, rx));
                runtime.shutdown_timeout(Duration::from_secs(1));
            })?;
        Ok(StandIn {
            shared,
            addr,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:{port}`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn config(&self) -> &StandInConfig {
        &self.shared.cfg
    }

    /// Everything received since the start (or the last [`StandIn::clear_requests`]), in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.recorder).list.clone()
    }

    pub fn requests_of(&self, kind: EndpointKind) -> Vec<RecordedRequest> {
        lock(&self.shared.recorder)
            .list
            .iter()
            .filter(|r| r.kind == kind)
            .cloned()
            .collect()
    }

    pub fn count(&self, kind: EndpointKind) -> usize {
        lock(&self.shared.recorder)
            .list
            .iter()
            .filter(|r| r.kind == kind)
            .count()
    }

    pub fn clear_requests(&self) {
        let mut rec = lock(&self.shared.recorder);
        rec.cleared += rec.list.len();
        rec.list.clear();
    }

    /// Applies `fault` to the next `times` requests of `kind` (queued faults run in FIFO order
    /// and before any sticky fault).
    pub fn push_fault(&self, kind: EndpointKind, fault: Fault, times: usize) {
        if times == 0 {
            return;
        }
        lock(&self.shared.faults)
            .entry(kind)
            .or_default()
            .queue
            .push_back((fault, times));
    }

    /// Sets (Some) or clears (None) a fault applied to every request of `kind`.
    pub fn set_fault(&self, kind: EndpointKind, fault: Option<Fault>) {
        lock(&self.shared.faults).entry(kind).or_default().sticky = fault;
    }

    /// Drops every queued and sticky fault.
    pub fn clear_faults(&self) {
        lock(&self.shared.faults).clear();
    }

    /// The claims of an access token the token endpoint would issue to `client_id` for the
    /// accepted audience (to tweak and sign with [`StandIn::sign_token`]).
    pub fn access_token_claims(&self, client_id: &str, lifetime_secs: u64) -> serde_json::Value {
        entra::app_token_claims(
            &self.shared,
            &self.shared.cfg.accepted_audience,
            client_id,
            &entra::service_principal_oid(client_id),
            "1",
            lifetime_secs,
            None,
        )
    }

    /// A valid access token like the token endpoint issues (v1, audience `accepted_audience`).
    pub fn issue_access_token(&self, client_id: &str, lifetime_secs: u64) -> String {
        self.sign_token(self.access_token_claims(client_id, lifetime_secs))
    }

    /// Signs `claims` RS256 with the stand-in's Entra key (header `typ`, `alg`, `kid`, `x5t`).
    pub fn sign_token(&self, claims: serde_json::Value) -> String {
        let k = &self.shared.keys.signing;
        k.sign_rs256_as(&k.kid, &claims)
    }

    /// Signs `claims` RS256 with an unrelated TEST-ONLY key while naming the stand-in's `kid`:
    /// a token only a signature check can refuse.
    pub fn sign_token_with_foreign_key(&self, claims: serde_json::Value) -> String {
        let kid = &self.shared.keys.signing.kid;
        self.shared.keys.foreign.sign_rs256_as(kid, &claims)
    }

    /// Verifies `token` exactly like the data plane does (signature by this stand-in's Entra
    /// key, issuer, audience, lifetime with 5 minutes of skew). Err = the reason.
    pub fn verify_access_token(&self, token: &str) -> Result<(), String> {
        dataplane::verify_access_token(&self.shared, token).map_err(str::to_string)
    }

    /// The `kid` (and `x5t`) of the signing key.
    pub fn kid(&self) -> String {
        self.shared.keys.signing.kid.clone()
    }

    /// `{"keys":[...]}` as `/{tenant}/discovery/v2.0/keys` serves it.
    pub fn jwks_json(&self) -> serde_json::Value {
        entra::jwks(&self.shared, Some(&self.shared.cfg.tenant_id))
    }

    pub fn tenant_id(&self) -> String {
        self.shared.cfg.tenant_id.clone()
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    mut stop: oneshot::Receiver<()>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("azure-standin: cannot serve: {e}");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    let _ = stream.set_nodelay(true);
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |req| handle(shared.clone(), req));
                        let _ = hyper::server::conn::http1::Builder::new()
                            .keep_alive(true)
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                            .await;
                    });
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            },
        }
    }
}
