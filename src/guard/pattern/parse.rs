//! The pattern syntax, parsed into a small intermediate form ([`Hir`]) of byte sets, sequences,
//! alternations, repetitions and assertions. Characters are UTF-8: a literal is the sequence of
//! its bytes, `.` and negated classes are alternations of whole UTF-8 sequences, so a match
//! always starts and ends on a character boundary.
//!
//! Supported (a subset of the `regex` crate's syntax, with its meaning):
//! literals and escaped metacharacters, `.`, classes `[a-z_]` / `[^...]` (ASCII ranges,
//! single non-ASCII characters, `\d \w \s` and POSIX `[:alpha:]` names inside), `\d \w \s
//! \D \W \S`, `\n \r \t \f \v \0 \xHH \x{H..}`, `^ $ \A \z` (text start / end), `\b \B` (ASCII
//! word boundaries), `* + ? {n} {n,} {n,m}` (lazy `?` suffixes accepted), `|`, groups `( )`,
//! `(?: )`, `(?P<name> )`, `(?<name> )`, and the flags `i` (ASCII case folding) and `s` (`.`
//! matches `\n`) as `(?i)`, `(?-i)`, `(?i: )`.
//!
//! Refused with a message: Unicode classes (`\p{..}`), multi-line mode, look-around, back
//! references, class set operations, non-ASCII ranges and non-ASCII members of negated classes.
//! The classes are ASCII: `\w` is `[0-9A-Za-z_]`, and `(?i)` folds ASCII letters only.

use super::PatternError;

/// 256 bits: the bytes one position may hold.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub(super) struct ByteSet(pub(super) [u64; 4]);

impl std::fmt::Debug for ByteSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ByteSet({} bytes)", self.count())
    }
}

impl ByteSet {
    pub(super) fn byte(b: u8) -> ByteSet {
        let mut s = ByteSet::default();
        s.insert(b);
        s
    }

    pub(super) fn range(lo: u8, hi: u8) -> ByteSet {
        let mut s = ByteSet::default();
        for b in lo..=hi {
            s.insert(b);
        }
        s
    }

    pub(super) fn insert(&mut self, b: u8) {
        self.0[usize::from(b >> 6)] |= 1 << (b & 63);
    }

    pub(super) fn contains(&self, b: u8) -> bool {
        self.0[usize::from(b >> 6)] & (1 << (b & 63)) != 0
    }

    fn union(&mut self, other: &ByteSet) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a |= b;
        }
    }

    fn count(&self) -> u32 {
        self.0.iter().map(|w| w.count_ones()).sum()
    }

    /// The ASCII bytes not in this set.
    fn ascii_complement(&self) -> ByteSet {
        let mut s = ByteSet::default();
        for b in 0..0x80u8 {
            if !self.contains(b) {
                s.insert(b);
            }
        }
        s
    }

    /// [0-9A-Za-z_]: the word bytes of `\w` and `\b`.
    pub(super) fn word() -> ByteSet {
        let mut s = ByteSet::range(b'0', b'9');
        s.union(&ByteSet::range(b'A', b'Z'));
        s.union(&ByteSet::range(b'a', b'z'));
        s.insert(b'_');
        s
    }
}

/// Zero-width assertions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Look {
    /// Start of the text (`^`, `\A`).
    Start,
    /// End of the text (`$`, `\z`).
    End,
    /// `\b`: a word byte on exactly one side.
    WordBoundary,
    /// `\B`.
    NotWordBoundary,
}

/// The parsed pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Hir {
    Empty,
    /// One byte from the set.
    Bytes(ByteSet),
    Concat(Vec<Hir>),
    Alt(Vec<Hir>),
    Repeat {
        hir: Box<Hir>,
        min: u32,
        max: Option<u32>,
    },
    Look(Look),
}

impl Hir {
    /// The same language read backwards (for the reverse search that finds where a match
    /// starts): sequences reversed, text start and end swapped.
    pub(super) fn reversed(&self) -> Hir {
        match self {
            Hir::Concat(parts) => Hir::Concat(parts.iter().rev().map(Hir::reversed).collect()),
            Hir::Alt(parts) => Hir::Alt(parts.iter().map(Hir::reversed).collect()),
            Hir::Repeat { hir, min, max } => Hir::Repeat {
                hir: Box::new(hir.reversed()),
                min: *min,
                max: *max,
            },
            Hir::Look(Look::Start) => Hir::Look(Look::End),
            Hir::Look(Look::End) => Hir::Look(Look::Start),
            other => other.clone(),
        }
    }
}

