//! Which targets of a pool a request tries, and in which order (plain Rust, no host calls).
//!
//! The listener filter decides this once per request, from what it knows of each target
//! (throttled or ejected until when, whether its credential can give a token):
//!
//! 1. Closed targets (throttled, ejected) are left out wherever they are in the pool, so a
//!    request never waits for an answer that would only be another 429.
//! 2. Targets whose credential is failing to get a token are left out too, unless nothing
//!    else is open (then the request goes on and gets the usual 503 with Retry-After): an
//!    upstream filter's own answer is final in Envoy, so a token that fails during a spill
//!    could not move on to the next target.
//! 3. The request *starts* at a target of the first priority that has one left, chosen by
//!    `weight` among the targets of that priority (smooth weighted round robin per worker:
//!    exact proportions, no randomness), then falls back through every other target left, in
//!    priority order.
//!
//! The order is the routing-header value (the backends joined by `+`), and the Envoy
//! configuration has one aggregate cluster and route per value it can take ([`route_keys`]
//! lists them).

/// What the listener knows of one target when a request starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetState {
    pub priority: u32,
    pub weight: u32,
    /// When it opens again, if it is throttled or ejected.
    pub closed_until: Option<u64>,
    /// Its credential can give a token now or soon (it is not failing to get one).
    pub token_ok: bool,
}

/// Where a request for a pool goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// These targets (indices into the pool), in this order; never empty.
    Try(Vec<usize>),
    /// Every target is closed; the first opens again in this many ms (at least 1).
    AllClosed { retry_after_ms: u64 },
}

/// Smooth weighted round robin over the targets of one pool, on one worker (nginx's
/// algorithm): each pick adds every eligible target's weight to its credit, takes the target
/// with the most credit and takes the eligible total from it. Over any run of picks among the
/// same targets the shares are exact to within one pick, and picks of the same target are
/// spread out rather than bunched.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rotation {
    credit: Vec<i64>,
}

impl Rotation {
    /// Picks one of `eligible` (indices), weighted by `weight(index)`.
    pub fn pick(&mut self, eligible: &[usize], weight: impl Fn(usize) -> u32) -> Option<usize> {
        let mut total: i64 = 0;
        let mut best: Option<usize> = None;
        for &i in eligible {
            if self.credit.len() <= i {
                self.credit.resize(i + 1, 0);
            }
            let w = i64::from(weight(i).max(1));
            total += w;
            let c = self.credit.get_mut(i)?;
            *c += w;
            let credit = *c;
            let better = match best {
                None => true,
                Some(b) => self.credit.get(b).is_some_and(|cb| credit > *cb),
            };
            if better {
                best = Some(i);
            }
        }
        let b = best?;
        if let Some(c) = self.credit.get_mut(b) {
            *c -= total;
        }
        Some(b)
    }
}

/// The order in which a request tries the targets of a pool (`targets` in priority order).
pub fn choose(targets: &[TargetState], now_ms: u64, rotation: &mut Rotation) -> Start {
    let open = |t: &TargetState| t.closed_until.is_none_or(|until| until <= now_ms);
    let mut candidates: Vec<usize> = (0..targets.len())
        .filter(|&i| targets.get(i).is_some_and(|t| open(t) && t.token_ok))
        .collect();
    if candidates.is_empty() {
        candidates = (0..targets.len())
            .filter(|&i| targets.get(i).is_some_and(open))
            .collect();
    }
    let Some(first_priority) = candidates
        .iter()
        .filter_map(|&i| targets.get(i).map(|t| t.priority))
        .min()
    else {
        let soonest = targets
            .iter()
            .filter_map(|t| t.closed_until)
            .min()
            .unwrap_or(now_ms);
        return Start::AllClosed {
            retry_after_ms: soonest.saturating_sub(now_ms).max(1),
        };
    };
    let group: Vec<usize> = candidates
        .iter()
        .copied()
        .filter(|&i| targets.get(i).is_some_and(|t| t.priority == first_priority))
        .collect();
    let start = match group.as_slice() {
        [only] => *only,
        _ => rotation
            .pick(&group, |i| targets.get(i).map_or(1, |t| t.weight))
            .unwrap_or(candidates[0]),
    };
    let mut order = Vec::with_capacity(candidates.len());
    order.push(start);
    order.extend(candidates.into_iter().filter(|&i| i != start));
    Start::Try(order)
}

