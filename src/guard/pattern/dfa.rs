//! Subset construction: the automaton as a table of byte-class transitions, built once when the
//! configuration is loaded, so that matching is one table lookup per byte of text.
//!
//! Assertions are resolved on the transition that reads the byte after them: a state knows
//! what came before (text start, a word byte, another byte) and the transition knows the byte
//! that follows, so `\b`, `^` and `$` need no backtracking. A transition also says whether a
//! match ends just before its byte; `eot` says whether one ends at the end of the text.

use super::nfa::{Nfa, State, StateId};
use super::parse::{ByteSet, Look};
use super::PatternError;
use std::collections::HashMap;

/// What precedes a position: the text start, a word byte or another byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Before {
    TextStart = 0,
    Word = 1,
    Other = 2,
}

/// What follows a position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum After {
    TextEnd,
    Word,
    Other,
}

impl Before {
    pub(super) fn of(byte: Option<u8>) -> Before {
        match byte {
            None => Before::TextStart,
            Some(b) if is_word(b) => Before::Word,
            Some(_) => Before::Other,
        }
    }
}

impl After {
    pub(super) fn of(byte: Option<u8>) -> After {
        match byte {
            None => After::TextEnd,
            Some(b) if is_word(b) => After::Word,
            Some(_) => After::Other,
        }
    }
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

fn holds(look: Look, before: Before, after: After) -> bool {
    let word_before = before == Before::Word;
    let word_after = after == After::Word;
    match look {
        Look::Start => before == Before::TextStart,
        Look::End => after == After::TextEnd,
        Look::WordBoundary => word_before != word_after,
        Look::NotWordBoundary => word_before == word_after,
    }
}

/// Largest automaton one pattern may have.
const MAX_DFA_STATES: usize = 4096;
/// Work allowed to build one automaton (closure steps), so that a pathological pattern fails
/// at load time rather than stalling it.
const MAX_WORK: u64 = 40_000_000;

#[derive(Debug, Clone)]
pub(super) struct Dfa {
    /// Byte -> class.
    classes: [u8; 256],
    stride: usize,
    /// `state * stride + class` -> `next << 1 | match ends before this byte`.
    trans: Vec<u32>,
    /// A match ends at the end of the text.
    eot: Vec<bool>,
    /// No match can follow (anchored automata only).
    dead: Vec<bool>,
    starts: [u32; 3],
}

impl Dfa {
    pub(super) fn start(&self, before: Before) -> u32 {
        self.starts[before as usize]
    }

    /// The state after `byte`, and whether a match ends just before it.
    #[inline]
    pub(super) fn step(&self, state: u32, byte: u8) -> (u32, bool) {
        let class = usize::from(self.classes[usize::from(byte)]);
        let t = self
            .trans
            .get(state as usize * self.stride + class)
            .copied()
            .unwrap_or(0);
        (t >> 1, t & 1 == 1)
    }

    pub(super) fn accepts_at_end(&self, state: u32) -> bool {
        self.eot.get(state as usize).copied().unwrap_or(false)
    }

    pub(super) fn is_dead(&self, state: u32) -> bool {
        self.dead.get(state as usize).copied().unwrap_or(true)
    }

    pub(super) fn states(&self) -> usize {
        self.eot.len()
    }
}

/// Byte classes: bytes that no set of the pattern tells apart share a class.
fn byte_classes(sets: &[ByteSet]) -> ([u8; 256], usize, Vec<u8>) {
    // Refine a partition, identified per byte by the membership signature over all sets.
    let mut signature: Vec<Vec<bool>> = (0..256).map(|_| Vec::with_capacity(sets.len())).collect();
    for set in sets {
        for (b, sig) in signature.iter_mut().enumerate() {
            sig.push(set.contains(b as u8));
        }
    }
    let mut ids: HashMap<&Vec<bool>, u8> = HashMap::new();
    let mut classes = [0u8; 256];
    let mut representatives = Vec::new();
    for (b, sig) in signature.iter().enumerate() {
        let next = ids.len() as u8;
        let id = *ids.entry(sig).or_insert_with(|| {
            representatives.push(b as u8);
            next
        });
        classes[b] = id;
    }
    (classes, representatives.len(), representatives)
}

struct Builder<'n> {
    nfa: &'n Nfa,
    unanchored: bool,
    work: u64,
    /// Visited marks of the closures: `seen[state] == generation` (no clearing per closure).
    seen: Vec<u32>,
    generation: u32,
}

