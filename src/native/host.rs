//! The proxy-wasm host functions (`proxy_log`, `proxy_get_header_map_value`, ...) implemented
//! in process on top of Envoy's dynamic module callbacks, so that `src/host` — the proxy-wasm
//! layer, unchanged — runs inside Envoy as a shared object, without a Wasm VM.
//!
//! Why emulate the proxy-wasm host instead of writing every phase a second time: the phases in
//! `src/host` are the order of host calls around host-free decisions. Replaying that order
//! against a second API would be a second copy of 5,000 lines that must stay identical to the
//! first; emulating the ~25 host functions they use makes "same behaviour, same errors" true
//! by construction, and the test suites exercise one code path for both builds.
//!
//! Each Envoy worker thread is one "VM": the proxy-wasm dispatcher is thread-local, so a
//! worker gets its own root context (created on its first stream), its own HTTP contexts and
//! its own callouts, exactly like one V8 VM per worker. Shared data is process memory
//! (`native::shared`). How the rest maps is written next to each function.
//!
//! Pointer arguments come from the proxy-wasm SDK (in this same binary), never from the
//! network: each function checks what it reads for null and lengths before it builds slices.
#![allow(clippy::missing_safety_doc)]

use super::abi::{self, EnvoyBuffer, EnvoyHttpHeader, FilterEnvoyPtr, ModuleBuffer};
use proxy_wasm::types::{BufferType, LogLevel, MapType, Status, StreamType};
use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

/// What a stream (an HTTP context) needs from its Envoy filter.
pub struct StreamEntry {
    pub envoy: FilterEnvoyPtr,
    /// Inside `on_request_body` / `on_response_body`: the received chunk is readable.
    pub in_request_body: bool,
    pub in_response_body: bool,
}

/// A root context's callout, made through a stream's filter (the ABI has per-stream callouts on
/// worker threads), answered to the token the SDK registered.
pub struct PendingCallout {
    pub filter: FilterEnvoyPtr,
    /// The context that made the call: its answer runs with it effective.
    pub owner: u32,
    pub callout_id: u64,
    pub token: u32,
}

/// Host calls that change a stream (resume, local reply) are run after the outermost event
/// hook returns, as proxy-wasm-cpp-host defers them after a VM call: Envoy may call this
/// filter's hooks again from inside them, and the dispatcher must not be re-entered.
pub enum Deferred {
    Continue(u32, StreamType),
    Respond {
        context: u32,
        status: u32,
        headers: Vec<(Vec<u8>, Vec<u8>)>,
        body: Vec<u8>,
        details: Vec<u8>,
    },
}

#[derive(Default)]
pub struct Worker {
    pub streams: HashMap<u32, StreamEntry>,
    /// The context proxy-wasm host calls act on (`proxy_set_effective_context` moves it).
    pub effective: u32,
    /// The filter whose Envoy event is being handled: root-context callouts go through it.
    pub current: Option<FilterEnvoyPtr>,
    /// The plugin and VM configuration of the root being created or configured.
    pub plugin_config: Vec<u8>,
    pub tick_period_ms: u64,
    pub next_tick_ms: u64,
    pub callouts: Vec<PendingCallout>,
    /// The filter configuration of the stream being handled: (id, its scheduler's address),
    /// where a root context's callouts are queued (`native::callouts`).
    pub config: Option<(u64, usize)>,
    /// The answer being delivered to `proxy_on_http_call_response`.
    pub call_headers: Vec<(Vec<u8>, Vec<u8>)>,
    pub call_body: Vec<u8>,
    pub deferred: Vec<Deferred>,
    pub depth: u32,
}

thread_local! {
    pub static WORKER: RefCell<Worker> = RefCell::new(Worker::default());
}

pub fn with<R>(f: impl FnOnce(&mut Worker) -> R) -> R {
    WORKER.with(|w| f(&mut w.borrow_mut()))
}

