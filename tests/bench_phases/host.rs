//! The proxy-wasm host ABI (0.2.1) implemented natively, so that the filter's own code (linked
//! into this test as a Rust library, with the proxy-wasm SDK's own dispatcher) runs without
//! Envoy, and every host call it makes is counted under the phase it was made in
//! (`azure_llm_filter::host::phase`), with the bytes it moved in each direction.
//!
//! It behaves like Envoy only as far as the measured requests need: header maps, bodies as
//! the current chunk, filter-state properties, shared data with CAS, metrics, a clock that
//! moves only when told, HTTP callouts answered by the test. What it counts is exact; what a
//! call costs inside Envoy is measured under callgrind (bench_phases.rs).
#![allow(clippy::missing_safety_doc, clippy::not_unsafe_ptr_arg_deref)]

use azure_llm_filter::host::phase::{self, Phase};
use proxy_wasm::types::Status;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};

/// What a host call does, for the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// All the headers of a map in one call.
    HeadersRead,
    HeaderRead,
    HeaderWrite,
    HeaderRemove,
    BodyRead,
    BodyWrite,
    PropertyRead,
    PropertyWrite,
    SharedRead,
    SharedWrite,
    Metric,
    Clock,
    Log,
    Other,
}

impl Kind {
    pub const ALL: [Kind; 14] = [
        Kind::HeadersRead,
        Kind::HeaderRead,
        Kind::HeaderWrite,
        Kind::HeaderRemove,
        Kind::BodyRead,
        Kind::BodyWrite,
        Kind::PropertyRead,
        Kind::PropertyWrite,
        Kind::SharedRead,
        Kind::SharedWrite,
        Kind::Metric,
        Kind::Clock,
        Kind::Log,
        Kind::Other,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::HeadersRead => "all-header reads",
            Kind::HeaderRead => "header reads",
            Kind::HeaderWrite => "header writes",
            Kind::HeaderRemove => "header removals",
            Kind::BodyRead => "body reads",
            Kind::BodyWrite => "body writes",
            Kind::PropertyRead => "property reads",
            Kind::PropertyWrite => "property writes",
            Kind::SharedRead => "shared-data reads",
            Kind::SharedWrite => "shared-data writes",
            Kind::Metric => "metrics",
            Kind::Clock => "clock",
            Kind::Log => "log",
            Kind::Other => "other",
        }
    }
}

/// Calls of one kind in one phase, and the bytes they moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Count {
    pub calls: u64,
    /// Bytes the host handed to the filter (each non-empty hand-over is also a call from the
    /// host back into the VM, to allocate them).
    pub bytes_in: u64,
    pub allocations: u64,
    /// Bytes the filter handed to the host.
    pub bytes_out: u64,
}

impl Count {
    pub fn add(&mut self, o: &Count) {
        self.calls += o.calls;
        self.bytes_in += o.bytes_in;
        self.allocations += o.allocations;
        self.bytes_out += o.bytes_out;
    }
}

/// An HTTP callout the filter dispatched.
#[derive(Debug, Clone)]
pub struct Callout {
    pub token: u32,
    pub headers: Vec<(String, Vec<u8>)>,
}

#[derive(Default)]
pub struct Host {
    /// Header maps by `MapType` number.
    pub maps: HashMap<u32, Vec<(String, Vec<u8>)>>,
    /// Buffers by `BufferType` number (a body is the current chunk, as Envoy hands it over when
    /// the filter continues).
    pub buffers: HashMap<u32, Vec<u8>>,
    /// Properties by path (parts joined by NUL, as the ABI sends them).
    pub properties: HashMap<Vec<u8>, Vec<u8>>,
    shared: HashMap<Vec<u8>, (Vec<u8>, u32)>,
    next_cas: u32,
    metric_names: Vec<String>,
    pub now_ns: u64,
    pub local_responses: Vec<u32>,
    pub callouts: Vec<Callout>,
    pub logs: Vec<(u32, String)>,
    /// Whether calls are counted (not while configuring or fetching tokens).
    pub counting: bool,
    pub counts: BTreeMap<(Phase, Kind), Count>,
    /// Calls into the VM (callbacks) the test made while counting.
    pub callbacks: u64,
    /// Requests the filter resumed (`proxy_continue_stream`).
    pub resumed: u64,
}

