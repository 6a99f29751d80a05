//! `opentelemetry.proto.collector.trace.v1.TraceService/Export`, declared by hand: the
//! messages are the fields of the official protos (opentelemetry/proto/trace/v1/trace.proto)
//! that the tests read, with their field numbers (prost skips the others), and the service is
//! what tonic's code generator would write for one unary method.

use crate::{flatten, hex, kind, ReceivedSpan, Shared};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use std::sync::Arc;
use tonic::codegen::{http, Body, BoxFuture, Context, Poll, Service, StdError};

#[derive(Clone, PartialEq, prost::Message)]
pub struct ExportTraceServiceRequest {
    #[prost(message, repeated, tag = "1")]
    pub resource_spans: Vec<ResourceSpans>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ResourceSpans {
    #[prost(message, repeated, tag = "2")]
    pub scope_spans: Vec<ScopeSpans>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ScopeSpans {
    #[prost(message, repeated, tag = "2")]
    pub spans: Vec<Span>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Span {
    #[prost(bytes = "vec", tag = "1")]
    pub trace_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub span_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "4")]
    pub parent_span_id: Vec<u8>,
    #[prost(string, tag = "5")]
    pub name: String,
    #[prost(message, repeated, tag = "9")]
    pub attributes: Vec<KeyValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ExportTraceServiceResponse {}

const EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

#[derive(Clone)]
pub(crate) struct TraceServer(pub(crate) Arc<Shared>);

impl tonic::server::NamedService for TraceServer {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
}

struct Export(Arc<Shared>);

impl tonic::server::UnaryService<ExportTraceServiceRequest> for Export {
    type Response = ExportTraceServiceResponse;
    type Future = BoxFuture<tonic::Response<Self::Response>, tonic::Status>;

    fn call(&mut self, request: tonic::Request<ExportTraceServiceRequest>) -> Self::Future {
        let shared = self.0.clone();
        Box::pin(async move {
            let mut received = Vec::new();
            for rs in request.into_inner().resource_spans {
                for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                    received.push(ReceivedSpan {
                        name: span.name.clone(),
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_span_id: hex(&span.parent_span_id),
                        attributes: flatten(&span.attributes),
                        kinds: span
                            .attributes
                            .iter()
                            .map(|kv| (kv.key.clone(), kind(&kv.value)))
                            .collect(),
                    });
                }
            }
            shared
                .spans
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(received);
            Ok(tonic::Response::new(ExportTraceServiceResponse {}))
        })
    }
}

impl<B> Service<http::Request<B>> for TraceServer
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
        let shared = self.0.clone();
        if req.uri().path() != EXPORT {
            return Box::pin(async move {
                Ok(tonic::Status::unimplemented("azure-otlp: unknown method").into_http())
            });
        }
        Box::pin(async move {
            let codec = tonic_prost::ProstCodec::<
                ExportTraceServiceResponse,
                ExportTraceServiceRequest,
            >::default();
            let mut grpc = tonic::server::Grpc::new(codec);
            Ok(grpc.unary(Export(shared), req).await)
        })
    }
}