/// Largest repetition count (`{n,m}` bounds), as in most engines' defaults for small patterns.
const MAX_REPEAT: u32 = 1000;
/// Deepest group nesting.
const MAX_DEPTH: usize = 64;

#[derive(Clone, Copy, Default)]
struct Flags {
    case_insensitive: bool,
    dot_all: bool,
}

pub(super) fn parse(pattern: &str) -> Result<Hir, PatternError> {
    let mut p = Parser {
        chars: pattern.chars().collect(),
        pos: 0,
        depth: 0,
    };
    let mut flags = Flags::default();
    let hir = p.alternation(&mut flags)?;
    if p.pos < p.chars.len() {
        return Err(p.error("unopened group: `)` without `(`"));
    }
    Ok(hir)
}

struct Parser {
    chars: Vec<char>,
    pos: usize,
    depth: usize,
}

impl Parser {
    fn error(&self, what: &str) -> PatternError {
        PatternError(format!("{what} (at character {})", self.pos + 1))
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn peek_at(&self, offset: usize) -> Option<char> {
        self.chars.get(self.pos + offset).copied()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += 1;
        Some(c)
    }

    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// `concat ('|' concat)*`, up to an unmatched `)` or the end. Flags set by `(?i)` inside
    /// last to the end of this group.
    fn alternation(&mut self, flags: &mut Flags) -> Result<Hir, PatternError> {
        let mut branches = vec![self.concat(flags)?];
        while self.eat('|') {
            branches.push(self.concat(flags)?);
        }
        Ok(if branches.len() == 1 {
            branches.pop().unwrap_or(Hir::Empty)
        } else {
            Hir::Alt(branches)
        })
    }

    fn concat(&mut self, flags: &mut Flags) -> Result<Hir, PatternError> {
        let mut parts = Vec::new();
        while let Some(c) = self.peek() {
            if c == '|' || c == ')' {
                break;
            }
            let Some(atom) = self.atom(flags)? else {
                continue; // a flag group: no atom
            };
            let atom = self.quantified(atom)?;
            parts.push(atom);
        }
        Ok(match parts.len() {
            0 => Hir::Empty,
            1 => parts.pop().unwrap_or(Hir::Empty),
            _ => Hir::Concat(parts),
        })
    }

    fn quantified(&mut self, atom: Hir) -> Result<Hir, PatternError> {
        let (min, max) = match self.peek() {
            Some('{') => self.counted()?,
            Some(c) => {
                let bounds = match c {
                    '*' => (0, None),
                    '+' => (1, None),
                    '?' => (0, Some(1)),
                    _ => return Ok(atom),
                };
                self.pos += 1;
                bounds
            }
            None => return Ok(atom),
        };
        // A lazy suffix changes which match is reported, not whether there is one; spans are
        // widened to the longest match anyway (see `Pattern::find_iter`).
        self.eat('?');
        if matches!(self.peek(), Some('*' | '+' | '?')) {
            return Err(self.error("nested repetition operators are not supported"));
        }
        if matches!(atom, Hir::Look(_) | Hir::Empty) {
            return Err(self.error("repetition of an empty expression"));
        }
        Ok(Hir::Repeat {
            hir: Box::new(atom),
            min,
            max,
        })
    }

    /// `{n}`, `{n,}`, `{n,m}` (the position is left after the `}`).
    fn counted(&mut self) -> Result<(u32, Option<u32>), PatternError> {
        let start = self.pos;
        self.pos += 1; // {
        let min = self.number()?;
        let max = if self.eat(',') {
            if self.peek() == Some('}') {
                None
            } else {
                Some(self.number()?)
            }
        } else {
            Some(min)
        };
        if !self.eat('}') {
            self.pos = start;
            return Err(self.error("unclosed counted repetition `{`"));
        }
        if max.is_some_and(|m| m < min) {
            return Err(self.error("counted repetition with max below min"));
        }
        if min > MAX_REPEAT || max.is_some_and(|m| m > MAX_REPEAT) {
            return Err(self.error("repetition count above 1000"));
        }
        Ok((min, max))
    }

    fn number(&mut self) -> Result<u32, PatternError> {
        let mut n: u32 = 0;
        let mut digits = 0;
        while let Some(d) = self.peek().and_then(|c| c.to_digit(10)) {
            n = n.saturating_mul(10).saturating_add(d);
            digits += 1;
            self.pos += 1;
        }
        if digits == 0 {
            return Err(self.error("counted repetition needs a decimal number"));
        }
        Ok(n)
    }

    /// One atom; `None` for a flag group such as `(?i)`.
    fn atom(&mut self, flags: &mut Flags) -> Result<Option<Hir>, PatternError> {
        let Some(c) = self.next() else {
            return Ok(Some(Hir::Empty));
        };
        Ok(Some(match c {
            '(' => return self.group(flags),
            '[' => self.class(*flags)?,
            '.' => any_char(!flags.dot_all),
            '^' => Hir::Look(Look::Start),
            '$' => Hir::Look(Look::End),
            '\\' => self.escape(*flags)?,
            '*' | '+' | '?' => return Err(self.error("repetition operator without an operand")),
            '{' => return Err(self.error("repetition operator without an operand")),
            c => literal(c, flags.case_insensitive),
        }))
    }

    fn group(&mut self, flags: &mut Flags) -> Result<Option<Hir>, PatternError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.error("groups nested too deeply"));
        }
        let mut inner = *flags;
        if self.eat('?') {
            match self.peek() {
                Some(':') => {
                    self.pos += 1;
                }
                Some('P') | Some('<') => {
                    if self.peek() == Some('P') {
                        self.pos += 1;
                    }
                    if !self.eat('<') {
                        return Err(self.error("unsupported group syntax"));
                    }
                    if matches!(self.peek(), Some('=' | '!')) {
                        return Err(self.error("look-behind is not supported"));
                    }
                    while let Some(c) = self.next() {
                        if c == '>' {
                            break;
                        }
                        if !(c.is_ascii_alphanumeric() || c == '_') {
                            return Err(self.error("invalid group name"));
                        }
                    }
                }
                Some('=' | '!') => return Err(self.error("look-ahead is not supported")),
                _ => {
                    // Flags: (?i) (?-i) (?is) (?i:...)
                    let mut on = true;
                    let mut any = false;
                    loop {
                        match self.next() {
                            Some('i') => inner.case_insensitive = on,
                            Some('s') => inner.dot_all = on,
                            Some('-') if on => on = false,
                            Some('m') => {
                                return Err(self.error("multi-line mode (?m) is not supported"))
                            }
                            Some('x') => {
                                return Err(self.error("verbose mode (?x) is not supported"))
                            }
                            Some('u') | Some('U') | Some('R') => {
                                return Err(self.error("this flag is not supported"))
                            }
                            Some(')') if any => {
                                // (?i): applies to the rest of the enclosing group.
                                *flags = inner;
                                self.depth -= 1;
                                return Ok(None);
                            }
                            Some(':') if any => break,
                            _ => return Err(self.error("unsupported group or flag syntax")),
                        }
                        any = true;
                    }
                }
            }
        }
        let hir = self.alternation(&mut inner)?;
        if !self.eat(')') {
            return Err(self.error("unclosed group: `(` without `)`"));
        }
        self.depth -= 1;
        Ok(Some(hir))
    }

    fn escape(&mut self, flags: Flags) -> Result<Hir, PatternError> {
        let Some(c) = self.next() else {
            return Err(self.error("incomplete escape at the end"));
        };
        Ok(match c {
            'b' => Hir::Look(Look::WordBoundary),
            'B' => Hir::Look(Look::NotWordBoundary),
            'A' => Hir::Look(Look::Start),
            'z' => Hir::Look(Look::End),
            'd' | 'w' | 's' => Hir::Bytes(perl_class(c)),
            'D' | 'W' | 'S' => negated_ascii(&perl_class(c.to_ascii_lowercase())),
            'p' | 'P' => return Err(self.error("Unicode classes (\\p) are not supported")),
            '1'..='9' => return Err(self.error("back references are not supported")),
            'Z' | 'G' | 'K' | 'Q' | 'E' | 'X' | 'R' | 'C' | 'h' | 'H' | 'k' | 'g' | 'N' | 'o' => {
                return Err(self.error("unsupported escape"))
            }
            _ => literal(self.escaped_char(c)?, flags.case_insensitive),
        })
    }

    /// The character an escape (other than a class or an assertion) stands for.
    fn escaped_char(&mut self, c: char) -> Result<char, PatternError> {
        Ok(match c {
            'n' => '\n',
            'r' => '\r',
            't' => '\t',
            'f' => '\x0c',
            'v' => '\x0b',
            'a' => '\x07',
            '0' => '\0',
            'x' => self.hex()?,
            'u' | 'U' => return Err(self.error("use \\x{...} for a code point")),
            c if c.is_ascii_punctuation() || c == ' ' => c,
            _ => return Err(self.error("unknown escape")),
        })
    }

    /// `\xHH` or `\x{H..}` (after the `x`).
    fn hex(&mut self) -> Result<char, PatternError> {
        let digits: String = if self.eat('{') {
            let mut s = String::new();
            loop {
                match self.next() {
                    Some('}') => break,
                    Some(c) if c.is_ascii_hexdigit() && s.len() < 8 => s.push(c),
                    _ => return Err(self.error("invalid \\x{...} escape")),
                }
            }
            s
        } else {
            let mut s = String::new();
            for _ in 0..2 {
                match self.next() {
                    Some(c) if c.is_ascii_hexdigit() => s.push(c),
                    _ => return Err(self.error("\\x needs two hex digits")),
                }
            }
            s
        };
        u32::from_str_radix(&digits, 16)
            .ok()
            .and_then(char::from_u32)
            .ok_or_else(|| self.error("escape is not a Unicode scalar value"))
    }

    /// `[...]` (after the `[`).
    fn class(&mut self, flags: Flags) -> Result<Hir, PatternError> {
        let negated = self.eat('^');
        let mut ascii = ByteSet::default();
        let mut others: Vec<char> = Vec::new();
        let mut first = true;
        loop {
            let Some(c) = self.next() else {
                return Err(self.error("unclosed class `[`"));
            };
            if c == ']' && !first {
                break;
            }
            first = false;
            let lo = match c {
                '[' if self.peek() == Some(':') => {
                    self.posix_class(&mut ascii)?;
                    continue;
                }
                '[' => return Err(self.error("nested classes are not supported")),
                '&' | '-' | '~' if self.peek() == Some(c) => {
                    return Err(self.error("class set operations are not supported"))
                }
                '\\' => {
                    let Some(e) = self.next() else {
                        return Err(self.error("unclosed class `[`"));
                    };
                    match e {
                        'd' | 'w' | 's' => {
                            ascii.union(&perl_class(e));
                            continue;
                        }
                        'D' | 'W' | 'S' => {
                            return Err(self.error("negated classes inside [...] are not supported"))
                        }
                        'p' | 'P' => {
                            return Err(self.error("Unicode classes (\\p) are not supported"))
                        }
                        'b' => '\x08',
                        e => self.escaped_char(e)?,
                    }
                }
                c => c,
            };
            // A range `lo-hi` (a `-` before `]` is a literal).
            let hi = if self.peek() == Some('-') && self.peek_at(1).is_some_and(|c| c != ']') {
                self.pos += 1;
                let h = match self.next() {
                    Some('\\') => {
                        let e = self
                            .next()
                            .ok_or_else(|| self.error("unclosed class `[`"))?;
                        self.escaped_char(e)?
                    }
                    Some('[') => return Err(self.error("invalid class range")),
                    Some(h) => h,
                    None => return Err(self.error("unclosed class `[`")),
                };
                if h < lo {
                    return Err(self.error("class range out of order"));
                }
                h
            } else {
                lo
            };
            if lo.is_ascii() && hi.is_ascii() {
                for b in (lo as u8)..=(hi as u8) {
                    ascii.insert(b);
                    if flags.case_insensitive && b.is_ascii_alphabetic() {
                        ascii.insert(b ^ 0x20);
                    }
                }
            } else if lo == hi {
                others.push(lo);
            } else {
                return Err(self.error("ranges of non-ASCII characters are not supported"));
            }
        }
        if negated {
            if !others.is_empty() {
                return Err(self.error("non-ASCII characters in a negated class are not supported"));
            }
            return Ok(negated_ascii(&ascii));
        }
        let mut branches = Vec::new();
        if ascii.count() > 0 {
            branches.push(Hir::Bytes(ascii));
        }
        others.sort_unstable();
        others.dedup();
        for c in others {
            branches.push(literal(c, false));
        }
        Ok(match branches.len() {
            0 => return Err(self.error("empty class")),
            1 => branches.pop().unwrap_or(Hir::Empty),
            _ => Hir::Alt(branches),
        })
    }

    /// `[:name:]` inside a class (after the `[`).
    fn posix_class(&mut self, into: &mut ByteSet) -> Result<(), PatternError> {
        self.pos += 1; // :
        let negated = self.eat('^');
        let mut name = String::new();
        loop {
            match self.next() {
                Some(':') => break,
                Some(c) if c.is_ascii_lowercase() => name.push(c),
                _ => return Err(self.error("invalid POSIX class")),
            }
        }
        if !self.eat(']') {
            return Err(self.error("invalid POSIX class"));
        }
        let mut set = ByteSet::default();
        let add = |set: &mut ByteSet, f: fn(&u8) -> bool| {
            for b in 0..0x80u8 {
                if f(&b) {
                    set.insert(b);
                }
            }
        };
        match name.as_str() {
            "alpha" => add(&mut set, u8::is_ascii_alphabetic),
            "digit" => add(&mut set, u8::is_ascii_digit),
            "alnum" => add(&mut set, u8::is_ascii_alphanumeric),
            "upper" => add(&mut set, u8::is_ascii_uppercase),
            "lower" => add(&mut set, u8::is_ascii_lowercase),
            "punct" => add(&mut set, u8::is_ascii_punctuation),
            "xdigit" => add(&mut set, u8::is_ascii_hexdigit),
            "cntrl" => add(&mut set, u8::is_ascii_control),
            "graph" => add(&mut set, u8::is_ascii_graphic),
            "print" => add(&mut set, |b| b.is_ascii_graphic() || *b == b' '),
            "space" => set = perl_class('s'),
            "blank" => {
                set.insert(b' ');
                set.insert(b'\t');
            }
            "word" => set = ByteSet::word(),
            "ascii" => set = ByteSet::range(0, 0x7f),
            _ => return Err(self.error("unknown POSIX class")),
        }
        if negated {
            set = set.ascii_complement();
        }
        into.union(&set);
        Ok(())
    }
}

