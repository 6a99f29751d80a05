//! The thin proxy-wasm layer: root and HTTP contexts and the host calls they make. Everything
//! that decides lives in the plain modules beside this one and is unit-tested natively.

pub mod headers;
pub mod http;
pub mod keys;
pub mod limits;
pub mod metrics;
pub mod phase;
pub mod pool;
pub mod root;
pub mod shared;
pub mod tokens;
pub mod upstream;
pub mod worker;

use std::time::UNIX_EPOCH;

/// Host clock in milliseconds since the Unix epoch (0 if the host cannot tell).
pub fn now_ms() -> u64 {
    proxy_wasm::hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
