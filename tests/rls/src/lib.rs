//! azure-rls: a rate limit service for the tests of the filter's global mode.
//!
//! It answers, over gRPC (HTTP/2, plaintext, loopback), the two services Limitador's server
//! answers, with the same messages (`envoy.service.ratelimit.v3.RateLimitRequest` /
//! `RateLimitResponse`, from the official protos in the `envoy-types` crate):
//!
//! - `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`: check and add `hits_addend`
//!   all or nothing (`check_rate_limited_and_update`);
//! - `kuadrant.service.ratelimit.v1.RateLimitService/CheckRateLimit`: check `1` more, add nothing
//!   (`is_rate_limited`), and `/Report`: add `hits_addend` unconditionally (`update_counters`).
//!
//! Each handler does what limitador-server's does (`hits_addend` 0 counts as 1, an empty
//! domain answers UNKNOWN, a storage error answers gRPC UNAVAILABLE, no descriptor statuses),
//! on the `limitador` crate's own rate limiter: limits, CEL conditions and variables, counters
//! and their check/update rules are Limitador's code, not a copy. Counters are in memory (the
//! crate's `InMemoryStorage`, [`Storage::Memory`]: one `RlsServer` is the point of sharing), or
//! in Redis ([`Storage::Redis`]: several `RlsServer`s on one Redis are replicas of one
//! Limitador deployment). The Redis counters are ours (`redis_storage.rs`, an implementation of
//! Limitador's `AsyncCounterStorage`), because limitador 0.11–0.14 compiles its own Redis
//! storage only together with RocksDB.
//!
//! [`Flavor::EnvoyRatelimit`] answers `ShouldRateLimit` the way envoyproxy/ratelimit counts
//! (add first, then compare: an over-limit call is counted too), for the filter's `envoy`
//! protocol.
//!
//! The server runs on its own thread and Tokio runtime; dropping [`RlsServer`] stops it.
//! [`RedisServer`] starts a throwaway `redis-server` (Debian package; `make tools`).

mod kuadrant;
mod redis_server;
pub mod redis_storage;

pub use redis_server::RedisServer;

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::{
    RateLimitService, RateLimitServiceServer,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use limitador::limit::{Context, Expression, Limit, Namespace, Predicate};
use limitador::RateLimiter;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::oneshot;
use tonic::{Request, Response, Status};

/// The gRPC names (also in the filter's `src/rls.rs`).
pub const ENVOY_SERVICE: &str = "envoy.service.ratelimit.v3.RateLimitService";
pub const KUADRANT_SERVICE: &str = "kuadrant.service.ratelimit.v1.RateLimitService";

/// One limit, in the fields of limitador-server's limits file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitSpec {
    /// The RLS domain the limit belongs to.
    pub namespace: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub max_value: u64,
    pub seconds: u64,
    /// CEL predicates over `descriptors` (all must hold), e.g. `descriptors[0].model == 'gpt-4o'`.
    #[serde(default)]
    pub conditions: Vec<String>,
    /// CEL expressions: one counter per distinct value, e.g. `descriptors[0].workload`.
    #[serde(default)]
    pub variables: Vec<String>,
}

impl LimitSpec {
    /// `max` tokens per `seconds` for each workload (its own counter each).
    pub fn per_workload(domain: &str, max: u64, seconds: u64) -> LimitSpec {
        LimitSpec {
            namespace: domain.to_string(),
            name: Some(format!("per-workload-{max}-per-{seconds}s")),
            max_value: max,
            seconds,
            conditions: Vec::new(),
            variables: vec!["descriptors[0].workload".to_string()],
        }
    }

    /// `max` tokens per `seconds` for each workload, counting requests for `model` only.
    pub fn per_workload_model(domain: &str, model: &str, max: u64, seconds: u64) -> LimitSpec {
        LimitSpec {
            namespace: domain.to_string(),
            name: Some(format!("per-workload-{model}-{max}-per-{seconds}s")),
            max_value: max,
            seconds,
            conditions: vec![format!("descriptors[0].model == {}", cel_string(model))],
            variables: vec!["descriptors[0].workload".to_string()],
        }
    }

    /// `max` tokens per `seconds` for one named workload.
    pub fn for_workload(domain: &str, workload: &str, max: u64, seconds: u64) -> LimitSpec {
        LimitSpec {
            namespace: domain.to_string(),
            name: Some(format!("{workload}-{max}-per-{seconds}s")),
            max_value: max,
            seconds,
            conditions: vec![format!(
                "descriptors[0].workload == {}",
                cel_string(workload)
            )],
            variables: Vec::new(),
        }
    }