thread_local! {
    pub static HOST: RefCell<Host> = RefCell::new(Host {
        next_cas: 1,
        // The real time at the start (caller tokens are signed for now), then moved by the test.
        now_ns: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
        ..Host::default()
    });
}

pub fn with<R>(f: impl FnOnce(&mut Host) -> R) -> R {
    HOST.with(|h| f(&mut h.borrow_mut()))
}

fn count(kind: Kind, bytes_in: usize, bytes_out: usize) {
    with(|h| {
        if !h.counting {
            return;
        }
        let c = h.counts.entry((phase::current(), kind)).or_default();
        c.calls += 1;
        c.bytes_in += bytes_in as u64;
        c.allocations += u64::from(bytes_in > 0);
        c.bytes_out += bytes_out as u64;
    });
}

unsafe fn bytes<'a>(ptr: *const u8, len: usize) -> &'a [u8] {
    if len == 0 || ptr.is_null() {
        &[]
    } else {
        std::slice::from_raw_parts(ptr, len)
    }
}

/// Hands `data` to the filter as the SDK expects: memory of its allocator, exactly `len` long
/// (it takes it back with `Vec::from_raw_parts(ptr, len, len)`).
unsafe fn give(data: &[u8], ret_ptr: *mut *mut u8, ret_len: *mut usize) {
    let boxed: Box<[u8]> = data.to_vec().into_boxed_slice();
    *ret_len = boxed.len();
    *ret_ptr = Box::into_raw(boxed) as *mut u8;
}

