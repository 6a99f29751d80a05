//! Thompson construction: the parsed pattern as a graph of byte transitions, splits and
//! assertions, compiled back to front (each node is compiled knowing the state that follows it).

use super::parse::{ByteSet, Hir, Look};
use super::PatternError;

pub(super) type StateId = u32;

#[derive(Debug, Clone)]
pub(super) enum State {
    /// Consume one byte from the set.
    Bytes {
        set: ByteSet,
        next: StateId,
    },
    /// Continue at every one of these (epsilon transitions).
    Split(Vec<StateId>),
    /// Continue if the assertion holds here.
    Look {
        look: Look,
        next: StateId,
    },
    Match,
}

#[derive(Debug, Clone)]
pub(super) struct Nfa {
    pub(super) states: Vec<State>,
    pub(super) start: StateId,
}

/// Largest automaton a pattern may compile to (`{n,m}` copies its operand).
const MAX_STATES: usize = 20_000;

pub(super) fn compile(hir: &Hir) -> Result<Nfa, PatternError> {
    let mut c = Compiler { states: Vec::new() };
    let done = c.push(State::Match)?;
    let start = c.node(hir, done)?;
    Ok(Nfa {
        states: c.states,
        start,
    })
}

struct Compiler {
    states: Vec<State>,
}

impl Compiler {
    fn push(&mut self, s: State) -> Result<StateId, PatternError> {
        if self.states.len() >= MAX_STATES {
            return Err(PatternError(
                "pattern too large (its counted repetitions expand to too many states)".into(),
            ));
        }
        self.states.push(s);
        StateId::try_from(self.states.len() - 1)
            .map_err(|_| PatternError("pattern too large".into()))
    }

    fn set(&mut self, id: StateId, s: State) {
        if let Some(slot) = self.states.get_mut(id as usize) {
            *slot = s;
        }
    }

    /// Compiles `hir` so that it continues at `next`; returns its entry state.
    fn node(&mut self, hir: &Hir, next: StateId) -> Result<StateId, PatternError> {
        match hir {
            Hir::Empty => Ok(next),
            Hir::Bytes(set) => self.push(State::Bytes { set: *set, next }),
            Hir::Look(look) => self.push(State::Look { look: *look, next }),
            Hir::Concat(parts) => {
                let mut at = next;
                for part in parts.iter().rev() {
                    at = self.node(part, at)?;
                }
                Ok(at)
            }
            Hir::Alt(branches) => {
                let mut entries = Vec::with_capacity(branches.len());
                for b in branches {
                    entries.push(self.node(b, next)?);
                }
                self.push(State::Split(entries))
            }
            Hir::Repeat { hir, min, max } => self.repeat(hir, *min, *max, next),
        }
    }

    fn repeat(
        &mut self,
        hir: &Hir,
        min: u32,
        max: Option<u32>,
        next: StateId,
    ) -> Result<StateId, PatternError> {
        // The optional tail first (it follows the required copies).
        let mut at = match max {
            None => {
                // loop: Split(body -> loop, next)
                let looped = self.push(State::Split(Vec::new()))?;
                let body = self.node(hir, looped)?;
                self.set(looped, State::Split(vec![body, next]));
                looped
            }
            Some(max) => {
                let mut at = next;
                for _ in min..max {
                    let body = self.node(hir, at)?;
                    at = self.push(State::Split(vec![body, next]))?;
                }
                at
            }
        };
        for _ in 0..min {
            at = self.node(hir, at)?;
        }
        Ok(at)
    }
}