/// `\d`, `\w`, `\s` (ASCII).
fn perl_class(c: char) -> ByteSet {
    match c {
        'd' => ByteSet::range(b'0', b'9'),
        'w' => ByteSet::word(),
        _ => {
            let mut s = ByteSet::default();
            for b in [b' ', b'\t', b'\n', b'\r', 0x0b, 0x0c] {
                s.insert(b);
            }
            s
        }
    }
}

/// A character (ASCII letters of both cases when folding).
fn literal(c: char, fold: bool) -> Hir {
    if c.is_ascii() {
        let b = c as u8;
        let mut set = ByteSet::byte(b);
        if fold && b.is_ascii_alphabetic() {
            set.insert(b ^ 0x20);
        }
        return Hir::Bytes(set);
    }
    let mut buf = [0u8; 4];
    let bytes = c.encode_utf8(&mut buf).as_bytes();
    Hir::Concat(
        bytes
            .iter()
            .map(|b| Hir::Bytes(ByteSet::byte(*b)))
            .collect(),
    )
}

/// Any one non-ASCII character, as its UTF-8 sequence (input is valid UTF-8, so lead and
/// continuation ranges suffice).
fn any_multibyte() -> Hir {
    let cont = || Hir::Bytes(ByteSet::range(0x80, 0xbf));
    Hir::Alt(vec![
        Hir::Concat(vec![Hir::Bytes(ByteSet::range(0xc2, 0xdf)), cont()]),
        Hir::Concat(vec![Hir::Bytes(ByteSet::range(0xe0, 0xef)), cont(), cont()]),
        Hir::Concat(vec![
            Hir::Bytes(ByteSet::range(0xf0, 0xf4)),
            cont(),
            cont(),
            cont(),
        ]),
    ])
}

/// `.`: any character, except `\n` unless dot-all.
fn any_char(except_newline: bool) -> Hir {
    let mut ascii = ByteSet::range(0, 0x7f);
    if except_newline {
        ascii.0[0] &= !(1 << b'\n');
    }
    Hir::Alt(vec![Hir::Bytes(ascii), any_multibyte()])
}

/// Any character whose ASCII byte is not in `set`, or any non-ASCII character.
fn negated_ascii(set: &ByteSet) -> Hir {
    Hir::Alt(vec![Hir::Bytes(set.ascii_complement()), any_multibyte()])
}
