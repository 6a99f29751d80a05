//! `kuadrant.service.ratelimit.v1.RateLimitService` (Limitador's `kuadrantrls.proto`): the
//! routing tonic generates for a service, written out for its two unary methods, which take
//! and return the Envoy RLS messages.

use crate::{Op, Shared, KUADRANT_SERVICE};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::codegen::{http, Body, BoxFuture, Service, StdError};

#[derive(Clone)]
pub(crate) struct KuadrantServer {
    shared: Arc<Shared>,
}

impl KuadrantServer {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        KuadrantServer { shared }
    }
}

struct Unary {
    shared: Arc<Shared>,
    op: Op,
}

impl tonic::server::UnaryService<RateLimitRequest> for Unary {
    type Response = RateLimitResponse;
    type Future = BoxFuture<tonic::Response<RateLimitResponse>, tonic::Status>;

    fn call(&mut self, request: tonic::Request<RateLimitRequest>) -> Self::Future {
        let shared = self.shared.clone();
        let op = self.op;
        Box::pin(async move {
            shared
                .handle(op, request.into_inner())
                .await
                .map(tonic::Response::new)
        })
    }
}

impl<B> Service<http::Request<B>> for KuadrantServer
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let op = match req.uri().path() {
            "/kuadrant.service.ratelimit.v1.RateLimitService/CheckRateLimit" => Some(Op::Check),
            "/kuadrant.service.ratelimit.v1.RateLimitService/Report" => Some(Op::Report),
            _ => None,
        };
        let shared = self.shared.clone();
        Box::pin(async move {
            match op {
                Some(op) => {
                    let codec = tonic_prost::ProstCodec::default();
                    let mut grpc = tonic::server::Grpc::new(codec);
                    Ok(grpc.unary(Unary { shared, op }, req).await)
                }
                None => Ok(tonic::Status::unimplemented("no such method").into_http()),
            }
        })
    }
}

impl tonic::server::NamedService for KuadrantServer {
    const NAME: &'static str = KUADRANT_SERVICE;
}
