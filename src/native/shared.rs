//! Shared data for the native build: process memory that every worker thread reads and
//! writes, with Envoy's shared-data semantics (`src/host/shared.rs` relies on them): each key
//! has a CAS that counts up from 1; a write with a CAS other than 0 fails when the key exists
//! and its CAS differs; a write that creates a key ignores the CAS. One lock over the map makes
//! every read and every compare-and-write atomic, so token slots, JWKS, budget counters and
//! target health never tear and the all-or-none reservation holds across workers.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

struct Entry {
    value: Vec<u8>,
    cas: u32,
}

fn map() -> &'static Mutex<HashMap<Vec<u8>, Entry>> {
    static MAP: OnceLock<Mutex<HashMap<Vec<u8>, Entry>>> = OnceLock::new();
    MAP.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The value under `key` and its CAS.
pub fn get(key: &[u8]) -> Option<(Vec<u8>, u32)> {
    // A worker that panicked while holding the lock left the map whole (every write is one
    // insert), so a poisoned lock is still usable.
    let map = map().lock().unwrap_or_else(|p| p.into_inner());
    map.get(key).map(|e| (e.value.clone(), e.cas))
}

/// Writes `value` under `key` unless `cas` is not 0 and differs from the key's. `false`: CAS
/// mismatch.
pub fn set(key: &[u8], value: &[u8], cas: u32) -> bool {
    let mut map = map().lock().unwrap_or_else(|p| p.into_inner());
    match map.get_mut(key) {
        Some(e) => {
            if cas != 0 && cas != e.cas {
                return false;
            }
            e.value.clear();
            e.value.extend_from_slice(value);
            e.cas = next_cas(e.cas);
            true
        }
        None => {
            map.insert(
                key.to_vec(),
                Entry {
                    value: value.to_vec(),
                    cas: 1,
                },
            );
            true
        }
    }
}

/// CAS values count up from 1 and skip 0 (no check) and `u32::MAX` (the filter's
/// create-only CAS, which must never match).
fn next_cas(cas: u32) -> u32 {
    match cas.wrapping_add(1) {
        0 | u32::MAX => 1,
        n => n,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cas_semantics_match_envoy_shared_data() {
        let key = b"native-shared-test-key";
        assert!(get(key).is_none());
        // Creating ignores the CAS (the filter's create-only CAS is u32::MAX).
        assert!(set(key, b"a", u32::MAX));
        let (v, cas) = get(key).unwrap_or_default();
        assert_eq!(v, b"a");
        assert_eq!(cas, 1);
        // An existing key: the create-only CAS never matches.
        assert!(!set(key, b"b", u32::MAX));
        // A stale CAS fails, the current one succeeds and moves the CAS on.
        assert!(set(key, b"c", cas));
        assert!(!set(key, b"d", cas));
        let (v, cas2) = get(key).unwrap_or_default();
        assert_eq!(v, b"c");
        assert_eq!(cas2, 2);
        // CAS 0: unconditional.
        assert!(set(key, b"e", 0));
    }

    #[test]
    fn concurrent_cas_increments_lose_nothing() {
        let key: &'static [u8] = b"native-shared-counter";
        set(key, b"0", 0);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(move || {
                    for _ in 0..500 {
                        loop {
                            let (v, cas) = get(key).unwrap_or_default();
                            let n: u64 = std::str::from_utf8(&v)
                                .ok()
                                .and_then(|s| s.parse().ok())
                                .unwrap_or(0);
                            if set(key, (n + 1).to_string().as_bytes(), cas) {
                                break;
                            }
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            let _ = t.join();
        }
        let (v, _) = get(key).unwrap_or_default();
        assert_eq!(v, b"2000");
    }
}
