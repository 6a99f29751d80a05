//! PII and secret detectors: hand-written scanners over the text's bytes (every structure they
//! look for is ASCII, so UTF-8 text is scanned safely byte by byte), with the checks that keep
//! false positives down: Luhn and issuer prefixes for payment cards, the ISO 13616 mod-97
//! checksum and country lengths for IBANs, the SSA's never-issued ranges for US SSNs, octet
//! ranges for IPv4, a full parse for IPv6, the shape of JWTs and of Azure keys.
//!
//! Each detector returns the byte spans of what it found; a span never splits a character.

use std::net::Ipv6Addr;

/// What a detector looks for (the names are the config's and the metrics').
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PiiKind {
    Email,
    Phone,
    PaymentCard,
    Iban,
    UsSsn,
    IpAddress,
    Jwt,
    AzureKey,
}

impl PiiKind {
    pub const ALL: [PiiKind; 8] = [
        PiiKind::Email,
        PiiKind::Phone,
        PiiKind::PaymentCard,
        PiiKind::Iban,
        PiiKind::UsSsn,
        PiiKind::IpAddress,
        PiiKind::Jwt,
        PiiKind::AzureKey,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PiiKind::Email => "email",
            PiiKind::Phone => "phone",
            PiiKind::PaymentCard => "payment_card",
            PiiKind::Iban => "iban",
            PiiKind::UsSsn => "us_ssn",
            PiiKind::IpAddress => "ip_address",
            PiiKind::Jwt => "jwt",
            PiiKind::AzureKey => "azure_key",
        }
    }

    pub fn from_name(name: &str) -> Option<PiiKind> {
        PiiKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The spans of what this detector finds in `text`, left to right, not overlapping.
    pub fn find(self, text: &str) -> Vec<(usize, usize)> {
        let b = text.as_bytes();
        let mut out = Vec::new();
        match self {
            PiiKind::Email => emails(b, &mut out),
            PiiKind::Phone => phones(b, &mut out),
            PiiKind::PaymentCard => cards(b, &mut out),
            PiiKind::Iban => ibans(b, &mut out),
            PiiKind::UsSsn => ssns(b, &mut out),
            PiiKind::IpAddress => ips(b, &mut out),
            PiiKind::Jwt => jwts(b, &mut out),
            PiiKind::AzureKey => azure_keys(b, &mut out),
        }
        out
    }
}

fn at(b: &[u8], i: usize) -> u8 {
    b.get(i).copied().unwrap_or(0)
}

/// The byte before `i` (0 at the start).
fn before(b: &[u8], i: usize) -> u8 {
    i.checked_sub(1).map_or(0, |j| at(b, j))
}

fn is_word(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

// ---------------------------------------------------------------------------------------------
// E-mail

fn is_local(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'%' | b'+' | b'-')
}