/// The log level Envoy runs the module's logger at (set once at program start).
static LOG_LEVEL: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(2);

pub fn set_log_level(level: u32) {
    LOG_LEVEL.store(level, std::sync::atomic::Ordering::Relaxed);
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Hands bytes to the SDK, which frees them as `Vec::from_raw_parts(ptr, len, len)`.
pub(super) unsafe fn give(bytes: Vec<u8>, data: *mut *mut u8, size: *mut usize) {
    if data.is_null() || size.is_null() {
        return;
    }
    let boxed = bytes.into_boxed_slice();
    *size = boxed.len();
    *data = Box::into_raw(boxed).cast::<u8>();
}

pub(super) unsafe fn input<'a>(ptr: *const u8, len: usize) -> &'a [u8] {
    if ptr.is_null() || len == 0 {
        &[]
    } else {
        std::slice::from_raw_parts(ptr, len)
    }
}

/// proxy-wasm's map encoding: count, (key length, value length)*, then each key and value
/// followed by a NUL.
pub fn serialize_map(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut size = 4;
    for (k, v) in pairs {
        size += k.len() + v.len() + 10;
    }
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&u32::try_from(pairs.len()).unwrap_or(0).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&u32::try_from(k.len()).unwrap_or(0).to_le_bytes());
        out.extend_from_slice(&u32::try_from(v.len()).unwrap_or(0).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k);
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

/// The inverse of [`serialize_map`]; `None` for a malformed map.
pub fn deserialize_map(bytes: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let count = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    let mut lens = Vec::with_capacity(count.min(1024));
    for n in 0..count {
        let at = 4 + n * 8;
        let k = u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?) as usize;
        let v = u32::from_le_bytes(bytes.get(at + 4..at + 8)?.try_into().ok()?) as usize;
        lens.push((k, v));
    }
    let mut p = 4 + count * 8;
    let mut out = Vec::with_capacity(lens.len());
    for (k, v) in lens {
        let key = bytes.get(p..p + k)?.to_vec();
        p += k + 1;
        let value = bytes.get(p..p + v)?.to_vec();
        p += v + 1;
        out.push((key, value));
    }
    Some(out)
}

/// The stream the effective context is, if it is one.
pub(super) fn effective_stream() -> Option<(u32, FilterEnvoyPtr, bool, bool)> {
    with(|w| {
        let id = w.effective;
        w.streams
            .get(&id)
            .map(|s| (id, s.envoy, s.in_request_body, s.in_response_body))
    })
}

fn header_type(map: MapType) -> Option<abi::HeaderType> {
    match map {
        MapType::HttpRequestHeaders => Some(abi::REQUEST_HEADER),
        MapType::HttpRequestTrailers => Some(abi::REQUEST_TRAILER),
        MapType::HttpResponseHeaders => Some(abi::RESPONSE_HEADER),
        MapType::HttpResponseTrailers => Some(abi::RESPONSE_TRAILER),
        _ => None,
    }
}

fn envoy_headers(filter: FilterEnvoyPtr, kind: abi::HeaderType) -> Vec<(Vec<u8>, Vec<u8>)> {
    unsafe {
        let n = abi::envoy_dynamic_module_callback_http_get_headers_size(filter, kind);
        if n == 0 {
            return Vec::new();
        }
        let mut raw = vec![
            EnvoyHttpHeader {
                key_ptr: std::ptr::null(),
                key_length: 0,
                value_ptr: std::ptr::null(),
                value_length: 0,
            };
            n
        ];
        if !abi::envoy_dynamic_module_callback_http_get_headers(filter, kind, raw.as_mut_ptr()) {
            return Vec::new();
        }
        raw.iter()
            .map(|h| {
                (
                    input(h.key_ptr, h.key_length).to_vec(),
                    input(h.value_ptr, h.value_length).to_vec(),
                )
            })
            .collect()
    }
}

