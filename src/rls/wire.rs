//! The protobuf wire format of the rate limit service's messages (see the module docs of
//! `rls` for the fields): a small encoder for `RateLimitRequest` and a decoder for
//! `RateLimitResponse` that skips what it does not need and never panics on bad input.

// ---------------------------------------------------------------------------------------------
// Response

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Code {
    #[default]
    Unknown,
    Ok,
    OverLimit,
    /// A value this code does not know (proto3 enums are open).
    Other(i32),
}

impl Code {
    fn from_i32(v: i32) -> Code {
        match v {
            0 => Code::Unknown,
            1 => Code::Ok,
            2 => Code::OverLimit,
            v => Code::Other(v),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Unit {
    #[default]
    Unknown,
    Second,
    Minute,
    Hour,
    Day,
    Month,
    Year,
    Week,
    Other(i32),
}

impl Unit {
    fn from_i32(v: i32) -> Unit {
        match v {
            0 => Unit::Unknown,
            1 => Unit::Second,
            2 => Unit::Minute,
            3 => Unit::Hour,
            4 => Unit::Day,
            5 => Unit::Month,
            6 => Unit::Year,
            7 => Unit::Week,
            v => Unit::Other(v),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RateLimit {
    pub name: String,
    pub requests_per_unit: u32,
    pub unit: Unit,
}

/// `google.protobuf.Duration`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Duration {
    pub seconds: i64,
    pub nanos: i32,
}

impl Duration {
    /// Whole seconds, rounded up, never below 0.
    pub fn ceil_secs(&self) -> u64 {
        let s = u64::try_from(self.seconds).unwrap_or(0);
        if self.seconds >= 0 && self.nanos > 0 {
            s.saturating_add(1)
        } else {
            s
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DescriptorStatus {
    pub code: Code,
    pub current_limit: Option<RateLimit>,
    pub limit_remaining: u32,
    pub duration_until_reset: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RlsResponse {
    pub overall_code: Code,
    pub statuses: Vec<DescriptorStatus>,
    /// `response_headers_to_add` (Limitador's `--rate-limit-headers`, envoyproxy/ratelimit's
    /// `x-ratelimit-*`): key and value (`raw_value` when `value` is empty).
    pub response_headers_to_add: Vec<(String, String)>,
}

impl RlsResponse {
    /// Seconds until the longest-blocking OVER_LIMIT descriptor resets (at least 1), when the
    /// RLS says (envoyproxy/ratelimit does, Limitador does not).
    pub fn retry_after_s(&self) -> Option<u64> {
        self.statuses
            .iter()
            .filter(|s| s.code == Code::OverLimit)
            .filter_map(|s| s.duration_until_reset)
            .map(|d| d.ceil_secs().max(1))
            .max()
    }

    /// The OK descriptor with the least left: (limit, remaining), when the RLS says.
    pub fn tightest(&self) -> Option<(&RateLimit, u32)> {
        self.statuses
            .iter()
            .filter_map(|s| s.current_limit.as_ref().map(|l| (l, s.limit_remaining)))
            .min_by_key(|(_, remaining)| *remaining)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RlsError {
    /// The message ends inside a field.
    Truncated,
    /// A varint longer than 10 bytes.
    VarintTooLong,
    /// Wire type 6 or 7, field number 0, or an unbalanced group.
    Malformed(&'static str),
}

impl std::fmt::Display for RlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RlsError::Truncated => write!(f, "truncated protobuf message"),
            RlsError::VarintTooLong => write!(f, "protobuf varint longer than 10 bytes"),
            RlsError::Malformed(why) => write!(f, "malformed protobuf message: {why}"),
        }
    }
}

impl std::error::Error for RlsError {}

// ---------------------------------------------------------------------------------------------
// Encoding (proto3: fields at their default value are left out, as protobuf encoders do)

pub(super) const VARINT: u8 = 0;
pub(super) const FIXED64: u8 = 1;
pub(super) const LEN: u8 = 2;
pub(super) const START_GROUP: u8 = 3;
pub(super) const END_GROUP: u8 = 4;
pub(super) const FIXED32: u8 = 5;

pub(super) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub(super) fn put_key(out: &mut Vec<u8>, field: u32, wire_type: u8) {
    put_varint(out, (u64::from(field) << 3) | u64::from(wire_type));
}

pub(super) fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_key(out, field, LEN);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

pub(super) fn put_string(out: &mut Vec<u8>, field: u32, s: &str) {
    if !s.is_empty() {
        put_bytes(out, field, s.as_bytes());
    }
}

/// The bytes of a `RateLimitRequest` (also the message of `CheckRateLimit` and `Report`).
pub fn encode_should_rate_limit(
    domain: &str,
    descriptors: &[Vec<(String, String)>],
    hits_addend: u32,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + domain.len() + 48 * descriptors.len());
    put_string(&mut out, 1, domain);
    let mut descriptor = Vec::new();
    let mut entry = Vec::new();
    for d in descriptors {
        descriptor.clear();
        for (key, value) in d {
            entry.clear();
            put_string(&mut entry, 1, key);
            put_string(&mut entry, 2, value);
            put_bytes(&mut descriptor, 1, &entry);
        }
        put_bytes(&mut out, 2, &descriptor);
    }
    if hits_addend != 0 {
        put_key(&mut out, 3, VARINT);
        put_varint(&mut out, u64::from(hits_addend));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Decoding

/// Groups (deprecated, never used by these messages) nest at most this deep when skipped.
const MAX_GROUP_DEPTH: usize = 64;

enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    /// Fixed32, fixed64 or a group: skipped.
    Other,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn varint(&mut self) -> Result<u64, RlsError> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let b = *self.buf.get(self.pos).ok_or(RlsError::Truncated)?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(RlsError::VarintTooLong)
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], RlsError> {
        let n = usize::try_from(n).map_err(|_| RlsError::Truncated)?;
        let end = self.pos.checked_add(n).ok_or(RlsError::Truncated)?;
        let bytes = self.buf.get(self.pos..end).ok_or(RlsError::Truncated)?;
        self.pos = end;
        Ok(bytes)
    }

    fn key(&mut self) -> Result<(u64, u8), RlsError> {
        let key = self.varint()?;
        let field = key >> 3;
        let wire_type = (key & 7) as u8;
        if field == 0 {
            return Err(RlsError::Malformed("field number 0"));
        }
        Ok((field, wire_type))
    }

    /// The next field: its number and value (groups and fixed-width values skipped).
    fn field(&mut self) -> Result<(u64, Value<'a>), RlsError> {
        let (field, wire_type) = self.key()?;
        let value = match wire_type {
            VARINT => Value::Varint(self.varint()?),
            LEN => {
                let n = self.varint()?;
                Value::Bytes(self.take(n)?)
            }
            FIXED64 => {
                self.take(8)?;
                Value::Other
            }
            FIXED32 => {
                self.take(4)?;
                Value::Other
            }
            START_GROUP => {
                self.skip_group(field)?;
                Value::Other
            }
            END_GROUP => return Err(RlsError::Malformed("end of a group that was not started")),
            _ => return Err(RlsError::Malformed("wire type 6 or 7")),
        };
        Ok((field, value))
    }

    /// Skips a group's fields up to its END_GROUP (iteratively; nested groups are counted).
    fn skip_group(&mut self, field: u64) -> Result<(), RlsError> {
        let mut open = vec![field];
        while let Some(&current) = open.last() {
            let (f, wire_type) = self.key()?;
            match wire_type {
                VARINT => {
                    self.varint()?;
                }
                LEN => {
                    let n = self.varint()?;
                    self.take(n)?;
                }
                FIXED64 => {
                    self.take(8)?;
                }
                FIXED32 => {
                    self.take(4)?;
                }
                START_GROUP => {
                    if open.len() >= MAX_GROUP_DEPTH {
                        return Err(RlsError::Malformed("groups nested too deep"));
                    }
                    open.push(f);
                }
                END_GROUP => {
                    if f != current {
                        return Err(RlsError::Malformed("group ends with another field number"));
                    }
                    open.pop();
                }
                _ => return Err(RlsError::Malformed("wire type 6 or 7")),
            }
        }
        Ok(())
    }
}

/// proto3 `int32` / enum from a varint: the low 32 bits, as protobuf parsers read them.
fn as_i32(v: u64) -> i32 {
    v as u32 as i32
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub(super) fn decode_rate_limit(bytes: &[u8], into: &mut RateLimit) -> Result<(), RlsError> {
    let mut r = Reader::new(bytes);
    while !r.done() {
        match r.field()? {
            (1, Value::Varint(v)) => into.requests_per_unit = v as u32,
            (2, Value::Varint(v)) => into.unit = Unit::from_i32(as_i32(v)),
            (3, Value::Bytes(b)) => into.name = text(b),
            _ => {}
        }
    }
    Ok(())
}

fn decode_duration(bytes: &[u8], into: &mut Duration) -> Result<(), RlsError> {
    let mut r = Reader::new(bytes);
    while !r.done() {
        match r.field()? {
            (1, Value::Varint(v)) => into.seconds = v as i64,
            (2, Value::Varint(v)) => into.nanos = as_i32(v),
            _ => {}
        }
    }
    Ok(())
}

fn decode_status(bytes: &[u8]) -> Result<DescriptorStatus, RlsError> {
    let mut s = DescriptorStatus::default();
    let mut r = Reader::new(bytes);
    while !r.done() {
        match r.field()? {
            (1, Value::Varint(v)) => s.code = Code::from_i32(as_i32(v)),
            // Embedded messages seen twice merge, as in protobuf.
            (2, Value::Bytes(b)) => {
                decode_rate_limit(b, s.current_limit.get_or_insert_with(RateLimit::default))?
            }
            (3, Value::Varint(v)) => s.limit_remaining = v as u32,
            (4, Value::Bytes(b)) => decode_duration(
                b,
                s.duration_until_reset.get_or_insert_with(Duration::default),
            )?,
            _ => {}
        }
    }
    Ok(s)
}

fn decode_header(bytes: &[u8]) -> Result<(String, String), RlsError> {
    let (mut key, mut value, mut raw) = (String::new(), String::new(), String::new());
    let mut r = Reader::new(bytes);
    while !r.done() {
        match r.field()? {
            (1, Value::Bytes(b)) => key = text(b),
            (2, Value::Bytes(b)) => value = text(b),
            (3, Value::Bytes(b)) => raw = text(b),
            _ => {}
        }
    }
    Ok((key, if value.is_empty() { raw } else { value }))
}

/// Decodes a `RateLimitResponse`; unknown fields of every wire type are skipped, fields of a
/// known number but an unexpected wire type too. Never panics.
pub fn decode_should_rate_limit_response(bytes: &[u8]) -> Result<RlsResponse, RlsError> {
    let mut resp = RlsResponse::default();
    let mut r = Reader::new(bytes);
    while !r.done() {
        match r.field()? {
            (1, Value::Varint(v)) => resp.overall_code = Code::from_i32(as_i32(v)),
            (2, Value::Bytes(b)) => resp.statuses.push(decode_status(b)?),
            (3, Value::Bytes(b)) => resp.response_headers_to_add.push(decode_header(b)?),
            _ => {}
        }
    }
    Ok(resp)
}