pub fn serialize_map(map: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(map.len() as u32).to_le_bytes());
    for (k, v) in map {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in map {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

pub fn deserialize_map(data: &[u8]) -> Vec<(String, Vec<u8>)> {
    let word = |i: usize| -> usize {
        data.get(i..i + 4)
            .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let n = word(0);
    let mut p = 4 + n * 8;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let (kl, vl) = (word(4 + i * 8), word(8 + i * 8));
        let k = String::from_utf8_lossy(&data[p..p + kl]).into_owned();
        p += kl + 1;
        let v = data[p..p + vl].to_vec();
        p += vl + 1;
        out.push((k, v));
    }
    out
}

#[no_mangle]
pub extern "C" fn proxy_log(level: u32, data: *const u8, len: usize) -> Status {
    let message = String::from_utf8_lossy(unsafe { bytes(data, len) }).into_owned();
    count(Kind::Log, 0, len);
    if level >= 3 {
        // Warnings, errors and the SDK's panic hook (critical).
        eprintln!("filter log ({level}): {message}");
    }
    with(|h| h.logs.push((level, message)));
    Status::Ok
}

#[no_mangle]
pub extern "C" fn proxy_get_log_level(ret: *mut u32) -> Status {
    count(Kind::Log, 0, 0);
    unsafe { *ret = 2 }; // info, Envoy's default
    Status::Ok
}

#[no_mangle]
pub extern "C" fn proxy_get_current_time_nanoseconds(ret: *mut u64) -> Status {
    count(Kind::Clock, 0, 0);
    unsafe { *ret = with(|h| h.now_ns) };
    Status::Ok
}

#[no_mangle]
pub extern "C" fn proxy_set_tick_period_milliseconds(_period: u32) -> Status {
    count(Kind::Other, 0, 0);
    Status::Ok
}

#[no_mangle]
pub unsafe extern "C" fn proxy_get_buffer_bytes(
    buffer: u32,
    start: usize,
    max: usize,
    ret_ptr: *mut *mut u8,
    ret_len: *mut usize,
) -> Status {
    let data = with(|h| h.buffers.get(&buffer).cloned());
    let Some(data) = data else {
        count(Kind::BodyRead, 0, 0);
        return Status::NotFound;
    };
    let end = start.saturating_add(max).min(data.len());
    let slice = data.get(start.min(end)..end).unwrap_or_default();
    count(Kind::BodyRead, slice.len(), 0);
    give(slice, ret_ptr, ret_len);
    Status::Ok
}

#[no_mangle]
pub unsafe extern "C" fn proxy_set_buffer_bytes(
    buffer: u32,
    start: usize,
    size: usize,
    data: *const u8,
    len: usize,
) -> Status {
    let new = bytes(data, len).to_vec();
    count(Kind::BodyWrite, 0, len);
    with(|h| {
        let b = h.buffers.entry(buffer).or_default();
        let start = start.min(b.len());
        let end = start.saturating_add(size).min(b.len());
        b.splice(start..end, new);
    });
    Status::Ok
}

#[no_mangle]
pub unsafe extern "C" fn proxy_get_header_map_pairs(
    map: u32,
    ret_ptr: *mut *mut u8,
    ret_len: *mut usize,
) -> Status {
    let data = with(|h| serialize_map(h.maps.get(&map).map_or(&[][..], |m| m)));
    count(Kind::HeadersRead, data.len(), 0);
    give(&data, ret_ptr, ret_len);
    Status::Ok
}

#[no_mangle]
pub unsafe extern "C" fn proxy_set_header_map_pairs(
    map: u32,
    data: *const u8,
    len: usize,
) -> Status {
    let pairs = deserialize_map(bytes(data, len));
    count(Kind::HeaderWrite, 0, len);
    with(|h| h.maps.insert(map, pairs));
    Status::Ok
}

#[no_mangle]
pub unsafe extern "C" fn proxy_get_header_map_value(
    map: u32,
    key: *const u8,
    key_len: usize,
    ret_ptr: *mut *mut u8,
    ret_len: *mut usize,
) -> Status {
    let key = String::from_utf8_lossy(bytes(key, key_len)).to_ascii_lowercase();
    let value = with(|h| {
        h.maps
            .get(&map)
            .and_then(|m| m.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone()))
    });
    match value {
        Some(v) => {
            count(Kind::HeaderRead, v.len(), key_len);
            give(&v, ret_ptr, ret_len);
        }
        None => {
            count(Kind::HeaderRead, 0, key_len);
            return Status::NotFound;
        }
    }
    Status::Ok
}

#[no_mangle]
pub unsafe extern "C" fn proxy_remove_header_map_value(
    map: u32,
    key: *const u8,
    key_len: usize,
) -> Status {
    let key = String::from_utf8_lossy(bytes(key, key_len)).to_ascii_lowercase();
    count(Kind::HeaderRemove, 0, key_len);
    with(|h| {
        if let Some(m) = h.maps.get_mut(&map) {
            m.retain(|(k, _)| *k != key);
        }
    });
    Status::Ok
}

#[no_mangle]
pub unsafe extern "C" fn proxy_replace_header_map_value(
    map: u32,
    key: *const u8,
    key_len: usize,
    value: *const u8,
    value_len: usize,
) -> Status {
    let key = String::from_utf8_lossy(bytes(key, key_len)).to_ascii_lowercase();
    let value = bytes(value, value_len).to_vec();
    count(Kind::HeaderWrite, 0, key_len + value_len);
    with(|h| {
        let m = h.maps.entry(map).or_default();
        m.retain(|(k, _)| *k != key);
        m.push((key, value));
    });
    Status::Ok
}

#[no_mangle]
pub unsafe extern "C" fn proxy_add_header_map_value(
    map: u32,
    key: *const u8,
    key_len: usize,
    value: *const u8,
    value_len: usize,
) -> Status {
    let key = String::from_utf8_lossy(bytes(key, key_len)).to_ascii_lowercase();
    let value = bytes(value, value_len).to_vec();
    count(Kind::HeaderWrite, 0, key_len + value_len);
    with(|h| h.maps.entry(map).or_default().push((key, value)));
    Status::Ok
}

#[no_mangle]
pub unsafe extern "C" fn proxy_get_property(
    path: *const u8,
    path_len: usize,
    ret_ptr: *mut *mut u8,
    ret_len: *mut usize,
) -> Status {
    let path = bytes(path, path_len).to_vec();
    let value = with(|h| h.properties.get(&path).cloned());
    match value {
        Some(v) => {
            count(Kind::PropertyRead, v.len(), path_len);
            give(&v, ret_ptr, ret_len);
            Status::Ok
        }
        None => {
            count(Kind::PropertyRead, 0, path_len);
            Status::NotFound
        }
    }
}

#[no_mangle]
pub unsafe extern "C" fn proxy_set_property(
    path: *const u8,
    path_len: usize,
    value: *const u8,
    value_len: usize,
) -> Status {
    let path = bytes(path, path_len).to_vec();
    let value = bytes(value, value_len).to_vec();
    count(Kind::PropertyWrite, 0, path_len + value_len);
    with(|h| h.properties.insert(path, value));
    Status::Ok
}

#[no_mangle]
pub unsafe extern "C" fn proxy_get_shared_data(
    key: *const u8,
    key_len: usize,
    ret_ptr: *mut *mut u8,
    ret_len: *mut usize,
    ret_cas: *mut u32,
) -> Status {
    let key = bytes(key, key_len).to_vec();
    let value = with(|h| h.shared.get(&key).cloned());
    match value {
        Some((v, cas)) => {
            count(Kind::SharedRead, v.len(), key_len);
            give(&v, ret_ptr, ret_len);
            *ret_cas = cas;
            Status::Ok
        }
        None => {
            count(Kind::SharedRead, 0, key_len);
            Status::NotFound
        }
    }
}

#[no_mangle]
pub unsafe extern "C" fn proxy_set_shared_data(
    key: *const u8,
    key_len: usize,
    value: *const u8,
    value_len: usize,
    cas: u32,
) -> Status {
    let key = bytes(key, key_len).to_vec();
    let value = bytes(value, value_len).to_vec();
    count(Kind::SharedWrite, 0, key_len + value_len);
    with(|h| {
        // Envoy: a CAS of 0 writes unconditionally, a missing key is created whatever the CAS,
        // an existing one must match.
        if let Some((_, current)) = h.shared.get(&key) {
            if cas != 0 && cas != *current {
                return Status::CasMismatch;
            }
        }
        let next = h.next_cas;
        h.next_cas += 1;
        h.shared.insert(key, (value, next));
        Status::Ok
    })
}

#[no_mangle]
pub extern "C" fn proxy_register_shared_queue(_: *const u8, _: usize, _: *mut u32) -> Status {
    count(Kind::Other, 0, 0);
    Status::Ok
}

#[no_mangle]
pub extern "C" fn proxy_resolve_shared_queue(
    _: *const u8,
    _: usize,
    _: *const u8,
    _: usize,
    _: *mut u32,
) -> Status {
    count(Kind::Other, 0, 0);
    Status::NotFound
}

#[no_mangle]
pub extern "C" fn proxy_dequeue_shared_queue(_: u32, _: *mut *mut u8, _: *mut usize) -> Status {
    count(Kind::Other, 0, 0);
    Status::Empty
}

#[no_mangle]
pub extern "C" fn proxy_enqueue_shared_queue(_: u32, _: *const u8, _: usize) -> Status {
    count(Kind::Other, 0, 0);
    Status::Ok
}

#[no_mangle]
pub extern "C" fn proxy_continue_stream(_stream: u32) -> Status {
    count(Kind::Other, 0, 0);
    with(|h| h.resumed += 1);
    Status::Ok
}

#[no_mangle]
pub extern "C" fn proxy_close_stream(_stream: u32) -> Status {
    count(Kind::Other, 0, 0);
    Status::Ok
}

#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub extern "C" fn proxy_send_local_response(
    status: u32,
    _: *const u8,
    details_len: usize,
    _: *const u8,
    body_len: usize,
    _: *const u8,
    headers_len: usize,
    _: i32,
) -> Status {
    count(Kind::Other, 0, details_len + body_len + headers_len);
    with(|h| h.local_responses.push(status));
    Status::Ok
}