fn body_chunks(filter: FilterEnvoyPtr, kind: abi::BodyType, out: &mut Vec<u8>) {
    unsafe {
        let n = abi::envoy_dynamic_module_callback_http_get_body_chunks_size(filter, kind);
        if n == 0 {
            return;
        }
        let mut chunks = vec![EnvoyBuffer::EMPTY; n];
        if abi::envoy_dynamic_module_callback_http_get_body_chunks(
            filter,
            kind,
            chunks.as_mut_ptr(),
        ) {
            for c in chunks {
                out.extend_from_slice(c.bytes());
            }
        }
    }
}

/// The body proxy-wasm's `HttpRequestBody` / `HttpResponseBody` names: what Envoy buffered for
/// this filter and, inside the body hook, the chunk just received (Envoy's Wasm host moves
/// the chunk into the buffer first; here the two are read in that order).
fn stream_body(filter: FilterEnvoyPtr, request: bool, in_hook: bool) -> Vec<u8> {
    let (buffered, received) = if request {
        (abi::BUFFERED_REQUEST_BODY, abi::RECEIVED_REQUEST_BODY)
    } else {
        (abi::BUFFERED_RESPONSE_BODY, abi::RECEIVED_RESPONSE_BODY)
    };
    let mut out = Vec::new();
    body_chunks(filter, buffered, &mut out);
    if in_hook && !received_is_buffered(filter, request) {
        body_chunks(filter, received, &mut out);
    }
    out
}

fn received_is_buffered(filter: FilterEnvoyPtr, request: bool) -> bool {
    unsafe {
        if request {
            abi::envoy_dynamic_module_callback_http_received_buffered_request_body(filter)
        } else {
            abi::envoy_dynamic_module_callback_http_received_buffered_response_body(filter)
        }
    }
}

fn replace_stream_body(filter: FilterEnvoyPtr, request: bool, in_hook: bool, body: &[u8]) {
    let (buffered, received) = if request {
        (abi::BUFFERED_REQUEST_BODY, abi::RECEIVED_REQUEST_BODY)
    } else {
        (abi::BUFFERED_RESPONSE_BODY, abi::RECEIVED_RESPONSE_BODY)
    };
    unsafe {
        abi::envoy_dynamic_module_callback_http_drain_body(filter, buffered, usize::MAX);
        let use_received = in_hook && !received_is_buffered(filter, request);
        if use_received {
            abi::envoy_dynamic_module_callback_http_drain_body(filter, received, usize::MAX);
        }
        let target = if use_received { received } else { buffered };
        abi::envoy_dynamic_module_callback_http_append_body(filter, target, ModuleBuffer::of(body));
    }
}

// ------------------------------------------------------------------------------------------
// The host functions. Signatures are proxy-wasm 0.2.5's `extern "C"` imports (hostcalls.rs).

#[no_mangle]
pub unsafe extern "C" fn proxy_log(level: LogLevel, data: *const u8, size: usize) -> Status {
    abi::envoy_dynamic_module_callback_log(level as u32, ModuleBuffer::of(input(data, size)));
    Status::Ok
}

#[no_mangle]
pub unsafe extern "C" fn proxy_get_log_level(return_level: *mut LogLevel) -> Status {
    if !return_level.is_null() {
        *return_level = match LOG_LEVEL.load(std::sync::atomic::Ordering::Relaxed) {
            0 => LogLevel::Trace,
            1 => LogLevel::Debug,
            2 => LogLevel::Info,
            3 => LogLevel::Warn,
            4 => LogLevel::Error,
            _ => LogLevel::Critical,
        };
    }
    Status::Ok
}

#[no_mangle]
pub unsafe extern "C" fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> Status {
    if !return_time.is_null() {
        *return_time = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }
    Status::Ok
}

/// The root's tick: run by `module` at the first event on this worker after it is due.
#[no_mangle]
pub unsafe extern "C" fn proxy_set_tick_period_milliseconds(period: u32) -> Status {
    with(|w| {
        w.tick_period_ms = u64::from(period);
        w.next_tick_ms = if period == 0 {
            u64::MAX
        } else {
            now_ms().saturating_add(u64::from(period))
        };
    });
    Status::Ok
}

