//! Drives the filter natively through the proxy-wasm SDK's own entry points (the functions
//! Envoy calls in the .wasm), against the counting host of `host.rs`: configure a plugin,
//! answer its Entra and JWKS callouts, then run requests callback by callback as Envoy does.

use super::host::{self, Count, Kind};
use azure_llm_filter::host::phase::Phase;
use proxy_wasm::types::{BufferType, MapType};
use std::collections::BTreeMap;
use std::sync::Once;

extern "C" {
    // The SDK's exports (src/dispatcher.rs of proxy-wasm), resolved by the linker.
    fn proxy_on_context_create(context_id: u32, root_context_id: u32);
    fn proxy_on_vm_start(context_id: u32, vm_configuration_size: usize) -> bool;
    fn proxy_on_configure(context_id: u32, plugin_configuration_size: usize) -> bool;
    fn proxy_on_tick(context_id: u32);
    fn proxy_on_http_call_response(
        context_id: u32,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        num_trailers: usize,
    );
    fn proxy_on_request_headers(context_id: u32, num_headers: usize, end_of_stream: bool) -> u32;
    fn proxy_on_request_body(context_id: u32, body_size: usize, end_of_stream: bool) -> u32;
    fn proxy_on_response_headers(context_id: u32, num_headers: usize, end_of_stream: bool) -> u32;
    fn proxy_on_response_body(context_id: u32, body_size: usize, end_of_stream: bool) -> u32;
    fn proxy_on_log(context_id: u32);
    fn proxy_on_done(context_id: u32) -> bool;
    fn proxy_on_delete(context_id: u32);
}

const CONTINUE: u32 = 0;

/// What the callouts of a root context are answered with.
pub struct Answers {
    /// The Entra token endpoint's JSON answer.
    pub token: String,
    /// The JWKS document.
    pub jwks: String,
}

/// One configured plugin (root context) of the natively linked filter.
pub struct Plugin {
    root: u32,
}

/// A request as Envoy hands it over: headers, then the body in one chunk; the answer's
/// headers, then its body in `answer_chunks`.
pub struct Exchange<'a> {
    pub request_headers: Vec<(String, Vec<u8>)>,
    pub request_body: &'a [u8],
    pub response_headers: Vec<(String, Vec<u8>)>,
    pub answer_chunks: Vec<Vec<u8>>,
}

/// What one request did: the host calls by phase and kind, the callbacks Envoy made into the
/// VM, and the request headers as they left the filter.
pub struct Measured {
    pub counts: BTreeMap<(Phase, Kind), Count>,
    pub callbacks: u64,
    pub upstream_headers: Vec<(String, Vec<u8>)>,
}

fn next_context_id() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// As the module's `proxy_wasm::main!` does (src/lib.rs; it is compiled for wasm32 only).
fn register_root_context() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Trace);
        proxy_wasm::set_root_context(|id| -> Box<dyn proxy_wasm::traits::RootContext> {
            Box::new(azure_llm_filter::host::root::FilterRoot::new(id))
        });
    });
}

fn advance_clock_ms(ms: u64) {
    host::with(|h| h.now_ns += ms * 1_000_000);
}

impl Plugin {
    /// Configures `plugin_config` and serves its token (and JWKS) callouts until it has what
    /// it needs, by ticking as Envoy would.
    pub fn configure(plugin_config: &str, answers: &Answers) -> Plugin {
        register_root_context();
        let root = next_context_id();
        host::with(|h| {
            h.buffers.insert(
                BufferType::PluginConfiguration as u32,
                plugin_config.as_bytes().to_vec(),
            );
        });
        unsafe {
            proxy_on_context_create(root, 0);
            assert!(proxy_on_vm_start(root, 0), "vm start");
            assert!(
                proxy_on_configure(root, plugin_config.len()),
                "the filter refused its configuration: {:?}",
                host::with(|h| h.logs.clone())
            );
        }
        let plugin = Plugin { root };
        for _ in 0..20 {
            advance_clock_ms(600);
            unsafe { proxy_on_tick(root) };
            plugin.answer_callouts(answers);
        }
        plugin
    }

