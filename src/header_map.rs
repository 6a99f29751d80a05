//! A header map as the proxy-wasm host hands it over in one call (`proxy_get_header_map_pairs`),
//! read in place: one allocation for the whole map instead of two per header, and values that
//! are not UTF-8 do not stop anything.
//!
//! Envoy lets header values carry any byte but NUL, CR and LF (obs-text, RFC 9110 §5.5). The
//! SDK's `get_http_request_headers` turns every value into a `String` and panics on one that is
//! not UTF-8, which aborts the VM and fails every later request on that worker. Here such a
//! value reads as [`NOT_UTF8`]: no header the filter interprets (credentials, lengths, content
//! types, model names, paths) is valid with it, so it is refused or ignored like any other
//! malformed value.
//!
//! The wire format (proxy-wasm ABI 0.2): a little-endian u32 count, then per header the u32
//! lengths of its name and value, then the names and values, each followed by a NUL.

use std::ops::Range;

/// What a value that is not UTF-8 reads as (U+FFFD REPLACEMENT CHARACTER).
pub const NOT_UTF8: &str = "\u{FFFD}";

/// Headers in Envoy's order; names as Envoy holds them (lowercase).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderMap {
    bytes: Vec<u8>,
    /// (name, value) of each header, as ranges of `bytes`.
    entries: Vec<(Range<usize>, Range<usize>)>,
}

impl HeaderMap {
    /// Reads the serialised map; a map that does not follow the format reads as far as it
    /// does (the host never sends one).
    pub fn parse(bytes: Vec<u8>) -> HeaderMap {
        let word = |at: usize| -> Option<usize> {
            let b = bytes.get(at..at.checked_add(4)?)?;
            Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        };
        let count = word(0).unwrap_or(0);
        let mut entries = Vec::with_capacity(count.min(256));
        let mut at = count
            .checked_mul(8)
            .and_then(|n| n.checked_add(4))
            .unwrap_or(usize::MAX);
        for i in 0..count {
            let (Some(name_len), Some(value_len)) = (word(4 + i * 8), word(8 + i * 8)) else {
                break;
            };
            let Some(name) = span(at, name_len, bytes.len()) else {
                break;
            };
            let Some(value) = span(name.end + 1, value_len, bytes.len()) else {
                break;
            };
            at = value.end + 1;
            entries.push((name, value));
        }
        HeaderMap { bytes, entries }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn text(&self, range: &Range<usize>) -> &str {
        self.bytes
            .get(range.clone())
            .map_or(NOT_UTF8, |b| std::str::from_utf8(b).unwrap_or(NOT_UTF8))
    }

    /// Every (name, value), in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries
            .iter()
            .map(|(n, v)| (self.text(n), self.text(v)))
    }

    /// The first value of `name` (compared case-insensitively).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.entries.iter().find_map(|(n, v)| {
            let candidate = self.bytes.get(n.clone())?;
            candidate
                .eq_ignore_ascii_case(name.as_bytes())
                .then(|| self.text(v))
        })
    }

    /// Every value of `name`, in order.
    pub fn get_all<'m>(&'m self, name: &'m str) -> impl Iterator<Item = &'m str> + 'm {
        self.entries.iter().filter_map(move |(n, v)| {
            let candidate = self.bytes.get(n.clone())?;
            candidate
                .eq_ignore_ascii_case(name.as_bytes())
                .then(|| self.text(v))
        })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// The names, in order (a name given twice appears twice).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(n, _)| self.text(n))
    }
}

/// `len` bytes from `start`, followed by their NUL, within `total` bytes.
fn span(start: usize, len: usize, total: usize) -> Option<Range<usize>> {
    let end = start.checked_add(len)?;
    (end < total).then_some(start..end)
}

/// The serialised form of `headers` (what the host sends), for tests and fuzzing.
pub fn serialize(headers: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(headers.len() as u32).to_le_bytes());
    for (name, value) in headers {
        out.extend_from_slice(&(name.len() as u32).to_le_bytes());
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    }
    for (name, value) in headers {
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.extend_from_slice(value);
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(headers: &[(&str, &[u8])]) -> HeaderMap {
        HeaderMap::parse(serialize(headers))
    }

    #[test]
    fn reads_names_and_values_in_order() {
        let m = map(&[
            (":path", b"/v1/chat/completions"),
            ("authorization", b"Bearer a.b.c"),
            ("x-api-key", b"k1"),
            ("x-api-key", b"k2"),
            ("empty", b""),
        ]);
        assert_eq!(m.len(), 5);
        assert_eq!(m.get(":path"), Some("/v1/chat/completions"));
        assert_eq!(m.get("Authorization"), Some("Bearer a.b.c"));
        assert_eq!(m.get_all("x-api-key").collect::<Vec<_>>(), ["k1", "k2"]);
        assert_eq!(m.get("empty"), Some(""));
        assert_eq!(m.get("missing"), None);
        assert!(m.contains("X-API-KEY"));
        assert_eq!(
            m.names().collect::<Vec<_>>(),
            [":path", "authorization", "x-api-key", "x-api-key", "empty"]
        );
        assert_eq!(m.iter().nth(1), Some(("authorization", "Bearer a.b.c")));
    }

    #[test]
    fn a_value_that_is_not_utf8_reads_as_the_replacement_character() {
        let m = map(&[("x-odd", b"caf\xe9"), ("authorization", b"Bearer \xff.b.c")]);
        assert_eq!(m.get("x-odd"), Some(NOT_UTF8));
        assert_eq!(m.get("authorization"), Some(NOT_UTF8));
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn a_malformed_map_reads_as_far_as_it_goes_and_never_panics() {
        let good = serialize(&[("a", b"1"), ("bb", b"22")]);
        assert_eq!(HeaderMap::parse(Vec::new()), HeaderMap::default());
        for cut in 0..good.len() {
            let m = HeaderMap::parse(good[..cut].to_vec());
            assert!(m.len() <= 2);
        }
        // A count far larger than the bytes, lengths that overflow.
        let mut huge = vec![0xff, 0xff, 0xff, 0xff];
        huge.extend_from_slice(&[0xff; 16]);
        assert!(HeaderMap::parse(huge).is_empty());
        // A missing NUL after a value: that header is not read.
        let mut no_nul = serialize(&[("a", b"1")]);
        no_nul.pop();
        assert!(HeaderMap::parse(no_nul).is_empty());
    }
}
