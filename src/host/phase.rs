//! Which request phase the filter is in, so that `make bench` can say what each phase costs in
//! host calls and bytes crossed (tests/bench_phases.rs runs the filter natively against a host
//! that counts every call under the phase it was made in). Entering a phase is one store and
//! leaving it another; nothing in Envoy reads it.

use std::sync::atomic::{AtomicU8, Ordering};

/// The phases of `host::http` (ARCHITECTURE.md, "The request pipeline"), plus the access-log
/// properties, which every phase writes and which are counted on their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Phase {
    /// Outside any phase: the SDK's dispatch, context creation.
    Other = 0,
    Authenticate,
    Route,
    /// The guardrails' local rules on the prompt (`host::http::guard`).
    Guard,
    Admit,
    Forward,
    Global,
    Credential,
    Meter,
    Strip,
    Observe,
    Charge,
    Properties,
    Pool,
}

impl Phase {
    pub const ALL: [Phase; 14] = [
        Phase::Other,
        Phase::Authenticate,
        Phase::Route,
        Phase::Guard,
        Phase::Admit,
        Phase::Forward,
        Phase::Global,
        Phase::Credential,
        Phase::Meter,
        Phase::Strip,
        Phase::Observe,
        Phase::Charge,
        Phase::Properties,
        Phase::Pool,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Phase::Other => "other",
            Phase::Authenticate => "authenticate",
            Phase::Route => "route",
            Phase::Guard => "guard",
            Phase::Admit => "admit",
            Phase::Forward => "forward",
            Phase::Global => "global",
            Phase::Credential => "credential",
            Phase::Meter => "meter",
            Phase::Strip => "strip",
            Phase::Observe => "observe",
            Phase::Charge => "charge",
            Phase::Properties => "properties",
            Phase::Pool => "pool",
        }
    }
}

static CURRENT: AtomicU8 = AtomicU8::new(Phase::Other as u8);

/// The phase entered; the one before it is current again when this is dropped.
#[must_use = "the phase ends when this is dropped"]
pub struct Entered(u8);

impl Drop for Entered {
    fn drop(&mut self) {
        CURRENT.store(self.0, Ordering::Relaxed);
    }
}

/// Enters `phase` until the returned guard is dropped (phases nest: routing dispatches admit,
/// forward and credential).
pub fn enter(phase: Phase) -> Entered {
    Entered(CURRENT.swap(phase as u8, Ordering::Relaxed))
}

/// The phase the filter is in now.
pub fn current() -> Phase {
    let n = CURRENT.load(Ordering::Relaxed);
    Phase::ALL
        .into_iter()
        .find(|p| *p as u8 == n)
        .unwrap_or(Phase::Other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_nest_and_end_with_their_guard() {
        assert_eq!(current(), Phase::Other);
        {
            let _route = enter(Phase::Route);
            assert_eq!(current(), Phase::Route);
            {
                let _admit = enter(Phase::Admit);
                assert_eq!(current(), Phase::Admit);
            }
            assert_eq!(current(), Phase::Route);
        }
        assert_eq!(current(), Phase::Other);
        for (i, p) in Phase::ALL.into_iter().enumerate() {
            assert_eq!(p as usize, i, "{}", p.name());
        }
    }
}
