//! Compare-and-swap updates of Envoy shared data, the only state the workers of one Envoy
//! share.

use proxy_wasm::hostcalls;
use proxy_wasm::types::Status;

const CAS_ATTEMPTS: usize = 32;

/// Envoy ignores the CAS when it creates a key, and compares it when the key exists. Its CAS
/// values count up from 1, so this one never matches: a write with it creates a missing key
/// and fails (CasMismatch) if another worker created the key first. Create-if-absent.
pub const CREATE_ONLY_CAS: u32 = u32::MAX;

/// The bytes under `key` and their CAS (`None`: the key does not exist).
pub fn read(key: &str) -> (Option<Vec<u8>>, Option<u32>) {
    match hostcalls::get_shared_data(key) {
        Ok((bytes, cas)) => (bytes, cas),
        Err(_) => (None, None),
    }
}

/// Creates `key` with `value` unless it exists.
pub fn create(key: &str, value: &[u8]) {
    let _ = hostcalls::set_shared_data(key, Some(value), Some(CREATE_ONLY_CAS));
}

/// Updates the value under `key`: `change` gets the current bytes (empty when missing) and
/// returns the new bytes, or `None` to leave it. Retried on CAS conflicts. Returns the bytes
/// written.
pub fn update(
    key: &str,
    empty: &[u8],
    change: impl Fn(&[u8]) -> Option<Vec<u8>>,
) -> Option<Vec<u8>> {
    for _ in 0..CAS_ATTEMPTS {
        let (bytes, cas) = read(key);
        let Some(cas) = cas else {
            create(key, empty);
            continue;
        };
        let next = change(bytes.as_deref().unwrap_or_default())?;
        match hostcalls::set_shared_data(key, Some(&next), Some(cas)) {
            Ok(()) => return Some(next),
            Err(Status::CasMismatch) => continue,
            Err(e) => {
                log::error!("azure-llm-filter: shared data write failed: {e:?}");
                return None;
            }
        }
    }
    log::warn!("azure-llm-filter: shared data key stayed contended after {CAS_ATTEMPTS} attempts");
    None
}