#[no_mangle]
pub unsafe extern "C" fn proxy_get_buffer_bytes(
    buffer_type: BufferType,
    start: usize,
    max_size: usize,
    return_data: *mut *mut u8,
    return_size: *mut usize,
) -> Status {
    let bytes = match buffer_type {
        BufferType::PluginConfiguration | BufferType::VmConfiguration => {
            if buffer_type == BufferType::VmConfiguration {
                Vec::new()
            } else {
                with(|w| w.plugin_config.clone())
            }
        }
        BufferType::HttpCallResponseBody => with(|w| w.call_body.clone()),
        BufferType::HttpRequestBody | BufferType::HttpResponseBody => {
            let Some((_, filter, in_req, in_resp)) = effective_stream() else {
                return Status::NotFound;
            };
            let request = buffer_type == BufferType::HttpRequestBody;
            stream_body(filter, request, if request { in_req } else { in_resp })
        }
        _ => return Status::NotFound,
    };
    let from = start.min(bytes.len());
    let to = from.saturating_add(max_size).min(bytes.len());
    let slice = bytes.get(from..to).unwrap_or_default().to_vec();
    give(slice, return_data, return_size);
    Status::Ok
}

#[no_mangle]
pub unsafe extern "C" fn proxy_set_buffer_bytes(
    buffer_type: BufferType,
    start: usize,
    size: usize,
    data: *const u8,
    data_size: usize,
) -> Status {
    let request = match buffer_type {
        BufferType::HttpRequestBody => true,
        BufferType::HttpResponseBody => false,
        _ => return Status::BadArgument,
    };
    let Some((_, filter, in_req, in_resp)) = effective_stream() else {
        return Status::NotFound;
    };
    let in_hook = if request { in_req } else { in_resp };
    let mut body = stream_body(filter, request, in_hook);
    let from = start.min(body.len());
    let to = from.saturating_add(size).min(body.len());
    body.splice(from..to, input(data, data_size).iter().copied());
    replace_stream_body(filter, request, in_hook, &body);
    Status::Ok
}

#[no_mangle]
pub unsafe extern "C" fn proxy_get_header_map_pairs(
    map_type: MapType,
    return_data: *mut *mut u8,
    return_size: *mut usize,
) -> Status {
    let pairs = if map_type == MapType::HttpCallResponseHeaders {
        with(|w| w.call_headers.clone())
    } else {
        let (Some(kind), Some((_, filter, _, _))) = (header_type(map_type), effective_stream())
        else {
            return Status::NotFound;
        };
        envoy_headers(filter, kind)
    };
    let refs: Vec<(&[u8], &[u8])> = pairs
        .iter()
        .map(|(k, v)| (k.as_slice(), v.as_slice()))
        .collect();
    give(serialize_map(&refs), return_data, return_size);
    Status::Ok
}

#[no_mangle]
pub unsafe extern "C" fn proxy_set_header_map_pairs(
    map_type: MapType,
    data: *const u8,
    size: usize,
) -> Status {
    let (Some(kind), Some((_, filter, _, _))) = (header_type(map_type), effective_stream()) else {
        return Status::NotFound;
    };
    let Some(pairs) = deserialize_map(input(data, size)) else {
        return Status::BadArgument;
    };
    for (k, _) in envoy_headers(filter, kind) {
        abi::envoy_dynamic_module_callback_http_set_header(
            filter,
            kind,
            ModuleBuffer::of(&k),
            ModuleBuffer::NULL,
        );
    }
    for (k, v) in &pairs {
        abi::envoy_dynamic_module_callback_http_add_header(
            filter,
            kind,
            ModuleBuffer::of(k),
            ModuleBuffer::of(v),
        );
    }
    request_headers_changed(filter, kind);
    Status::Ok
}