impl<'n> Builder<'n> {
    fn new(nfa: &'n Nfa, unanchored: bool) -> Builder<'n> {
        Builder {
            nfa,
            unanchored,
            work: 0,
            seen: vec![0; nfa.states.len()],
            generation: 0,
        }
    }

    /// Starts a closure: every state unvisited.
    fn fresh(&mut self) {
        self.generation = self.generation.wrapping_add(1);
        if self.generation == 0 {
            self.seen.iter_mut().for_each(|s| *s = 0);
            self.generation = 1;
        }
    }

    /// Marks `id` visited; false if it already was.
    fn visit(&mut self, id: StateId) -> bool {
        match self.seen.get_mut(id as usize) {
            Some(s) if *s != self.generation => {
                *s = self.generation;
                true
            }
            _ => false,
        }
    }

    fn spend(&mut self, n: u64) -> Result<(), PatternError> {
        self.work += n;
        if self.work > MAX_WORK {
            return Err(too_complex());
        }
        Ok(())
    }

    /// Follows splits from `from`; keeps byte, assertion and match states (sorted).
    fn split_closure(&mut self, from: &[StateId]) -> Result<Vec<StateId>, PatternError> {
        self.fresh();
        let mut stack: Vec<StateId> = from.to_vec();
        let mut out = Vec::new();
        while let Some(id) = stack.pop() {
            if !self.visit(id) {
                continue;
            }
            self.spend(1)?;
            match self.nfa.states.get(id as usize) {
                Some(State::Split(next)) => stack.extend(next.iter().rev()),
                Some(_) => out.push(id),
                None => {}
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Follows splits and the assertions that hold between `before` and `after`: the byte
    /// states that may read the next byte, and whether a match ends here.
    fn resolved(
        &mut self,
        set: &[StateId],
        before: Before,
        after: After,
    ) -> Result<(Vec<StateId>, bool), PatternError> {
        self.fresh();
        let mut stack: Vec<StateId> = set.to_vec();
        let mut bytes = Vec::new();
        let mut matched = false;
        while let Some(id) = stack.pop() {
            if !self.visit(id) {
                continue;
            }
            self.spend(1)?;
            match self.nfa.states.get(id as usize) {
                Some(State::Split(next)) => stack.extend(next.iter()),
                Some(State::Look { look, next }) if holds(*look, before, after) => {
                    stack.push(*next);
                }
                Some(State::Look { .. }) => {}
                Some(State::Bytes { .. }) => bytes.push(id),
                Some(State::Match) => matched = true,
                None => {}
            }
        }
        Ok((bytes, matched))
    }

    fn start_set(&mut self) -> Result<Vec<StateId>, PatternError> {
        self.split_closure(&[self.nfa.start])
    }
}

fn too_complex() -> PatternError {
    PatternError(format!(
        "pattern too complex for the matcher (its automaton exceeds {MAX_DFA_STATES} states): simplify it or split it into several rules"
    ))
}

/// Whether the pattern can match an empty string somewhere (such a rule would fire on every
/// text, and masking it makes no sense).
pub(super) fn matches_empty(nfa: &Nfa) -> Result<bool, PatternError> {
    let mut b = Builder::new(nfa, false);
    let start = b.start_set()?;
    for before in [Before::TextStart, Before::Word, Before::Other] {
        for after in [After::TextEnd, After::Word, After::Other] {
            if b.resolved(&start, before, after)?.1 {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// NFA state sets, each stored once with an id.
#[derive(Default)]
struct Interned {
    ids: HashMap<Vec<StateId>, u32>,
    list: Vec<Vec<StateId>>,
}

impl Interned {
    fn intern(&mut self, set: Vec<StateId>) -> u32 {
        if let Some(id) = self.ids.get(&set) {
            return *id;
        }
        let id = self.list.len() as u32;
        self.ids.insert(set.clone(), id);
        self.list.push(set);
        id
    }
}

/// Builds the automaton. `unanchored`: a match may start anywhere (the search automaton);
/// otherwise only where the search starts.
pub(super) fn build(nfa: &Nfa, unanchored: bool) -> Result<Dfa, PatternError> {
    let mut byte_sets = Vec::new();
    for s in &nfa.states {
        if let State::Bytes { set, .. } = s {
            byte_sets.push(*set);
        }
    }
    if nfa.states.iter().any(|s| {
        matches!(
            s,
            State::Look {
                look: Look::WordBoundary | Look::NotWordBoundary,
                ..
            }
        )
    }) {
        byte_sets.push(ByteSet::word());
    }
    let (classes, stride, representatives) = byte_classes(&byte_sets);
    let mut b = Builder::new(nfa, unanchored);
    let start = b.start_set()?;
    // NFA state sets are interned: a DFA state is (set id, what precedes).
    let mut sets = Interned::default();
    let start_id = sets.intern(start);
    let mut index: HashMap<(u32, Before), u32> = HashMap::new();
    let mut queue: Vec<(u32, Before)> = Vec::new();
    let mut starts = [0u32; 3];
    for before in [Before::TextStart, Before::Word, Before::Other] {
        let id = *index.entry((start_id, before)).or_insert_with(|| {
            queue.push((start_id, before));
            queue.len() as u32 - 1
        });
        starts[before as usize] = id;
    }
    let mut trans: Vec<u32> = Vec::new();
    let mut eot = Vec::new();
    let mut dead = Vec::new();
    // Many transitions step to the same NFA states: their closure is computed once.
    let mut closures: HashMap<Vec<StateId>, u32> = HashMap::new();
    let mut next_state = 0usize;
    while let Some(&(set_id, before)) = queue.get(next_state) {
        next_state += 1;
        let set = sets.list.get(set_id as usize).cloned().unwrap_or_default();
        eot.push(b.resolved(&set, before, After::TextEnd)?.1);
        dead.push(set.is_empty() && !unanchored);
        // What may read the next byte depends on that byte only through its wordness.
        let word = b.resolved(&set, before, After::Word)?;
        let other = b.resolved(&set, before, After::Other)?;
        // Bytes read by the same states (and alike for assertions) go to the same state.
        let mut by_readers: HashMap<(Vec<StateId>, bool, Before), u32> = HashMap::new();
        for &byte in &representatives {
            let is_word = After::of(Some(byte)) == After::Word;
            let (readers, matched) = if is_word { &word } else { &other };
            let mut stepped: Vec<StateId> = Vec::new();
            for &id in readers {
                if let Some(State::Bytes { set, next }) = nfa.states.get(id as usize) {
                    if set.contains(byte) {
                        stepped.push(*next);
                    }
                }
            }
            let next_before = Before::of(Some(byte));
            let memo = (stepped, is_word, next_before);
            if let Some(t) = by_readers.get(&memo) {
                trans.push(*t);
                continue;
            }
            let mut stepped = memo.0.clone();
            if b.unanchored {
                stepped.push(nfa.start);
            }
            stepped.sort_unstable();
            stepped.dedup();
            let closed_id = match closures.get(&stepped) {
                Some(c) => *c,
                None => {
                    let c = sets.intern(b.split_closure(&stepped)?);
                    closures.insert(stepped, c);
                    c
                }
            };
            let key = (closed_id, next_before);
            let id = match index.get(&key) {
                Some(id) => *id,
                None => {
                    if queue.len() >= MAX_DFA_STATES {
                        return Err(too_complex());
                    }
                    let id = queue.len() as u32;
                    index.insert(key, id);
                    queue.push(key);
                    id
                }
            };
            let t = id << 1 | u32::from(*matched);
            by_readers.insert(memo, t);
            trans.push(t);
        }
    }
    Ok(Dfa {
        classes,
        stride,
        trans,
        eot,
        dead,
        starts,
    })
}
