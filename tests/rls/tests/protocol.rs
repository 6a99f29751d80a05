//! The filter's RLS codec (`azure_llm_filter::rls`) against the official protos (prost code of
//! `envoy-types`) and against a live Limitador-backed RLS over gRPC: the bytes the filter would
//! hand to `dispatch_grpc_call` are sent as they are (raw codec), and the answer's bytes are
//! decoded by the filter's decoder.

use azure_llm_filter::rls::{
    self, charge_call, check_call, check_outcome, decode_should_rate_limit_response,
    encode_should_rate_limit, CheckOutcome, FailureMode, Protocol, RlsCall,
};
use azure_rls::{Flavor, LimitSpec, RlsOptions, RlsServer};
use bytes::{Buf, BufMut};
use envoy_types::pb::envoy::config::core::v3::HeaderValue;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    rate_limit::Unit, Code, DescriptorStatus, Quota, RateLimit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::{value, Duration, Struct, Value};
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;

const DOMAIN: &str = "azure-llm";

// ---------------------------------------------------------------------------------------------
// A codec that sends and returns message bytes untouched.

#[derive(Clone, Copy, Default)]
struct RawCodec;
struct RawEncoder;
struct RawDecoder;

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

/// One gRPC client, as one Envoy would be.
struct Client(tonic::client::Grpc<Channel>);

impl Client {
    async fn connect(rls: &RlsServer) -> Client {
        let channel = Channel::from_shared(rls.url())
            .unwrap()
            .connect()
            .await
            .unwrap();
        Client(tonic::client::Grpc::new(channel))
    }

    /// Sends the call like the host would: (gRPC status, response bytes).
    async fn send(&mut self, call: &RlsCall) -> (u32, Vec<u8>) {
        self.0.ready().await.unwrap();
        let path = PathAndQuery::try_from(format!("/{}/{}", call.service, call.method)).unwrap();
        match self
            .0
            .unary(tonic::Request::new(call.message.clone()), path, RawCodec)
            .await
        {
            Ok(resp) => (0, resp.into_inner()),
            Err(status) => (status.code() as u32, Vec::new()),
        }
    }

    async fn check(&mut self, protocol: Protocol, workload: &str, model: &str) -> CheckOutcome {
        let (status, body) = self
            .send(&check_call(protocol, DOMAIN, workload, model, 1))
            .await;
        check_outcome(status, &body, FailureMode::Deny, 60)
    }

    async fn charge(
        &mut self,
        protocol: Protocol,
        workload: &str,
        model: &str,
        tokens: u64,
    ) -> rls::Code {
        let call =
            charge_call(protocol, DOMAIN, workload, model, tokens, 1).expect("something to charge");
        let (status, body) = self.send(&call).await;
        assert_eq!(status, 0, "charge answered gRPC status {status}");
        decode_should_rate_limit_response(&body)
            .unwrap()
            .overall_code
    }
}

const ADMIT: CheckOutcome = CheckOutcome::Admit { degraded: false };
const OVER: CheckOutcome = CheckOutcome::OverLimit { retry_after_s: 60 };