#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn proxy_http_call(
    _upstream: *const u8,
    upstream_len: usize,
    headers: *const u8,
    headers_len: usize,
    _body: *const u8,
    body_len: usize,
    _trailers: *const u8,
    trailers_len: usize,
    _timeout: u32,
    ret_token: *mut u32,
) -> Status {
    let headers = deserialize_map(bytes(headers, headers_len));
    count(
        Kind::Other,
        0,
        upstream_len + headers_len + body_len + trailers_len,
    );
    with(|h| {
        let token = h.callouts.len() as u32 + 1;
        h.callouts.push(Callout { token, headers });
        *ret_token = token;
    });
    Status::Ok
}

#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub extern "C" fn proxy_grpc_call(
    _: *const u8,
    _: usize,
    _: *const u8,
    _: usize,
    _: *const u8,
    _: usize,
    _: *const u8,
    _: usize,
    _: *const u8,
    _: usize,
    _: u32,
    _: *mut u32,
) -> Status {
    count(Kind::Other, 0, 0);
    Status::InternalFailure
}

#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub extern "C" fn proxy_grpc_stream(
    _: *const u8,
    _: usize,
    _: *const u8,
    _: usize,
    _: *const u8,
    _: usize,
    _: *const u8,
    _: usize,
    _: *mut u32,
) -> Status {
    count(Kind::Other, 0, 0);
    Status::InternalFailure
}

