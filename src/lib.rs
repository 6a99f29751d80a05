//! azure-llm-filter: a proxy-wasm HTTP filter that puts Azure OpenAI and Azure AI Foundry
//! behind Envoy. Workloads call it without secrets; it routes each request by model, rewrites
//! it for Azure and injects a Microsoft Entra ID token it fetches and caches itself.
//!
//! `host` is the thin proxy-wasm layer; the other modules decide and are plain Rust. `native`
//! (feature `native`) runs `host` inside Envoy as a dynamic module instead of a Wasm VM.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod allowance;
pub mod auth;
pub mod body_watch;
pub mod capture;
pub mod config;
pub mod discovery;
pub mod entra;
pub mod errors;
pub mod estimate;
pub mod failover;
pub mod first_output;
/// Fuzz targets (native only; used by fuzz/ and tests/fuzz_smoke.rs).
#[cfg(not(target_arch = "wasm32"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod guard;
pub mod header_map;
pub mod host;
/// Production hazards in Envoy bootstraps and Istio manifests (native only: check-config and
/// the shipped-files test).
#[cfg(not(target_arch = "wasm32"))]
pub mod lint;
pub mod meter;
pub mod metrics;
pub mod multipart;
/// The native build: `src/host` as an Envoy dynamic module (cargo feature `native`).
#[cfg(all(feature = "native", not(target_arch = "wasm32")))]
pub mod native;
pub mod pricing;
pub mod ratelimit;
pub mod rls;
pub mod routing;
pub mod settlement;
pub mod token_cache;
pub mod usage;
pub mod usage_chunk;
pub mod usage_json;
pub mod usage_record;

#[cfg(target_arch = "wasm32")]
proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Trace);
    proxy_wasm::set_root_context(|context_id| -> Box<dyn proxy_wasm::traits::RootContext> {
        Box::new(host::root::FilterRoot::new(context_id))
    });
}}