    fn answer_callouts(&self, answers: &Answers) {
        loop {
            let callouts = host::with(|h| std::mem::take(&mut h.callouts));
            if callouts.is_empty() {
                return;
            }
            for c in callouts {
                let path = c
                    .headers
                    .iter()
                    .find(|(k, _)| k == ":path")
                    .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default();
                let body = if path.contains("/keys") {
                    answers.jwks.clone()
                } else {
                    answers.token.clone()
                };
                let headers = vec![
                    (":status".to_string(), b"200".to_vec()),
                    ("content-type".to_string(), b"application/json".to_vec()),
                ];
                let n = headers.len();
                host::with(|h| {
                    h.maps
                        .insert(MapType::HttpCallResponseHeaders as u32, headers);
                    h.buffers.insert(
                        BufferType::HttpCallResponseBody as u32,
                        body.as_bytes().to_vec(),
                    );
                });
                unsafe { proxy_on_http_call_response(self.root, c.token, n, body.len(), 0) };
            }
        }
    }

    /// A request waits (for a token): tick and answer callouts until the filter resumes it.
    fn until_resumed(&self, answers: &Answers) {
        let before = host::with(|h| h.resumed);
        for _ in 0..50 {
            advance_clock_ms(20);
            unsafe { proxy_on_tick(self.root) };
            self.answer_callouts(answers);
            if host::with(|h| h.resumed) > before {
                return;
            }
        }
        panic!(
            "the request was never resumed: {:?}",
            host::with(|h| (h.local_responses.clone(), h.logs.clone()))
        );
    }

    /// Runs one request through the filter; counts its host calls when `counted`.
    pub fn exchange(&self, x: &Exchange, answers: &Answers, counted: bool) -> Measured {
        let id = next_context_id();
        let n_req = x.request_headers.len();
        let n_resp = x.response_headers.len();
        host::with(|h| {
            h.counts.clear();
            h.callbacks = 0;
            h.counting = counted;
            h.maps.insert(
                MapType::HttpRequestHeaders as u32,
                x.request_headers.clone(),
            );
            h.maps.remove(&(MapType::HttpResponseHeaders as u32));
            h.buffers
                .insert(BufferType::HttpRequestBody as u32, x.request_body.to_vec());
            h.properties
                .insert(b"upstream\0address".to_vec(), b"127.0.0.1:8443".to_vec());
            h.properties
                .insert(b"response\0code_details".to_vec(), b"via_upstream".to_vec());
        });
        let callback = || host::with(|h| h.callbacks += 1);
        unsafe {
            callback();
            proxy_on_context_create(id, self.root);
            callback();
            let action = proxy_on_request_headers(id, n_req, x.request_body.is_empty());
            if action != CONTINUE {
                callback();
                let action = proxy_on_request_body(id, x.request_body.len(), true);
                if action != CONTINUE {
                    self.until_resumed(answers);
                }
            }
        }
        let upstream_headers = host::with(|h| {
            h.maps
                .get(&(MapType::HttpRequestHeaders as u32))
                .cloned()
                .unwrap_or_default()
        });
        advance_clock_ms(1);
        host::with(|h| {
            h.maps.insert(
                MapType::HttpResponseHeaders as u32,
                x.response_headers.clone(),
            );
        });
        unsafe {
            callback();
            proxy_on_response_headers(id, n_resp, x.answer_chunks.is_empty());
            let last = x.answer_chunks.len().saturating_sub(1);
            for (i, chunk) in x.answer_chunks.iter().enumerate() {
                advance_clock_ms(1);
                host::with(|h| {
                    h.buffers
                        .insert(BufferType::HttpResponseBody as u32, chunk.clone())
                });
                callback();
                proxy_on_response_body(id, chunk.len(), i == last);
            }
            callback();
            proxy_on_log(id);
            callback();
            proxy_on_done(id);
            callback();
            proxy_on_delete(id);
        }
        host::with(|h| {
            h.counting = false;
            Measured {
                counts: std::mem::take(&mut h.counts),
                callbacks: h.callbacks,
                upstream_headers,
            }
        })
    }
}