#[no_mangle]
pub extern "C" fn proxy_grpc_send(_: u32, _: *const u8, _: usize, _: bool) -> Status {
    count(Kind::Other, 0, 0);
    Status::InternalFailure
}

#[no_mangle]
pub extern "C" fn proxy_grpc_cancel(_: u32) -> Status {
    count(Kind::Other, 0, 0);
    Status::Ok
}

#[no_mangle]
pub extern "C" fn proxy_grpc_close(_: u32) -> Status {
    count(Kind::Other, 0, 0);
    Status::Ok
}

#[no_mangle]
pub unsafe extern "C" fn proxy_get_status(
    code: *mut u32,
    ret_ptr: *mut *mut u8,
    ret_len: *mut usize,
) -> Status {
    count(Kind::Other, 0, 0);
    *code = 0;
    *ret_ptr = std::ptr::null_mut();
    *ret_len = 0;
    Status::Ok
}

#[no_mangle]
pub extern "C" fn proxy_set_effective_context(_context: u32) -> Status {
    count(Kind::Other, 0, 0);
    Status::Ok
}

#[no_mangle]
pub extern "C" fn proxy_call_foreign_function(
    _: *const u8,
    _: usize,
    _: *const u8,
    _: usize,
    _: *mut *mut u8,
    _: *mut usize,
) -> Status {
    count(Kind::Other, 0, 0);
    Status::NotFound
}

#[no_mangle]
pub extern "C" fn proxy_done() -> Status {
    count(Kind::Other, 0, 0);
    Status::Ok
}

#[no_mangle]
pub unsafe extern "C" fn proxy_define_metric(
    _metric_type: u32,
    name: *const u8,
    name_len: usize,
    ret_id: *mut u32,
) -> Status {
    let name = String::from_utf8_lossy(bytes(name, name_len)).into_owned();
    count(Kind::Metric, 0, name_len);
    with(|h| {
        let id = match h.metric_names.iter().position(|n| *n == name) {
            Some(i) => i,
            None => {
                h.metric_names.push(name);
                h.metric_names.len() - 1
            }
        };
        *ret_id = id as u32;
    });
    Status::Ok
}

#[no_mangle]
pub unsafe extern "C" fn proxy_get_metric(_id: u32, ret: *mut u64) -> Status {
    count(Kind::Metric, 0, 0);
    *ret = 0;
    Status::Ok
}

#[no_mangle]
pub extern "C" fn proxy_record_metric(_id: u32, _value: u64) -> Status {
    count(Kind::Metric, 0, 0);
    Status::Ok
}

#[no_mangle]
pub extern "C" fn proxy_increment_metric(_id: u32, _offset: i64) -> Status {
    count(Kind::Metric, 0, 0);
    Status::Ok
}
