//! Every fuzz target (src/fuzzing.rs) on a fixed, seeded set of inputs: random bytes and
//! mutations of valid ones. The same inputs every run, so a failure reproduces; a panic in any
//! parser fails the test with the target, the iteration and the input. For open-ended fuzzing
//! use the cargo-fuzz crate in fuzz/ (`cargo +nightly fuzz run <target>`).

use azure_llm_filter::fuzzing::{seeds, smoke_iterations, Mutator, TARGETS};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

/// Inputs per target; `FUZZ_SMOKE_ITERATIONS` overrides (e.g. for a longer local run).
fn iterations() -> usize {
    std::env::var("FUZZ_SMOKE_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

#[test]
fn every_parser_survives_random_and_mutated_input() {
    let n = iterations();
    for (i, (name, target)) in TARGETS.iter().enumerate() {
        let n = smoke_iterations(name, n);
        let corpus = seeds(name);
        let mut m = Mutator::new(0x5eed_0000 + i as u64);
        let started = Instant::now();
        for round in 0..n {
            let input = if round % 4 == 0 {
                m.random(256)
            } else {
                m.mutate(&corpus)
            };
            if catch_unwind(AssertUnwindSafe(|| target(&input))).is_err() {
                panic!(
                    "fuzz target {name} panicked on input {round}: {:?}",
                    String::from_utf8_lossy(&input)
                );
            }
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "fuzz smoke: {name}: {n} inputs in {secs:.2} s ({:.0}/s)",
            n as f64 / secs
        );
    }
}
