//! The deny patterns' matcher: a regular-expression subset compiled to DFAs when the
//! configuration is loaded (`parse` → `nfa` → `dfa`), so that a prompt is scanned with one
//! table lookup per byte and no backtracking (a hostile pattern or text cannot make a scan
//! slow: the work is linear in the text, and a pattern whose automaton would be too large is
//! refused at load time).
//!
//! Why not the `regex` crate: it adds 0.5 to 1 MB to the module (the filter is ~1.6 MB), and
//! `regex-lite` (70 KB) runs its PikeVM at ~270 µs per 4 KiB of prompt for four patterns,
//! natively (README "Performance", "Guardrails"). This matcher adds a few tens of KB and scans
//! 4 KiB in microseconds. Its syntax and limits are in `parse`; tests compare it with the
//! `regex` crate on the patterns and texts both accept.
//!
//! A pattern has three automata: the search (a match may start anywhere; it stops where the
//! first match ends), a reverse one (from that end backwards, the leftmost start), and an
//! anchored forward one (from that start, the longest match), which give the spans that
//! masking replaces.

mod dfa;
mod nfa;
mod parse;

use dfa::{Before, Dfa};

/// Why a pattern was refused (shown with the rule's config field).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatternError(pub String);

impl std::fmt::Display for PatternError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A compiled pattern.
#[derive(Debug, Clone)]
pub struct Pattern {
    search: Dfa,
    reverse: Dfa,
    longest: Dfa,
}

/// Longest pattern source accepted.
pub const MAX_PATTERN_CHARS: usize = 1000;

impl Pattern {
    pub fn new(source: &str) -> Result<Pattern, PatternError> {
        if source.chars().count() > MAX_PATTERN_CHARS {
            return Err(PatternError(format!(
                "longer than {MAX_PATTERN_CHARS} characters"
            )));
        }
        let hir = parse::parse(source)?;
        let forward = nfa::compile(&hir)?;
        if dfa::matches_empty(&forward)? {
            return Err(PatternError(
                "matches the empty string (it would fire on every text)".into(),
            ));
        }
        let backward = nfa::compile(&hir.reversed())?;
        Ok(Pattern {
            search: dfa::build(&forward, true)?,
            reverse: dfa::build(&backward, false)?,
            longest: dfa::build(&forward, false)?,
        })
    }

    /// States of the three automata (for tests and the config summary).
    pub fn size(&self) -> usize {
        self.search.states() + self.reverse.states() + self.longest.states()
    }

    pub fn is_match(&self, text: &str) -> bool {
        self.earliest_end(text.as_bytes(), 0).is_some()
    }

    /// Where the first match starting at or after `from` ends.
    fn earliest_end(&self, text: &[u8], from: usize) -> Option<usize> {
        let before = Before::of(from.checked_sub(1).and_then(|i| text.get(i).copied()));
        let mut state = self.search.start(before);
        for (i, &byte) in text.iter().enumerate().skip(from) {
            let (next, matched) = self.search.step(state, byte);
            if matched {
                return Some(i);
            }
            state = next;
        }
        self.search.accepts_at_end(state).then_some(text.len())
    }

    /// The leftmost start, not before `from`, of a match that ends at `end`.
    fn leftmost_start(&self, text: &[u8], from: usize, end: usize) -> Option<usize> {
        // Reading backwards, what "precedes" is the byte after `end`.
        let mut state = self.reverse.start(Before::of(text.get(end).copied()));
        let mut start = None;
        let mut i = end;
        while i > from {
            let byte = text.get(i - 1).copied().unwrap_or(0);
            let (next, matched) = self.reverse.step(state, byte);
            if matched {
                start = Some(i);
            }
            if self.reverse.is_dead(next) {
                return start;
            }
            state = next;
            i -= 1;
        }
        // At `from`: does a (reverse) match end here, given the byte before it?
        let matched = match from.checked_sub(1).and_then(|j| text.get(j)) {
            None => self.reverse.accepts_at_end(state),
            Some(&byte) => self.reverse.step(state, byte).1,
        };
        if matched {
            start = Some(from);
        }
        start
    }

    /// The end of the longest match starting at `start`.
    fn longest_end(&self, text: &[u8], start: usize) -> Option<usize> {
        let before = Before::of(start.checked_sub(1).and_then(|i| text.get(i).copied()));
        let mut state = self.longest.start(before);
        let mut end = None;
        for (i, &byte) in text.iter().enumerate().skip(start) {
            let (next, matched) = self.longest.step(state, byte);
            if matched {
                end = Some(i);
            }
            if self.longest.is_dead(next) {
                return end;
            }
            state = next;
        }
        if self.longest.accepts_at_end(state) {
            end = Some(text.len());
        }
        end
    }

    /// Non-overlapping match spans (byte offsets, on character boundaries), left to right:
    /// each is the leftmost start of the earliest-ending match, widened to the longest match
    /// from there. Every match of the text overlaps one of them, so replacing them leaves no
    /// match of the original text intact.
    pub fn find_iter(&self, text: &str) -> Vec<(usize, usize)> {
        let bytes = text.as_bytes();
        let mut spans = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let Some(first_end) = self.earliest_end(bytes, at) else {
                break;
            };
            let start = self
                .leftmost_start(bytes, at, first_end)
                .unwrap_or(at)
                .max(at);
            let end = self
                .longest_end(bytes, start)
                .unwrap_or(first_end)
                .max(first_end)
                .max(start + 1);
            let (start, end) = char_bounds(text, start, end);
            spans.push((start, end));
            at = end;
        }
        spans
    }
}

/// Widens a byte span to character boundaries (it is one already for any pattern this parser
/// accepts; this keeps slicing safe whatever happens).
fn char_bounds(text: &str, mut start: usize, mut end: usize) -> (usize, usize) {
    end = end.min(text.len());
    start = start.min(end);
    while start > 0 && !text.is_char_boundary(start) {
        start -= 1;
    }
    while end < text.len() && !text.is_char_boundary(end) {
        end += 1;
    }
    (start, end)
}

#[cfg(test)]
mod tests;