#[no_mangle]
pub unsafe extern "C" fn proxy_get_header_map_value(
    map_type: MapType,
    key_data: *const u8,
    key_size: usize,
    return_data: *mut *mut u8,
    return_size: *mut usize,
) -> Status {
    let key = input(key_data, key_size);
    if map_type == MapType::HttpCallResponseHeaders {
        let value = with(|w| {
            w.call_headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
                .map(|(_, v)| v.clone())
        });
        return match value {
            Some(v) => {
                give(v, return_data, return_size);
                Status::Ok
            }
            None => Status::NotFound,
        };
    }
    let (Some(kind), Some((_, filter, _, _))) = (header_type(map_type), effective_stream()) else {
        return Status::NotFound;
    };
    let mut value = EnvoyBuffer::EMPTY;
    let mut count = 0usize;
    let found = abi::envoy_dynamic_module_callback_http_get_header(
        filter,
        kind,
        ModuleBuffer::of(key),
        &mut value,
        0,
        &mut count,
    );
    if !found || count == 0 {
        return Status::NotFound;
    }
    give(value.bytes().to_vec(), return_data, return_size);
    Status::Ok
}

/// Envoy's Wasm host clears the route cache whenever a filter changes request headers, so the
/// router matches on the rewritten `:path`, `:authority` and routing header; the dynamic
/// module ABI leaves that to the module (without it every routed request gets Envoy's 404).
unsafe fn request_headers_changed(filter: FilterEnvoyPtr, kind: abi::HeaderType) {
    if kind == abi::REQUEST_HEADER {
        abi::envoy_dynamic_module_callback_http_clear_route_cache(filter);
    }
}

#[no_mangle]
pub unsafe extern "C" fn proxy_remove_header_map_value(
    map_type: MapType,
    key_data: *const u8,
    key_size: usize,
) -> Status {
    let (Some(kind), Some((_, filter, _, _))) = (header_type(map_type), effective_stream()) else {
        return Status::NotFound;
    };
    abi::envoy_dynamic_module_callback_http_set_header(
        filter,
        kind,
        ModuleBuffer::of(input(key_data, key_size)),
        ModuleBuffer::NULL,
    );
    request_headers_changed(filter, kind);
    Status::Ok
}

#[no_mangle]
pub unsafe extern "C" fn proxy_replace_header_map_value(
    map_type: MapType,
    key_data: *const u8,
    key_size: usize,
    value_data: *const u8,
    value_size: usize,
) -> Status {
    let (Some(kind), Some((_, filter, _, _))) = (header_type(map_type), effective_stream()) else {
        return Status::NotFound;
    };
    // A non-null pointer for an empty value: null would remove the header.
    let value = input(value_data, value_size);
    let value = if value.is_empty() {
        ModuleBuffer {
            ptr: b"".as_ptr(),
            length: 0,
        }
    } else {
        ModuleBuffer::of(value)
    };
    abi::envoy_dynamic_module_callback_http_set_header(
        filter,
        kind,
        ModuleBuffer::of(input(key_data, key_size)),
        value,
    );
    request_headers_changed(filter, kind);
    Status::Ok
}

#[no_mangle]
pub unsafe extern "C" fn proxy_add_header_map_value(
    map_type: MapType,
    key_data: *const u8,
    key_size: usize,
    value_data: *const u8,
    value_size: usize,
) -> Status {
    let (Some(kind), Some((_, filter, _, _))) = (header_type(map_type), effective_stream()) else {
        return Status::NotFound;
    };
    abi::envoy_dynamic_module_callback_http_add_header(
        filter,
        kind,
        ModuleBuffer::of(input(key_data, key_size)),
        ModuleBuffer::of(input(value_data, value_size)),
    );
    request_headers_changed(filter, kind);
    Status::Ok
}

/// Envoy's Wasm host keeps a filter's own properties as filter state under `wasm.<name>`;
/// the same keys here keep access-log formats (`%FILTER_STATE(wasm.…:PLAIN)%`) unchanged.
const PROPERTY_PREFIX: &[u8] = b"wasm.";