    pub fn to_limit(&self) -> Result<Limit, String> {
        let conditions = self
            .conditions
            .iter()
            .map(|c| Predicate::parse(c).map_err(|e| format!("condition `{c}`: {e:?}")))
            .collect::<Result<Vec<_>, _>>()?;
        let variables = self
            .variables
            .iter()
            .map(|v| Expression::parse(v).map_err(|e| format!("variable `{v}`: {e:?}")))
            .collect::<Result<Vec<_>, _>>()?;
        let mut limit = Limit::new(
            self.namespace.as_str(),
            self.max_value,
            self.seconds,
            conditions,
            variables,
        );
        if let Some(name) = &self.name {
            limit.set_name(name.clone());
        }
        Ok(limit)
    }
}

/// A CEL string literal.
fn cel_string(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Where counters live.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Storage {
    /// Limitador's `InMemoryStorage` (exact; shared by everything that calls this server).
    #[default]
    Memory,
    /// Counters in Redis at this URL (`redis://127.0.0.1:port`), see `redis_storage.rs`.
    Redis(String),
}

/// How `ShouldRateLimit` counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Flavor {
    /// As limitador-server: a call that would exceed a limit is refused and adds nothing.
    #[default]
    Limitador,
    /// As envoyproxy/ratelimit: add, then compare (a refused call is counted too).
    EnvoyRatelimit,
}

#[derive(Debug, Clone)]
pub struct RlsOptions {
    pub limits: Vec<LimitSpec>,
    pub storage: Storage,
    pub flavor: Flavor,
    /// Where to listen; port 0 picks a free one.
    pub addr: SocketAddr,
}

impl RlsOptions {
    pub fn new(limits: Vec<LimitSpec>) -> RlsOptions {
        RlsOptions {
            limits,
            storage: Storage::Memory,
            flavor: Flavor::Limitador,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        }
    }
}

/// One call the server answered (or refused with a gRPC error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedCall {
    /// `ShouldRateLimit`, `CheckRateLimit` or `Report`.
    pub method: &'static str,
    pub domain: String,
    pub descriptors: Vec<Vec<(String, String)>>,
    pub hits_addend: u32,
    /// The answer: `Some(OK | OVER_LIMIT | UNKNOWN)`, `None` for a gRPC error.
    pub code: Option<Code>,
}

/// A counter's state (see [`RlsServer::counters`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterState {
    pub limit_name: Option<String>,
    pub max_value: u64,
    /// The values of the limit's variables, e.g. `descriptors[0].workload` -> `team-a`.
    pub variables: BTreeMap<String, String>,
    pub remaining: Option<u64>,
    pub expires_in: Option<Duration>,
}

enum Limiter {
    Blocking(RateLimiter),
    Async(limitador::AsyncRateLimiter),
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Should,
    Check,
    Report,
}

impl Op {
    fn method(self) -> &'static str {
        match self {
            Op::Should => "ShouldRateLimit",
            Op::Check => "CheckRateLimit",
            Op::Report => "Report",
        }
    }
}

pub(crate) struct Shared {
    limiter: Limiter,
    flavor: Flavor,
    calls: Mutex<Vec<RecordedCall>>,
    unavailable: AtomicBool,
    delay_ms: AtomicU64,
}

type LimitResult = Result<limitador::CheckResult, limitador::errors::LimitadorError>;

impl Shared {
    fn blocking<T>(
        &self,
        f: impl FnOnce(&RateLimiter) -> Result<T, limitador::errors::LimitadorError>,
        limiter: &RateLimiter,
    ) -> Result<T, Status> {
        // Limitador panics on some CEL evaluation errors (e.g. `descriptors[1]` of a request
        // with one descriptor): answer INTERNAL instead of killing the connection.
        match std::panic::catch_unwind(AssertUnwindSafe(|| f(limiter))) {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(Status::unavailable(format!("limitador: {e}"))),
            Err(_) => Err(Status::internal("limitador panicked evaluating the limits")),
        }
    }

    async fn is_rate_limited(
        &self,
        ns: &Namespace,
        ctx: &Context<'_>,
        delta: u64,
    ) -> Result<limitador::CheckResult, Status> {
        match &self.limiter {
            Limiter::Blocking(l) => self.blocking(|l| l.is_rate_limited(ns, ctx, delta), l),
            Limiter::Async(l) => redis_call(l.is_rate_limited(ns, ctx, delta)).await,
        }
    }

    async fn update_counters(
        &self,
        ns: &Namespace,
        ctx: &Context<'_>,
        delta: u64,
    ) -> Result<(), Status> {
        match &self.limiter {
            Limiter::Blocking(l) => self.blocking(|l| l.update_counters(ns, ctx, delta), l),
            Limiter::Async(l) => redis_call(l.update_counters(ns, ctx, delta)).await,
        }
    }