/// The routing-header value of a request that tries `backends` in this order: the names
/// joined by `+`. One backend is just its name, the route of a plain backend, so a request
/// left with one target needs no route of its own.
pub fn route_key<'a>(backends: impl IntoIterator<Item = &'a str>) -> String {
    let mut key = String::new();
    for (i, b) in backends.into_iter().enumerate() {
        if i > 0 {
            key.push('+');
        }
        key.push_str(b);
    }
    key
}

/// Every order of two or more targets [`choose`] can give for a pool whose targets (in
/// priority order) have these priorities: each set of targets that may be left open, started
/// at each target of its first priority. The Envoy configuration needs an aggregate cluster
/// and a route for each (2^n - n - 1 of them for n targets of distinct priorities: 1 for 2
/// targets, 4 for 3, 11 for 4).
pub fn route_keys(priorities: &[u32]) -> Vec<Vec<usize>> {
    let n = priorities.len().min(MAX_POOL);
    let mut keys = Vec::new();
    for set in 1u32..(1 << n) {
        if set.count_ones() < 2 {
            continue;
        }
        let members: Vec<usize> = (0..n).filter(|i| set & (1 << i) != 0).collect();
        let Some(first) = members
            .iter()
            .filter_map(|&i| priorities.get(i).copied())
            .min()
        else {
            continue;
        };
        for &start in &members {
            if priorities.get(start) != Some(&first) {
                continue;
            }
            let mut order = vec![start];
            order.extend(members.iter().copied().filter(|&i| i != start));
            keys.push(order);
        }
    }
    keys
}