fn emails(b: &[u8], out: &mut Vec<(usize, usize)>) {
    let mut from = 0;
    let mut i = 0;
    while i < b.len() {
        if at(b, i) != b'@' {
            i += 1;
            continue;
        }
        // Local part: back from the @ (not before the previous match).
        let mut start = i;
        while start > from && is_local(before(b, start)) {
            start -= 1;
        }
        while start < i && at(b, start) == b'.' {
            start += 1;
        }
        let local_ok = start < i && at(b, i - 1) != b'.';
        // Domain: labels of [A-Za-z0-9-], at least two, the last alphabetic (2+).
        let mut end = i + 1;
        let mut last_dot = None;
        let mut label_len = 0;
        while end < b.len() {
            let c = at(b, end);
            if c.is_ascii_alphanumeric() || c == b'-' {
                label_len += 1;
                end += 1;
            } else if c == b'.' && label_len > 0 && at(b, end + 1).is_ascii_alphanumeric() {
                last_dot = Some(end);
                label_len = 0;
                end += 1;
            } else {
                break;
            }
        }
        let tld_ok = last_dot.is_some_and(|d| {
            let tld = b.get(d + 1..end).unwrap_or_default();
            tld.len() >= 2 && tld.iter().all(u8::is_ascii_alphabetic)
        });
        if local_ok && tld_ok {
            out.push((start, end));
            from = end;
            i = end;
        } else {
            i += 1;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Digit runs with separators (cards, phones)

/// Digits from `start`, single separators from `seps` allowed between digits; returns (end,
/// digits). Stops before a separator that no digit follows.
fn digit_run(b: &[u8], start: usize, seps: &[u8], max_digits: usize) -> (usize, Vec<u8>) {
    let mut digits = Vec::new();
    let mut i = start;
    let mut end = start;
    while i < b.len() && digits.len() < max_digits + 1 {
        let c = at(b, i);
        if c.is_ascii_digit() {
            digits.push(c - b'0');
            i += 1;
            end = i;
        } else if seps.contains(&c) && at(b, i + 1).is_ascii_digit() && end == i {
            i += 1;
        } else {
            break;
        }
    }
    (end, digits)
}

fn luhn(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, d) in digits.iter().rev().enumerate() {
        let mut v = u32::from(*d);
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum % 10 == 0
}

/// Issuer ranges and lengths of the major networks.
fn card_issuer(d: &[u8]) -> bool {
    let prefix = |k: usize| d.iter().take(k).fold(0u32, |a, x| a * 10 + u32::from(*x));
    let len = d.len();
    let visa = prefix(1) == 4 && matches!(len, 13 | 16 | 19);
    let mastercard =
        ((51..=55).contains(&prefix(2)) || (2221..=2720).contains(&prefix(4))) && len == 16;
    let amex = matches!(prefix(2), 34 | 37) && len == 15;
    let discover = (prefix(4) == 6011 || (644..=649).contains(&prefix(3)) || prefix(2) == 65)
        && (16..=19).contains(&len);
    let jcb = (3528..=3589).contains(&prefix(4)) && (16..=19).contains(&len);
    let diners = ((300..=305).contains(&prefix(3)) || matches!(prefix(2), 36 | 38 | 39))
        && (14..=19).contains(&len);
    let unionpay = prefix(2) == 62 && (16..=19).contains(&len);
    let maestro = (prefix(2) == 50 || (56..=69).contains(&prefix(2))) && (12..=19).contains(&len);
    visa || mastercard || amex || discover || jcb || diners || unionpay || maestro
}

fn cards(b: &[u8], out: &mut Vec<(usize, usize)>) {
    let mut i = 0;
    while i < b.len() {
        let c = at(b, i);
        if !c.is_ascii_digit() || is_word(before(b, i)) {
            i += 1;
            continue;
        }
        let (end, digits) = digit_run(b, i, b" -", 19);
        let bounded = !is_word(at(b, end));
        if bounded && (12..=19).contains(&digits.len()) && card_issuer(&digits) && luhn(&digits) {
            out.push((i, end));
        }
        i = end.max(i + 1);
    }
}

fn phones(b: &[u8], out: &mut Vec<(usize, usize)>) {
    let mut i = 0;
    while i < b.len() {
        let c = at(b, i);
        let prev = before(b, i);
        if is_word(prev) || prev == b'+' {
            i += 1;
            continue;
        }
        // International: +<8..15 digits>, single spaces, dashes, dots or a (..) area code.
        if c == b'+' && at(b, i + 1).is_ascii_digit() {
            let (end, digits) = international(b, i + 1);
            if (8..=15).contains(&digits) && !is_word(at(b, end)) {
                out.push((i, end));
                i = end;
                continue;
            }
        }
        // North American: (ddd) ddd-dddd, ddd-ddd-dddd, ddd.ddd.dddd, ddd ddd dddd.
        if let Some(end) = nanp(b, i) {
            out.push((i, end));
            i = end;
            continue;
        }
        i += 1;
    }
}

/// Digits of an international number after the `+`: (end, digit count). Groups are
/// separated by one space, dash or dot; a parenthesised group (`+44 (0)20`, `+1 (555)`) may
/// follow a group.
fn international(b: &[u8], start: usize) -> (usize, usize) {
    let mut i = start;
    let mut end = start;
    let mut digits = 0;
    while i < b.len() && digits <= 15 {
        let c = at(b, i);
        let after_group = end == i || (end + 1 == i && at(b, end) == b' ');
        if c.is_ascii_digit() {
            digits += 1;
            i += 1;
            end = i;
        } else if matches!(c, b' ' | b'-' | b'.')
            && end == i
            && (at(b, i + 1).is_ascii_digit() || at(b, i + 1) == b'(')
        {
            i += 1;
        } else if c == b'(' && after_group {
            let close = (i + 1..(i + 6).min(b.len())).find(|&j| at(b, j) == b')');
            match close {
                Some(j) if j > i + 1 && (i + 1..j).all(|k| at(b, k).is_ascii_digit()) => {
                    digits += j - i - 1;
                    i = j + 1;
                    end = i;
                    if at(b, i) == b' ' && at(b, i + 1).is_ascii_digit() {
                        i += 1;
                    }
                }
                _ => break,
            }
        } else {
            break;
        }
    }
    (end, digits)
}

fn nanp(b: &[u8], start: usize) -> Option<usize> {
    let digits = |from: usize, n: usize| (from..from + n).all(|k| at(b, k).is_ascii_digit());
    let mut i = start;
    // Optional country code 1.
    if at(b, i) == b'1' && matches!(at(b, i + 1), b' ' | b'-' | b'.') {
        i += 2;
    }
    if at(b, i) == b'(' {
        if !(digits(i + 1, 3) && at(b, i + 4) == b')') {
            return None;
        }
        i += 5;
        if at(b, i) == b' ' {
            i += 1;
        }
        if !digits(i, 3) {
            return None;
        }
        i += 3;
        if !matches!(at(b, i), b'-' | b' ' | b'.') {
            return None;
        }
    } else {
        if !digits(i, 3) {
            return None;
        }
        let sep = at(b, i + 3);
        if !matches!(sep, b'-' | b'.' | b' ') || !digits(i + 4, 3) || at(b, i + 7) != sep {
            return None;
        }
        i += 7;
    }
    i += 1;
    if !digits(i, 4) {
        return None;
    }
    i += 4;
    (!is_word(at(b, i)) && at(b, i) != b'-').then_some(i)
}

// ---------------------------------------------------------------------------------------------
// IBAN

/// ISO 13616 IBAN lengths by country (SWIFT's IBAN registry).
const IBAN_LENGTHS: &[(&[u8; 2], usize)] = &[
    (b"AD", 24),
    (b"AE", 23),
    (b"AL", 28),
    (b"AT", 20),
    (b"AZ", 28),
    (b"BA", 20),
    (b"BE", 16),
    (b"BG", 22),
    (b"BH", 22),
    (b"BR", 29),
    (b"BY", 28),
    (b"CH", 21),
    (b"CR", 22),
    (b"CY", 28),
    (b"CZ", 24),
    (b"DE", 22),
    (b"DK", 18),
    (b"DO", 28),
    (b"EE", 20),
    (b"EG", 29),
    (b"ES", 24),
    (b"FI", 18),
    (b"FO", 18),
    (b"FR", 27),
    (b"GB", 22),
    (b"GE", 22),
    (b"GI", 23),
    (b"GL", 18),
    (b"GR", 27),
    (b"GT", 28),
    (b"HR", 21),
    (b"HU", 28),
    (b"IE", 22),
    (b"IL", 23),
    (b"IQ", 23),
    (b"IS", 26),
    (b"IT", 27),
    (b"JO", 30),
    (b"KW", 30),
    (b"KZ", 20),
    (b"LB", 28),
    (b"LC", 32),
    (b"LI", 21),
    (b"LT", 20),
    (b"LU", 20),
    (b"LV", 21),
    (b"MC", 27),
    (b"MD", 24),
    (b"ME", 22),
    (b"MK", 19),
    (b"MR", 27),
    (b"MT", 31),
    (b"MU", 30),
    (b"NL", 18),
    (b"NO", 15),
    (b"PK", 24),
    (b"PL", 28),
    (b"PS", 29),
    (b"PT", 25),
    (b"QA", 29),
    (b"RO", 24),
    (b"RS", 22),
    (b"SA", 24),
    (b"SC", 31),
    (b"SE", 24),
    (b"SI", 19),
    (b"SK", 24),
    (b"SM", 27),
    (b"ST", 25),
    (b"SV", 28),
    (b"TL", 23),
    (b"TN", 24),
    (b"TR", 26),
    (b"UA", 29),
    (b"VA", 22),
    (b"VG", 24),
    (b"XK", 20),
];

fn iban_length(country: [u8; 2]) -> Option<usize> {
    IBAN_LENGTHS
        .iter()
        .find(|(c, _)| **c == country)
        .map(|(_, n)| *n)
}

/// The ISO 7064 mod-97 check: country and check digits moved to the end, letters as 10..35.
fn iban_checksum_ok(chars: &[u8]) -> bool {
    let mut rem: u32 = 0;
    let (head, tail) = chars.split_at(4.min(chars.len()));
    for &c in tail.iter().chain(head) {
        let v = match c {
            b'0'..=b'9' => u32::from(c - b'0'),
            b'A'..=b'Z' => u32::from(c - b'A') + 10,
            _ => return false,
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

fn ibans(b: &[u8], out: &mut Vec<(usize, usize)>) {
    let mut i = 0;
    while i + 4 <= b.len() {
        let starts = at(b, i).is_ascii_alphabetic()
            && at(b, i + 1).is_ascii_alphabetic()
            && at(b, i + 2).is_ascii_digit()
            && at(b, i + 3).is_ascii_digit()
            && !is_word(before(b, i));
        let country = [
            at(b, i).to_ascii_uppercase(),
            at(b, i + 1).to_ascii_uppercase(),
        ];
        let Some(len) = starts.then(|| iban_length(country)).flatten() else {
            i += 1;
            continue;
        };
        // Alphanumerics, optionally in space-separated groups, up to the country's length.
        let mut chars = Vec::with_capacity(len);
        let mut j = i;
        let mut end = i;
        while j < b.len() && chars.len() < len {
            let c = at(b, j);
            if c.is_ascii_alphanumeric() {
                chars.push(c.to_ascii_uppercase());
                j += 1;
                end = j;
            } else if c == b' ' && end == j && at(b, j + 1).is_ascii_alphanumeric() {
                j += 1;
            } else {
                break;
            }
        }
        if chars.len() == len && !is_word(at(b, end)) && iban_checksum_ok(&chars) {
            out.push((i, end));
            i = end;
        } else {
            i += 1;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// US SSN

fn ssns(b: &[u8], out: &mut Vec<(usize, usize)>) {
    let num = |from: usize, n: usize| -> Option<u32> {
        let mut v = 0;
        for k in from..from + n {
            let c = at(b, k);
            if !c.is_ascii_digit() {
                return None;
            }
            v = v * 10 + u32::from(c - b'0');
        }
        Some(v)
    };
    let mut i = 0;
    while i + 11 <= b.len() {
        let sep = at(b, i + 3);
        let shaped = !is_word(before(b, i))
            && matches!(sep, b'-' | b' ')
            && at(b, i + 6) == sep
            && !is_word(at(b, i + 11))
            && at(b, i + 11) != b'-';
        if let (true, Some(area), Some(group), Some(serial)) =
            (shaped, num(i, 3), num(i + 4, 2), num(i + 7, 4))
        {
            // Never issued: area 000, 666, 900-999; group 00; serial 0000.
            if area != 0 && area != 666 && area < 900 && group != 0 && serial != 0 {
                out.push((i, i + 11));
                i += 11;
                continue;
            }
        }
        i += 1;
    }
}

// ---------------------------------------------------------------------------------------------
// IP addresses

fn ips(b: &[u8], out: &mut Vec<(usize, usize)>) {
    let mut i = 0;
    while i < b.len() {
        let c = at(b, i);
        let prev = before(b, i);
        if let Some(end) = ipv4(b, i).filter(|_| !is_word(prev) && prev != b'.') {
            out.push((i, end));
            i = end;
            continue;
        }
        if (c.is_ascii_hexdigit() || c == b':') && !is_word(prev) && prev != b':' {
            let mut end = i;
            while end < b.len() && end - i < 45 {
                let d = at(b, end);
                if d.is_ascii_hexdigit() || d == b':' || d == b'.' {
                    end += 1;
                } else {
                    break;
                }
            }
            // A trailing dot ends a sentence, not the address.
            while end > i && at(b, end - 1) == b'.' {
                end -= 1;
            }
            let token = b.get(i..end).unwrap_or_default();
            let colons = token.iter().filter(|&&x| x == b':').count();
            if colons >= 2 && !is_word(at(b, end)) {
                if let Ok(s) = std::str::from_utf8(token) {
                    if s.parse::<Ipv6Addr>().is_ok() {
                        out.push((i, end));
                        i = end;
                        continue;
                    }
                }
            }
        }
        i += 1;
    }
}

/// A dotted quad at `i` (octets 0..=255 without leading zeros), not part of a longer dotted
/// number such as a version string.
fn ipv4(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i;
    for part in 0..4 {
        let start = j;
        while j < b.len() && j - start < 3 && at(b, j).is_ascii_digit() {
            j += 1;
        }
        let octet = b.get(start..j).unwrap_or_default();
        let ok = !octet.is_empty()
            && (octet.len() == 1 || octet.first() != Some(&b'0'))
            && std::str::from_utf8(octet)
                .ok()
                .and_then(|s| s.parse::<u16>().ok())
                .is_some_and(|v| v <= 255);
        if !ok {
            return None;
        }
        if part < 3 {
            if at(b, j) != b'.' {
                return None;
            }
            j += 1;
        }
    }
    let next = at(b, j);
    let longer =
        next.is_ascii_digit() || is_word(next) || (next == b'.' && at(b, j + 1).is_ascii_digit());
    (!longer).then_some(j)
}

// ---------------------------------------------------------------------------------------------
// Secrets

fn is_b64url(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'-' || c == b'_'
}

/// `eyJ<header>.eyJ<claims>.<signature>`: a JSON header and claims, base64url.
fn jwts(b: &[u8], out: &mut Vec<(usize, usize)>) {
    let mut i = 0;
    while i + 3 <= b.len() {
        if b.get(i..i + 3) != Some(b"eyJ") || is_b64url(before(b, i)) {
            i += 1;
            continue;
        }
        let segment = |from: usize| {
            let mut e = from;
            while e < b.len() && is_b64url(at(b, e)) {
                e += 1;
            }
            e
        };
        let h_end = segment(i);
        let claims = h_end + 1;
        let ok_claims = at(b, h_end) == b'.' && b.get(claims..claims + 3) == Some(b"eyJ");
        let c_end = segment(claims);
        let sig_end = segment(c_end + 1);
        if ok_claims && h_end - i >= 10 && c_end - claims >= 10 && at(b, c_end) == b'.' {
            // An unsigned token (empty signature) is still a token.
            let end = if sig_end > c_end + 1 {
                sig_end
            } else {
                c_end + 1
            };
            out.push((i, end));
            i = end;
        } else {
            i += 1;
        }
    }
}

/// Azure keys: the 84-character identifiable keys (Microsoft's common annotated security key
/// format, signature `JQQJ9` at offset 52), Entra client secrets (`<3 chars><digit>Q~...`),
/// storage `AccountKey=` values, SAS `sig=` signatures, and 32-hex-digit resource keys after a
/// key-like word (`api-key`, `key`, `secret`, `subscription`, `password`, `token`).
fn azure_keys(b: &[u8], out: &mut Vec<(usize, usize)>) {
    let mut i = 0;
    while i < b.len() {
        if let Some(end) = azure_key_at(b, i) {
            out.push((i, end));
            i = end;
        } else {
            i += 1;
        }
    }
}

fn azure_key_at(b: &[u8], i: usize) -> Option<usize> {
    let prev = before(b, i);
    let run = |from: usize, ok: fn(u8) -> bool| {
        let mut e = from;
        while e < b.len() && ok(at(b, e)) {
            e += 1;
        }
        e
    };
    let alnum = |c: u8| c.is_ascii_alphanumeric();
    // Identifiable keys.
    if alnum(at(b, i)) && !alnum(prev) {
        let end = run(i, alnum);
        if end - i == 84 || end - i == 88 {
            let sig = b.get(i + 52..i + 57);
            if sig == Some(b"JQQJ9") && matches!(at(b, i + 57), b'9' | b'D' | b'H') {
                return Some(end);
            }
        }
    }
    // Entra client secrets: 3 chars, a digit, `Q~`, 31 to 34 more.
    let secret = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'~' | b'.' | b'-');
    if secret(at(b, i)) && !secret(prev) {
        let end = run(i, secret);
        let len = end - i;
        if (38..=41).contains(&len)
            && at(b, i + 3).is_ascii_digit()
            && b.get(i + 4..i + 6) == Some(b"Q~")
        {
            return Some(end);
        }
    }
    // Connection-string and SAS values.
    for (prefix, min) in [
        (&b"AccountKey="[..], 80),
        (&b"SharedAccessKey="[..], 40),
        (&b"sig="[..], 40),
    ] {
        if b.get(i..i + prefix.len()) == Some(prefix) {
            let from = i + prefix.len();
            let end = run(from, |c| {
                c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'=' | b'%')
            });
            if end - from >= min {
                return Some(end);
            }
        }
    }
    // 32 hex digits after a key-like word.
    if at(b, i).is_ascii_hexdigit() && !alnum(prev) {
        let end = run(i, |c| c.is_ascii_hexdigit());
        if end - i == 32 && !alnum(at(b, end)) && key_word_before(b, i) {
            return Some(end);
        }
    }
    None
}

/// A key-like word in the 40 bytes before `i`.
fn key_word_before(b: &[u8], i: usize) -> bool {
    let from = i.saturating_sub(40);
    let window: Vec<u8> = b
        .get(from..i)
        .unwrap_or_default()
        .iter()
        .map(u8::to_ascii_lowercase)
        .collect();
    [
        "key",
        "secret",
        "subscription",
        "password",
        "token",
        "credential",
    ]
    .iter()
    .any(|w| window.windows(w.len()).any(|x| x == w.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(kind: PiiKind, text: &str) -> Vec<&str> {
        kind.find(text)
            .into_iter()
            .map(|(a, e)| &text[a..e])
            .collect()
    }

    #[test]
    fn emails() {
        let t =
            "write to jane.doe+ai@mail.example.co.uk, or .x@y.io. Not a@b, not @x.com, not a@b.c1";
        assert_eq!(
            found(PiiKind::Email, t),
            ["jane.doe+ai@mail.example.co.uk", "x@y.io"]
        );
        assert_eq!(
            found(PiiKind::Email, "é john@ex-ample.org é"),
            ["john@ex-ample.org"]
        );
    }

    #[test]
    fn payment_cards_need_luhn_and_an_issuer() {
        let t = "visa 4111 1111 1111 1111, mc 5555-5555-5555-4444, amex 378282246310005; \
                 bad luhn 4111111111111112, order 1234567890123456, ts 16990000000000004";
        assert_eq!(
            found(PiiKind::PaymentCard, t),
            [
                "4111 1111 1111 1111",
                "5555-5555-5555-4444",
                "378282246310005"
            ]
        );
        assert!(found(PiiKind::PaymentCard, "id 44111111111111111111").is_empty());
    }

    #[test]
    fn ibans_need_their_checksum_and_length() {
        let t = "pay DE89 3704 0044 0532 0130 00 or GB82WEST12345698765432; not DE89370400440532013001, not XX00123";
        assert_eq!(
            found(PiiKind::Iban, t),
            ["DE89 3704 0044 0532 0130 00", "GB82WEST12345698765432"]
        );
    }

    #[test]
    fn us_ssns_skip_never_issued_numbers() {
        let t = "ssn 123-45-6789, 078 05 1120; not 000-12-3456, 666-12-3456, 900-12-3456, 123-00-4567, 123-45-0000, 123-45-67890";
        assert_eq!(found(PiiKind::UsSsn, t), ["123-45-6789", "078 05 1120"]);
    }

    #[test]
    fn phones() {
        let t = "call +44 20 7946 0958 or +1 (555) 123-4567, (555) 987-6543, 555.123.4567; \
                 not 2024-01-15, not 12345, not v1.2.3";
        assert_eq!(
            found(PiiKind::Phone, t),
            [
                "+44 20 7946 0958",
                "+1 (555) 123-4567",
                "(555) 987-6543",
                "555.123.4567"
            ]
        );
    }

    #[test]
    fn ip_addresses() {
        let t = "hosts 10.0.0.1, 192.168.1.254 and 2001:db8::8a2e:370:7334 or ::1; \
                 not 1.2.3.4.5, 256.1.1.1, 01.2.3.4, 12:30:45";
        assert_eq!(
            found(PiiKind::IpAddress, t),
            [
                "10.0.0.1",
                "192.168.1.254",
                "2001:db8::8a2e:370:7334",
                "::1"
            ]
        );
    }

    #[test]
    fn jwts() {
        let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.c2lnbmF0dXJlLWJ5dGVz";
        let t = format!("Bearer {jwt} and eyJnotatoken");
        assert_eq!(found(PiiKind::Jwt, &t), [jwt]);
    }

    #[test]
    fn azure_keys() {
        let cask = format!("{}JQQJ99ALACAAA{}", "a".repeat(52), "b".repeat(19));
        assert_eq!(cask.len(), 84);
        let entra = "abc8Q~abcdefghijklmnopqrstuvwxyz0123456";
        let t = format!(
            "k1 {cask} k2 {entra} conn AccountKey={}==; api-key: 0123456789abcdef0123456789ABCDEF; \
             md5 0123456789abcdef0123456789abcdef",
            "A".repeat(86)
        );
        let got = found(PiiKind::AzureKey, &t);
        assert_eq!(got.len(), 4, "{got:?}");
        assert_eq!(got[0], cask);
        assert_eq!(got[1], entra);
        assert!(got[2].starts_with("AccountKey="));
        assert_eq!(got[3], "0123456789abcdef0123456789ABCDEF");
    }

    #[test]
    fn spans_are_character_boundaries_in_utf8_text() {
        let t = "é10.0.0.1é jöhn@exämple.com 4111111111111111€";
        for kind in PiiKind::ALL {
            for (a, e) in kind.find(t) {
                assert!(t.is_char_boundary(a) && t.is_char_boundary(e), "{kind:?}");
            }
        }
        assert_eq!(found(PiiKind::PaymentCard, t), ["4111111111111111"]);
    }
}