fn descriptors(pairs: &[&[(&str, &str)]]) -> Vec<Vec<(String, String)>> {
    pairs
        .iter()
        .map(|d| {
            d.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Byte compatibility with the official protos

#[test]
fn request_bytes_are_the_official_encoding() {
    let cases = [
        (
            DOMAIN,
            descriptors(&[
                &[("workload", "team-a"), ("model", "gpt-4o")],
                &[("workload", "team-a")],
            ]),
            1,
        ),
        ("d", descriptors(&[&[("k", "")], &[], &[("", "v")]]), 0),
        ("", Vec::new(), u32::MAX),
        (
            "ünïcödé",
            descriptors(&[&[("workload", &"w".repeat(300))]]),
            123_456,
        ),
    ];
    for (domain, descs, hits) in cases {
        let ours = encode_should_rate_limit(domain, &descs, hits);
        let official = RateLimitRequest {
            domain: domain.to_string(),
            descriptors: descs
                .iter()
                .map(|d| RateLimitDescriptor {
                    entries: d
                        .iter()
                        .map(|(k, v)| Entry {
                            key: k.clone(),
                            value: v.clone(),
                        })
                        .collect(),
                    ..RateLimitDescriptor::default()
                })
                .collect(),
            hits_addend: hits,
        };
        assert_eq!(
            ours,
            official.encode_to_vec(),
            "same bytes as prost for {domain:?}"
        );
        assert_eq!(RateLimitRequest::decode(ours.as_slice()).unwrap(), official);
    }
}

#[test]
fn responses_of_the_official_encoding_decode() {
    let official = RateLimitResponse {
        overall_code: Code::OverLimit.into(),
        statuses: vec![
            DescriptorStatus {
                code: Code::Ok.into(),
                current_limit: Some(RateLimit {
                    name: "per-workload".into(),
                    requests_per_unit: 100_000,
                    unit: Unit::Minute.into(),
                }),
                limit_remaining: 4_000,
                duration_until_reset: Some(Duration {
                    seconds: 30,
                    nanos: 0,
                }),
                quota: Some(Quota {
                    requests: 5,
                    id: "q".into(),
                    expiration_specifier: None,
                }),
            },
            DescriptorStatus {
                code: Code::OverLimit.into(),
                current_limit: Some(RateLimit {
                    name: String::new(),
                    requests_per_unit: 10,
                    unit: Unit::Week.into(),
                }),
                limit_remaining: 0,
                duration_until_reset: Some(Duration {
                    seconds: 41,
                    nanos: 1,
                }),
                quota: None,
            },
        ],
        response_headers_to_add: vec![HeaderValue {
            key: "x-ratelimit-remaining".into(),
            value: "0".into(),
            raw_value: Vec::new(),
        }],
        request_headers_to_add: vec![HeaderValue {
            key: "x-skipped".into(),
            value: String::new(),
            raw_value: b"raw".to_vec(),
        }],
        raw_body: b"{\"error\":1}".to_vec(),
        dynamic_metadata: Some(Struct {
            fields: [(
                "k".to_string(),
                Value {
                    kind: Some(value::Kind::NumberValue(1.5)),
                },
            )]
            .into_iter()
            .collect(),
        }),
        quota: Some(Quota::default()),
    };
    let ours = decode_should_rate_limit_response(&official.encode_to_vec()).unwrap();
    assert_eq!(ours.overall_code, rls::Code::OverLimit);
    assert_eq!(ours.statuses.len(), 2);
    assert_eq!(ours.statuses[0].code, rls::Code::Ok);
    let limit = ours.statuses[0].current_limit.as_ref().unwrap();
    assert_eq!(
        (limit.name.as_str(), limit.requests_per_unit, limit.unit),
        ("per-workload", 100_000, rls::Unit::Minute)
    );
    assert_eq!(ours.statuses[0].limit_remaining, 4_000);
    assert_eq!(
        ours.statuses[1].current_limit.as_ref().unwrap().unit,
        rls::Unit::Week
    );
    assert_eq!(
        ours.statuses[1].duration_until_reset,
        Some(rls::Duration {
            seconds: 41,
            nanos: 1
        })
    );
    assert_eq!(ours.retry_after_s(), Some(42));
    assert_eq!(
        ours.response_headers_to_add,
        vec![("x-ratelimit-remaining".to_string(), "0".to_string())]
    );
    // Every unit value of the proto maps to the same unit.
    for (unit, expected) in [
        (Unit::Unknown, rls::Unit::Unknown),
        (Unit::Second, rls::Unit::Second),
        (Unit::Minute, rls::Unit::Minute),
        (Unit::Hour, rls::Unit::Hour),
        (Unit::Day, rls::Unit::Day),
        (Unit::Week, rls::Unit::Week),
        (Unit::Month, rls::Unit::Month),
        (Unit::Year, rls::Unit::Year),
    ] {
        let r = RateLimitResponse {
            statuses: vec![DescriptorStatus {
                current_limit: Some(RateLimit {
                    unit: unit.into(),
                    requests_per_unit: 1,
                    ..RateLimit::default()
                }),
                ..DescriptorStatus::default()
            }],
            ..RateLimitResponse::default()
        };
        let ours = decode_should_rate_limit_response(&r.encode_to_vec()).unwrap();
        assert_eq!(
            ours.statuses[0].current_limit.as_ref().unwrap().unit,
            expected
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Against a live Limitador-backed RLS

/// The filter's default scheme with Limitador: CheckRateLimit before, Report after. Two clients
/// (two Envoys) share one workload's budget; the charge that crosses the budget is counted in
/// full; another workload is unaffected.
#[tokio::test]
async fn kuadrant_scheme_holds_the_budget_across_two_clients() {
    let rls = RlsServer::start(vec![
        LimitSpec::per_workload(DOMAIN, 100, 60),
        LimitSpec::per_workload_model(DOMAIN, "gpt-4o-mini", 1_000, 60),
    ])
    .await
    .unwrap();
    let mut a = Client::connect(&rls).await;
    let mut b = Client::connect(&rls).await;
    let p = Protocol::Kuadrant;

    assert_eq!(a.check(p, "team-a", "gpt-4o").await, ADMIT);
    assert_eq!(a.charge(p, "team-a", "gpt-4o", 60).await, rls::Code::Ok);
    assert_eq!(
        b.check(p, "team-a", "gpt-4o").await,
        ADMIT,
        "60 of 100 used"
    );
    assert_eq!(
        b.charge(p, "team-a", "gpt-4o", 60).await,
        rls::Code::Ok,
        "Report always adds"
    );
    // 120 used; Limitador reports remaining 0 (it does not go negative).
    assert_eq!(
        rls.used(DOMAIN, "per-workload-100-per-60s", "team-a").await,
        Some(100)
    );
    // Both clients are now refused: 120 >= 100.
    assert_eq!(a.check(p, "team-a", "gpt-4o").await, OVER);
    assert_eq!(b.check(p, "team-a", "gpt-4o-mini").await, OVER);
    // A check creates no counter: the gpt-4o-mini limit was only checked, never charged.
    assert_eq!(
        rls.used(DOMAIN, "per-workload-gpt-4o-mini-1000-per-60s", "team-a")
            .await,
        None
    );
    // Another workload has its own counter.
    assert_eq!(b.check(p, "team-b", "gpt-4o").await, ADMIT);

    // The budget is reached exactly: used == max is refused, max - 1 is not.
    assert_eq!(a.charge(p, "team-c", "gpt-4o", 99).await, rls::Code::Ok);
    assert_eq!(a.check(p, "team-c", "gpt-4o").await, ADMIT, "99 of 100");
    assert_eq!(
        rls.used(DOMAIN, "per-workload-100-per-60s", "team-c").await,
        Some(99),
        "checks add nothing"
    );
    assert_eq!(a.charge(p, "team-c", "gpt-4o", 1).await, rls::Code::Ok);
    assert_eq!(b.check(p, "team-c", "gpt-4o").await, OVER, "100 of 100");

    // What the RLS saw: both descriptors, hits_addend 1 for checks and the tokens for charges.
    let calls = rls.calls();
    assert_eq!(calls[0].method, "CheckRateLimit");
    assert_eq!(calls[0].domain, DOMAIN);
    assert_eq!(
        calls[0].descriptors,
        descriptors(&[
            &[("workload", "team-a"), ("model", "gpt-4o")],
            &[("workload", "team-a")]
        ])
    );
    assert_eq!(calls[0].hits_addend, 1);
    assert_eq!((calls[1].method, calls[1].hits_addend), ("Report", 60));
}

/// Why the filter does not charge through ShouldRateLimit with Limitador: a charge that would
/// cross the budget is refused and adds nothing, so the budget never runs out.
#[tokio::test]
async fn should_rate_limit_charges_are_dropped_by_limitador() {
    let rls = RlsServer::start(vec![LimitSpec::per_workload(DOMAIN, 100, 60)])
        .await
        .unwrap();
    let mut c = Client::connect(&rls).await;
    let p = Protocol::Envoy;
    assert_eq!(c.check(p, "w", "m").await, ADMIT); // +1
    assert_eq!(c.charge(p, "w", "m", 60).await, rls::Code::Ok); // +59 -> 60
    assert_eq!(c.check(p, "w", "m").await, ADMIT); // +1 -> 61
    assert_eq!(
        c.charge(p, "w", "m", 60).await,
        rls::Code::OverLimit,
        "61 + 59 > 100: refused"
    );
    assert_eq!(
        rls.used(DOMAIN, "per-workload-100-per-60s", "w").await,
        Some(61),
        "and not counted"
    );
    // 120 tokens were used, yet the budget of 100 still admits.
    assert_eq!(c.check(p, "w", "m").await, ADMIT);
}

/// The `envoy` protocol against an RLS that counts like envoyproxy/ratelimit (add, then
/// compare): check 1, charge the rest; exact.
#[tokio::test]
async fn envoy_scheme_holds_the_budget_with_envoyproxy_ratelimit_counting() {
    let mut o = RlsOptions::new(vec![LimitSpec::per_workload(DOMAIN, 100, 60)]);
    o.flavor = Flavor::EnvoyRatelimit;
    let rls = RlsServer::start_with(o).await.unwrap();
    let mut a = Client::connect(&rls).await;
    let mut b = Client::connect(&rls).await;
    let p = Protocol::Envoy;
    assert_eq!(a.check(p, "w", "m").await, ADMIT);
    assert_eq!(a.charge(p, "w", "m", 60).await, rls::Code::Ok);
    assert_eq!(
        rls.used(DOMAIN, "per-workload-100-per-60s", "w").await,
        Some(60),
        "exact"
    );
    assert_eq!(b.check(p, "w", "m").await, ADMIT);
    assert_eq!(
        b.charge(p, "w", "m", 60).await,
        rls::Code::OverLimit,
        "counted anyway"
    );
    assert_eq!(
        rls.used(DOMAIN, "per-workload-100-per-60s", "w").await,
        Some(100),
        "capped view"
    );
    assert_eq!(a.check(p, "w", "m").await, OVER);
    assert_eq!(b.check(p, "other", "m").await, ADMIT);
}

#[tokio::test]
async fn failures_follow_the_failure_mode() {
    let rls = RlsServer::start(vec![LimitSpec::per_workload(DOMAIN, 100, 60)])
        .await
        .unwrap();
    let mut c = Client::connect(&rls).await;
    let call = check_call(Protocol::Kuadrant, DOMAIN, "w", "m", 1);
    rls.set_unavailable(true);
    let (status, body) = c.send(&call).await;
    assert_eq!(
        status, 14,
        "UNAVAILABLE, as Limitador answers when its storage fails"
    );
    assert_eq!(
        check_outcome(status, &body, FailureMode::Allow, 60),
        CheckOutcome::Admit { degraded: true }
    );
    assert!(matches!(
        check_outcome(status, &body, FailureMode::Deny, 60),
        CheckOutcome::Unavailable { .. }
    ));
    rls.set_unavailable(false);
    // An empty domain: Limitador answers UNKNOWN, a failure too.
    let (status, body) = c
        .send(&check_call(Protocol::Kuadrant, "", "w", "m", 1))
        .await;
    assert_eq!(status, 0);
    assert_eq!(
        decode_should_rate_limit_response(&body)
            .unwrap()
            .overall_code,
        rls::Code::Unknown
    );
    assert!(matches!(
        check_outcome(status, &body, FailureMode::Deny, 60),
        CheckOutcome::Unavailable { .. }
    ));
    // An unknown method: UNIMPLEMENTED (12).
    let bogus = RlsCall {
        service: rls::KUADRANT_RLS_SERVICE,
        method: "Nope",
        message: call.message.clone(),
    };
    assert_eq!(c.send(&bogus).await.0, 12);
}

#[test]
fn redis_helper_starts_a_throwaway_redis() {
    // Without redis-server the error says to run `make tools`.
    let redis = azure_rls::RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
    assert!(redis.url().starts_with("redis://127.0.0.1:"));
    let port = redis.port();
    drop(redis);
    // Gone with its value.
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}

// ---------------------------------------------------------------------------------------------
// Counters in Redis: two RLS replicas on one Redis are one Limitador deployment

/// A throwaway Redis and two RLS replicas keeping their counters in it.
async fn redis_replicas(limits: Vec<LimitSpec>) -> (azure_rls::RedisServer, RlsServer, RlsServer) {
    let redis = azure_rls::RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
    let one = RlsServer::start_redis(&redis.url(), limits.clone())
        .await
        .unwrap();
    let two = RlsServer::start_redis(&redis.url(), limits).await.unwrap();
    (redis, one, two)
}

/// The kuadrant scheme across two replicas: what one replica counts, the other sees; another
/// workload has its own counter; a counter's window ends with its Redis key.
#[tokio::test]
async fn redis_replicas_share_one_budget_and_windows_expire() {
    let (_redis, one, two) = redis_replicas(vec![LimitSpec::per_workload(DOMAIN, 100, 2)]).await;
    let mut a = Client::connect(&one).await;
    let mut b = Client::connect(&two).await;
    let p = Protocol::Kuadrant;
    let name = "per-workload-100-per-2s";

    assert_eq!(a.check(p, "team-a", "gpt-4o").await, ADMIT);
    assert_eq!(a.charge(p, "team-a", "gpt-4o", 60).await, rls::Code::Ok);
    assert_eq!(
        two.used(DOMAIN, name, "team-a").await,
        Some(60),
        "replica two sees it"
    );
    assert_eq!(b.check(p, "team-a", "gpt-4o").await, ADMIT, "60 of 100");
    assert_eq!(b.charge(p, "team-a", "gpt-4o", 50).await, rls::Code::Ok);
    assert_eq!(a.check(p, "team-a", "gpt-4o").await, OVER, "110 of 100");
    assert_eq!(b.check(p, "team-a", "gpt-4o").await, OVER);
    assert_eq!(a.check(p, "team-b", "gpt-4o").await, ADMIT);
    let counters = one.counters(DOMAIN).await;
    assert_eq!(counters.len(), 1, "{counters:?}");
    assert!(counters[0]
        .expires_in
        .is_some_and(|d| d <= std::time::Duration::from_secs(2)));

    // The 2 s window started at the first charge; after it, the budget is whole again.
    tokio::time::sleep(std::time::Duration::from_millis(2300)).await;
    assert_eq!(a.check(p, "team-a", "gpt-4o").await, ADMIT);
    assert_eq!(one.used(DOMAIN, name, "team-a").await, None, "expired");
}

/// ShouldRateLimit as limitador-server answers it on Redis: all or nothing across the limits
/// of one call, whichever replica is asked.
#[tokio::test]
async fn redis_check_and_update_is_all_or_nothing() {
    let (_redis, one, two) = redis_replicas(vec![
        LimitSpec::per_workload(DOMAIN, 100, 60),
        LimitSpec::per_workload_model(DOMAIN, "gpt-4o", 50, 60),
    ])
    .await;
    let mut a = Client::connect(&one).await;
    let mut b = Client::connect(&two).await;
    let p = Protocol::Envoy;
    // Envoy protocol: check = ShouldRateLimit with 1 hit, charge = the rest.
    assert_eq!(a.check(p, "w", "gpt-4o").await, ADMIT); // 1 and 1
    assert_eq!(b.charge(p, "w", "gpt-4o", 40).await, rls::Code::Ok); // 40 and 40
                                                                     // 40 + 20 > 50 for the model limit: refused, and the workload limit is not charged either.
    assert_eq!(a.charge(p, "w", "gpt-4o", 21).await, rls::Code::OverLimit);
    assert_eq!(
        two.used(DOMAIN, "per-workload-100-per-60s", "w").await,
        Some(40),
        "nothing added by the refused call"
    );
    // Another model only meets the workload limit.
    assert_eq!(b.charge(p, "w", "gpt-4o-mini", 51).await, rls::Code::Ok);
    assert_eq!(
        one.used(DOMAIN, "per-workload-100-per-60s", "w").await,
        Some(90)
    );
}

/// Redis gone: every call answers UNAVAILABLE, as limitador-server does when its storage
/// fails, and the filter's failure mode decides.
#[tokio::test]
async fn redis_failure_answers_unavailable() {
    let redis = azure_rls::RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
    let rls = RlsServer::start_redis(&redis.url(), vec![LimitSpec::per_workload(DOMAIN, 100, 60)])
        .await
        .unwrap();
    let mut c = Client::connect(&rls).await;
    let p = Protocol::Kuadrant;
    assert_eq!(c.check(p, "w", "m").await, ADMIT);
    drop(redis);
    let (status, body) = c.send(&check_call(p, DOMAIN, "w", "m", 1)).await;
    assert_eq!(status, 14, "UNAVAILABLE");
    assert!(matches!(
        check_outcome(status, &body, FailureMode::Deny, 60),
        CheckOutcome::Unavailable { .. }
    ));
    let call = charge_call(p, DOMAIN, "w", "m", 10, 1).unwrap();
    assert_eq!(c.send(&call).await.0, 14);
}