/// The largest pool [`route_keys`] enumerates (the configuration allows no more targets).
pub const MAX_POOL: usize = 8;

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000_000;

    fn open(priority: u32) -> TargetState {
        TargetState {
            priority,
            weight: 1,
            closed_until: None,
            token_ok: true,
        }
    }

    fn closed(priority: u32, until: u64) -> TargetState {
        TargetState {
            closed_until: Some(until),
            ..open(priority)
        }
    }

    fn order(targets: &[TargetState]) -> Vec<usize> {
        match choose(targets, NOW, &mut Rotation::default()) {
            Start::Try(o) => o,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn in_priority_order_skipping_every_closed_target() {
        assert_eq!(order(&[open(0), open(1)]), vec![0, 1]);
        assert_eq!(order(&[closed(0, NOW + 10), open(1)]), vec![1]);
        // A throttled target in the middle of the pool is not tried either.
        assert_eq!(order(&[open(0), closed(1, NOW + 10), open(2)]), vec![0, 2]);
        assert_eq!(
            order(&[closed(0, NOW), open(1)]),
            vec![0, 1],
            "a horizon that has passed is open"
        );
    }

    #[test]
    fn all_closed_gives_the_smallest_wait() {
        assert_eq!(
            choose(
                &[closed(0, NOW + 9000), closed(1, NOW + 1200)],
                NOW,
                &mut Rotation::default()
            ),
            Start::AllClosed {
                retry_after_ms: 1200
            }
        );
        assert_eq!(
            choose(&[], NOW, &mut Rotation::default()),
            Start::AllClosed { retry_after_ms: 1 }
        );
    }

    #[test]
    fn a_target_whose_token_fails_is_left_out_unless_nothing_else_is_open() {
        let no_token = TargetState {
            token_ok: false,
            ..open(1)
        };
        assert_eq!(order(&[open(0), no_token, open(2)]), vec![0, 2]);
        assert_eq!(order(&[closed(0, NOW + 5), no_token]), vec![1]);
        let first_no_token = TargetState {
            token_ok: false,
            ..open(0)
        };
        assert_eq!(order(&[first_no_token, no_token]), vec![0, 1]);
    }

    #[test]
    fn weights_spread_the_start_within_a_priority_exactly() {
        let mut east = open(0);
        east.weight = 3;
        let west = open(0);
        let payg = open(1);
        let mut rotation = Rotation::default();
        let mut starts = [0usize; 3];
        let mut previous = None;
        let mut repeats = 0;
        for _ in 0..1000 {
            let Start::Try(o) = choose(&[east, west, payg], NOW, &mut rotation) else {
                panic!()
            };
            assert_eq!(o.len(), 3);
            assert_eq!(o[2], 2, "the next priority comes after the whole first one");
            starts[o[0]] += 1;
            if previous == Some(o[0]) && o[0] == 1 {
                repeats += 1;
            }
            previous = Some(o[0]);
        }
        assert_eq!(starts, [750, 250, 0]);
        assert_eq!(
            repeats, 0,
            "smooth: the lighter target never twice in a row"
        );
        // A closed target of the group is skipped; the others share its traffic.
        let throttled_east = TargetState {
            closed_until: Some(NOW + 10),
            ..east
        };
        for _ in 0..10 {
            assert_eq!(
                choose(&[throttled_east, west, payg], NOW, &mut rotation),
                Start::Try(vec![1, 2])
            );
        }
    }

    #[test]
    fn equal_weights_alternate() {
        let mut rotation = Rotation::default();
        let picks: Vec<usize> = (0..6)
            .map(|_| match choose(&[open(0), open(0)], NOW, &mut rotation) {
                Start::Try(o) => o[0],
                _ => 9,
            })
            .collect();
        assert_eq!(picks, vec![0, 1, 0, 1, 0, 1]);
    }

    #[test]
    fn route_keys_cover_every_order_choose_gives() {
        assert_eq!(route_keys(&[0, 1]), vec![vec![0, 1]]);
        assert_eq!(
            route_keys(&[0, 1, 2]),
            vec![vec![0, 1], vec![0, 2], vec![1, 2], vec![0, 1, 2]]
        );
        assert_eq!(route_keys(&[0, 0]), vec![vec![0, 1], vec![1, 0]]);
        assert_eq!(route_keys(&[0, 1, 2, 3]).len(), 11);
        assert_eq!(route_keys(&[0; 8]).len(), 1016);
        // Exhaustively for pools of up to 4 targets and any priorities: whatever is closed,
        // the order choose gives is one of the listed keys.
        let shapes: [&[u32]; 5] = [
            &[0, 1, 2],
            &[0, 0, 1],
            &[0, 1, 1],
            &[0, 0, 0],
            &[0, 0, 1, 1],
        ];
        for prios in shapes {
            let keys = route_keys(prios);
            for closed_set in 0u32..(1 << prios.len()) {
                let ts: Vec<TargetState> = prios
                    .iter()
                    .enumerate()
                    .map(|(i, p)| {
                        if closed_set & (1 << i) != 0 {
                            closed(*p, NOW + 5)
                        } else {
                            open(*p)
                        }
                    })
                    .collect();
                let mut rotation = Rotation::default();
                for _ in 0..4 {
                    if let Start::Try(o) = choose(&ts, NOW, &mut rotation) {
                        assert!(o.len() == 1 || keys.contains(&o), "{prios:?} {o:?}");
                    }
                }
            }
        }
        assert_eq!(route_key(["ptu", "payg"]), "ptu+payg");
        assert_eq!(route_key(["payg"]), "payg");
        assert_eq!(route_key(Vec::<&str>::new()), "");
    }
}