    async fn check_and_update(
        &self,
        ns: &Namespace,
        ctx: &Context<'_>,
        delta: u64,
    ) -> Result<limitador::CheckResult, Status> {
        match &self.limiter {
            Limiter::Blocking(l) => self.blocking(
                |l| -> LimitResult { l.check_rate_limited_and_update(ns, ctx, delta) },
                l,
            ),
            Limiter::Async(l) => redis_call(l.check_rate_limited_and_update(ns, ctx, delta)).await,
        }
    }

    /// What limitador-server's handlers do.
    pub(crate) async fn handle(
        &self,
        op: Op,
        req: RateLimitRequest,
    ) -> Result<RateLimitResponse, Status> {
        let descriptors: Vec<Vec<(String, String)>> = req
            .descriptors
            .iter()
            .map(|d: &RateLimitDescriptor| {
                d.entries
                    .iter()
                    .map(|e| (e.key.clone(), e.value.clone()))
                    .collect()
            })
            .collect();
        let result = self.decide(op, &req, &descriptors).await;
        self.calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(RecordedCall {
                method: op.method(),
                domain: req.domain.clone(),
                descriptors,
                hits_addend: req.hits_addend,
                code: result.as_ref().ok().map(|r| r.overall_code()),
            });
        result
    }

    async fn decide(
        &self,
        op: Op,
        req: &RateLimitRequest,
        descriptors: &[Vec<(String, String)>],
    ) -> Result<RateLimitResponse, Status> {
        let delay = self.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if self.unavailable.load(Ordering::SeqCst) {
            return Err(Status::unavailable("Service unavailable"));
        }
        if req.domain.is_empty() {
            return Ok(answer(Code::Unknown));
        }
        let ns = Namespace::from(req.domain.as_str());
        let values: Vec<HashMap<String, String>> = descriptors
            .iter()
            .map(|d| d.iter().cloned().collect())
            .collect();
        let mut ctx = Context::default();
        ctx.list_binding("descriptors".to_string(), values);
        // "hits_addend is optional according to the spec, and should default to 1".
        let hits = u64::from(req.hits_addend.max(1));
        let limited = match (op, self.flavor) {
            (Op::Check, _) => self.is_rate_limited(&ns, &ctx, 1).await?.limited,
            (Op::Report, _) => {
                self.update_counters(&ns, &ctx, hits).await?;
                false
            }
            (Op::Should, Flavor::Limitador) => {
                self.check_and_update(&ns, &ctx, hits).await?.limited
            }
            (Op::Should, Flavor::EnvoyRatelimit) => {
                self.update_counters(&ns, &ctx, hits).await?;
                self.is_rate_limited(&ns, &ctx, 0).await?.limited
            }
        };
        Ok(answer(if limited { Code::OverLimit } else { Code::Ok }))
    }
}

fn answer(code: Code) -> RateLimitResponse {
    RateLimitResponse {
        overall_code: code.into(),
        ..RateLimitResponse::default()
    }
}

#[derive(Clone)]
struct EnvoyService(Arc<Shared>);

#[tonic::async_trait]
impl RateLimitService for EnvoyService {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        self.0
            .handle(Op::Should, request.into_inner())
            .await
            .map(Response::new)
    }
}

/// Runs one Limitador call on the Redis counters; a Redis failure during it answers gRPC
/// UNAVAILABLE (see `redis_storage::REDIS_FAILED`).
async fn redis_call<T>(
    call: impl std::future::Future<Output = Result<T, limitador::errors::LimitadorError>>,
) -> Result<T, Status> {
    let (result, redis_failed) = redis_storage::REDIS_FAILED
        .scope(std::cell::Cell::new(false), async {
            let r = call.await;
            (r, redis_storage::REDIS_FAILED.with(std::cell::Cell::get))
        })
        .await;
    if redis_failed {
        return Err(Status::unavailable(
            "limitador: counter storage (redis) failed",
        ));
    }
    result.map_err(|e| Status::unavailable(format!("limitador: {e}")))
}

/// A running rate limit service; stopped on drop.
pub struct RlsServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    runtime: tokio::runtime::Handle,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl RlsServer {
    /// Limitador with in-memory counters on 127.0.0.1:<free port>.
    pub async fn start(limits: Vec<LimitSpec>) -> io::Result<RlsServer> {
        RlsServer::start_blocking(RlsOptions::new(limits))
    }

    /// Limitador with its counters in Redis (a replica: start several on one Redis).
    pub async fn start_redis(redis_url: &str, limits: Vec<LimitSpec>) -> io::Result<RlsServer> {
        let mut o = RlsOptions::new(limits);
        o.storage = Storage::Redis(redis_url.to_string());
        RlsServer::start_blocking(o)
    }

    pub async fn start_with(opts: RlsOptions) -> io::Result<RlsServer> {
        RlsServer::start_blocking(opts)
    }