#[no_mangle]
pub unsafe extern "C" fn proxy_get_property(
    path_data: *const u8,
    path_size: usize,
    return_data: *mut *mut u8,
    return_size: *mut usize,
) -> Status {
    let Some((_, filter, _, _)) = effective_stream() else {
        return Status::NotFound;
    };
    let path: Vec<&[u8]> = input(path_data, path_size).split(|b| *b == 0).collect();
    let attribute = match path.as_slice() {
        [b"response", b"code_details"] => Some(abi::ATTR_RESPONSE_CODE_DETAILS),
        [b"connection", b"uri_san_peer_certificate"] => {
            Some(abi::ATTR_CONNECTION_URI_SAN_PEER_CERTIFICATE)
        }
        [b"upstream", b"address"] => Some(abi::ATTR_UPSTREAM_ADDRESS),
        [b"upstream", b"local_address"] => Some(abi::ATTR_UPSTREAM_LOCAL_ADDRESS),
        [b"upstream", b"request_attempt_count"] => {
            let mut n = 0u64;
            if abi::envoy_dynamic_module_callback_http_filter_get_attribute_int(
                filter,
                abi::ATTR_UPSTREAM_REQUEST_ATTEMPT_COUNT,
                &mut n,
            ) {
                give(n.to_le_bytes().to_vec(), return_data, return_size);
                return Status::Ok;
            }
            return Status::NotFound;
        }
        _ => None,
    };
    let mut value = EnvoyBuffer::EMPTY;
    let found = match attribute {
        Some(id) => abi::envoy_dynamic_module_callback_http_filter_get_attribute_string(
            filter, id, &mut value,
        ),
        None => {
            let mut key = PROPERTY_PREFIX.to_vec();
            key.extend_from_slice(&path.join(&b'.'));
            abi::envoy_dynamic_module_callback_http_get_filter_state_bytes(
                filter,
                ModuleBuffer::of(&key),
                &mut value,
            )
        }
    };
    if !found || value.ptr.is_null() {
        return Status::NotFound;
    }
    give(value.bytes().to_vec(), return_data, return_size);
    Status::Ok
}

#[no_mangle]
pub unsafe extern "C" fn proxy_set_property(
    path_data: *const u8,
    path_size: usize,
    value_data: *const u8,
    value_size: usize,
) -> Status {
    let Some((_, filter, _, _)) = effective_stream() else {
        return Status::NotFound;
    };
    let path: Vec<&[u8]> = input(path_data, path_size).split(|b| *b == 0).collect();
    let mut key = PROPERTY_PREFIX.to_vec();
    key.extend_from_slice(&path.join(&b'.'));
    if abi::envoy_dynamic_module_callback_http_set_filter_state_bytes(
        filter,
        ModuleBuffer::of(&key),
        ModuleBuffer::of(input(value_data, value_size)),
    ) {
        Status::Ok
    } else {
        Status::InternalFailure
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_round_trip_in_proxy_wasm_encoding() {
        let pairs: Vec<(&[u8], &[u8])> = vec![(b":path", b"/v1/x"), (b"k", b"")];
        let bytes = serialize_map(&pairs);
        let back = deserialize_map(&bytes).unwrap_or_default();
        assert_eq!(back.len(), 2);
        assert_eq!(back[0], (b":path".to_vec(), b"/v1/x".to_vec()));
        assert_eq!(back[1], (b"k".to_vec(), Vec::new()));
    }

    #[test]
    fn a_truncated_map_is_refused() {
        let pairs: Vec<(&[u8], &[u8])> = vec![(b"key", b"value")];
        let bytes = serialize_map(&pairs);
        assert!(deserialize_map(&bytes[..bytes.len() - 3]).is_none());
        assert!(deserialize_map(&[1, 0]).is_none());
    }
}