    /// Like [`RlsServer::start_with`], for code without an async runtime.
    pub fn start_blocking(opts: RlsOptions) -> io::Result<RlsServer> {
        let limits = opts
            .limits
            .iter()
            .map(LimitSpec::to_limit)
            .collect::<Result<Vec<_>, _>>()
            .map_err(io::Error::other)?;
        let listener = std::net::TcpListener::bind(opts.addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("azure-rls")
            .enable_all()
            .build()?;
        let limiter = match &opts.storage {
            Storage::Memory => {
                let l = RateLimiter::new(10_000);
                for limit in limits {
                    l.add_limit(limit);
                }
                Limiter::Blocking(l)
            }
            Storage::Redis(url) => {
                // On a thread of its own: this may be called from inside another runtime. The
                // connection's driver task lives on the server's runtime.
                let storage = std::thread::scope(|s| {
                    s.spawn(|| runtime.block_on(redis_storage::RedisCounters::connect(url)))
                        .join()
                })
                .map_err(|_| io::Error::other("redis connect panicked"))?
                .map_err(|e| io::Error::other(format!("redis {url}: {e}")))?;
                let l = limitador::AsyncRateLimiter::new_with_storage(Box::new(storage));
                for limit in limits {
                    l.add_limit(limit);
                }
                Limiter::Async(l)
            }
        };
        let shared = Arc::new(Shared {
            limiter,
            flavor: opts.flavor,
            calls: Mutex::new(Vec::new()),
            unavailable: AtomicBool::new(false),
            delay_ms: AtomicU64::new(0),
        });
        let (tx, rx) = oneshot::channel::<()>();
        let handle = runtime.handle().clone();
        let envoy = RateLimitServiceServer::from_arc(Arc::new(EnvoyService(shared.clone())));
        let kuadrant = kuadrant::KuadrantServer::new(shared.clone());
        let thread = std::thread::Builder::new()
            .name("azure-rls".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            eprintln!("azure-rls: listener: {e}");
                            return;
                        }
                    };
                    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
                    let server = tonic::transport::Server::builder()
                        .add_service(envoy)
                        .add_service(kuadrant)
                        .serve_with_incoming(incoming);
                    // No graceful shutdown: clients (Envoy) keep their HTTP/2 connections open,
                    // and a drop must not wait for them. Shutting the runtime down below ends
                    // the connection tasks.
                    tokio::select! {
                        served = server => {
                            if let Err(e) = served {
                                eprintln!("azure-rls: server stopped: {e}");
                            }
                        }
                        _ = rx => {}
                    }
                });
                runtime.shutdown_timeout(Duration::from_millis(200));
            })?;
        Ok(RlsServer {
            addr,
            shared,
            runtime: handle,
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

    /// `http://127.0.0.1:{port}` (for gRPC clients).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every call answered so far, oldest first.
    pub fn calls(&self) -> Vec<RecordedCall> {
        self.shared
            .calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn clear_calls(&self) {
        self.shared
            .calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// While set, every call answers gRPC UNAVAILABLE (as Limitador does when its storage fails).
    pub fn set_unavailable(&self, on: bool) {
        self.shared.unavailable.store(on, Ordering::SeqCst);
    }

    /// Answers every call this much later (to exceed the filter's timeout).
    pub fn set_delay(&self, delay: Duration) {
        self.shared
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// The counters of `domain` that have been hit in their current window.
    pub async fn counters(&self, domain: &str) -> Vec<CounterState> {
        let shared = self.shared.clone();
        let ns = Namespace::from(domain);
        let task = self.runtime.spawn(async move {
            let counters = match &shared.limiter {
                Limiter::Blocking(l) => l.get_counters(&ns),
                Limiter::Async(l) => l.get_counters(&ns).await,
            };
            counters
                .map(|set| {
                    set.into_iter()
                        .map(|c| CounterState {
                            limit_name: c.limit().name().map(str::to_string),
                            max_value: c.max_value(),
                            variables: c
                                .set_variables()
                                .iter()
                                .map(|(k, v)| (k.clone(), v.clone()))
                                .collect(),
                            remaining: c.remaining(),
                            expires_in: c.expires_in(),
                        })
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        });
        task.await.unwrap_or_default()
    }

    /// Tokens used in the current window of the counter of `limit_name` whose variables
    /// include `value` (e.g. the workload), if it was hit.
    pub async fn used(&self, domain: &str, limit_name: &str, value: &str) -> Option<u64> {
        self.counters(domain).await.into_iter().find_map(|c| {
            (c.limit_name.as_deref() == Some(limit_name)
                && (c.variables.is_empty() || c.variables.values().any(|v| v == value)))
            .then(|| c.max_value - c.remaining.unwrap_or(c.max_value).min(c.max_value))
        })
    }
}

impl Drop for RlsServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
