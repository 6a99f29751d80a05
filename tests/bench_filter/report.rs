//! bench_filter's report: one table of every scenario (a goal scenario's figures are the
//! medians of its rounds, each round's ratio taken against that round's bare Envoy), and the
//! `goal:` lines, each goal's figure with its run-to-run spread.

use super::{percentile, sorted, WrkResult};
use std::fmt::Write as _;

/// One measured run of a scenario.
pub struct Row {
    pub name: String,
    /// The round of a goal scenario; `None`: a scenario measured once.
    pub round: Option<usize>,
    pub wrk: WrkResult,
    /// One-connection (p50, p99) latency, µs.
    pub latency: Option<(f64, f64)>,
}

/// (median, min, max) of `values` (NaN when empty).
pub fn spread(values: &[f64]) -> (f64, f64, f64) {
    let s = sorted(values.iter().copied().filter(|v| !v.is_nan()).collect());
    (
        percentile(&s, 0.5),
        s.first().copied().unwrap_or(f64::NAN),
        s.last().copied().unwrap_or(f64::NAN),
    )
}

/// `median (min-max over n rounds)` with `decimals` digits.
pub fn with_spread(values: &[f64], decimals: usize) -> String {
    let (m, lo, hi) = spread(values);
    format!(
        "{m:.decimals$} ({lo:.decimals$}-{hi:.decimals$} over {} rounds)",
        values.len()
    )
}

pub struct Report {
    pub bare: String,
    pub rows: Vec<Row>,
}

impl Report {
    fn runs<'r>(&'r self, name: &'r str) -> impl Iterator<Item = &'r Row> + 'r {
        self.rows.iter().filter(move |r| r.name == name)
    }

    fn bare_run(&self, round: usize) -> Option<&Row> {
        self.runs(&self.bare).find(|r| r.round == Some(round))
    }

    /// The mean of every bare run's req/s: what a scenario measured once is compared with.
    pub fn bare_mean(&self) -> f64 {
        let v: Vec<f64> = self
            .runs(&self.bare)
            .map(|r| r.wrk.requests_per_s)
            .collect();
        v.iter().sum::<f64>() / v.len().max(1) as f64
    }

    /// The bare run a run of a scenario is compared with: its round's, else the mean.
    fn baseline(&self, run: &Row) -> (f64, Option<(f64, f64)>) {
        match run.round.and_then(|i| self.bare_run(i)) {
            Some(b) => (b.wrk.requests_per_s, b.latency),
            None => (self.bare_mean(), self.bare_run(0).and_then(|b| b.latency)),
        }
    }

    /// Throughput of each run of `name` against its bare Envoy run.
    pub fn ratios(&self, name: &str) -> Vec<f64> {
        self.runs(name)
            .map(|r| r.wrk.requests_per_s / self.baseline(r).0)
            .collect()
    }

    /// Per round, µs per request (1/req/s at saturation) of `name` minus `base`'s.
    pub fn added_us(&self, name: &str, base: &str) -> Vec<f64> {
        self.runs(name)
            .filter_map(|r| {
                let b = self.runs(base).find(|b| b.round == r.round)?;
                Some(1e6 / r.wrk.requests_per_s - 1e6 / b.wrk.requests_per_s)
            })
            .collect()
    }

    pub fn table(&self) -> String {
        let mut names: Vec<&str> = Vec::new();
        for r in &self.rows {
            if !names.contains(&r.name.as_str()) {
                names.push(&r.name);
            }
        }
        let mut out = String::new();
        let _ = writeln!(
            out,
            "| scenario | runs | req/s | x bare (min-max) | wrk p50 | wrk p99 | 1-conn p50 | 1-conn p99 | p50 added | p99 added |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for name in names {
            let runs: Vec<&Row> = self.runs(name).collect();
            let median =
                |f: &dyn Fn(&Row) -> f64| spread(&runs.iter().map(|r| f(r)).collect::<Vec<_>>()).0;
            let (ratio, lo, hi) = spread(&self.ratios(name));
            let ratio = if runs.len() > 1 {
                format!("{ratio:.2} ({lo:.2}-{hi:.2})")
            } else {
                format!("{ratio:.2}")
            };
            let lat = |f: &dyn Fn((f64, f64), (f64, f64)) -> f64| {
                let v: Vec<f64> = runs
                    .iter()
                    .filter_map(|r| Some(f(r.latency?, self.baseline(r).1?)))
                    .collect();
                (!v.is_empty()).then(|| spread(&v).0)
            };
            let us = |v: Option<f64>, signed: bool| match v {
                Some(v) if signed => format!("{v:+.0} us"),
                Some(v) => format!("{v:.0} us"),
                None => "-".into(),
            };
            let _ = writeln!(
                out,
                "| {name} | {} | {:.0} | {ratio} | {:.0} us | {:.0} us | {} | {} | {} | {} |",
                runs.len(),
                median(&|r| r.wrk.requests_per_s),
                median(&|r| r.wrk.p50_us),
                median(&|r| r.wrk.p99_us),
                us(lat(&|l, _| l.0), false),
                us(lat(&|l, _| l.1), false),
                us(lat(&|l, b| l.0 - b.0), true),
                us(lat(&|l, b| l.1 - b.1), true),
            );
        }
        out
    }
}

/// Envoy's resident set size (VmRSS of /proc/<pid>/status), bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse::<u64>()
        .ok()?;
    Some(kb * 1024)
}

/// The machine's load average (1, 5, 15 minutes) and its cores, as the report states them.
pub fn machine_load() -> String {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("load average {} on {cores} cores", load.join(" / "))
}

#[test]
fn spread_and_ratios() {
    assert_eq!(spread(&[3.0, 1.0, 2.0]), (2.0, 1.0, 3.0));
    assert!(spread(&[]).0.is_nan());
    let run = |name: &str, round, rps| Row {
        name: name.into(),
        round,
        wrk: WrkResult {
            requests: 1,
            requests_per_s: rps,
            ..Default::default()
        },
        latency: None,
    };
    let report = Report {
        bare: "bare".into(),
        rows: vec![
            run("bare", Some(0), 100.0),
            run("f", Some(0), 50.0),
            run("bare", Some(1), 200.0),
            run("f", Some(1), 50.0),
            run("once", None, 75.0),
        ],
    };
    assert_eq!(report.ratios("f"), vec![0.5, 0.25]);
    assert_eq!(report.ratios("once"), vec![0.5]);
    assert_eq!(report.added_us("f", "bare"), vec![10_000.0, 15_000.0]);
    assert!(report.table().contains("| f | 2 | 50 | 0.50 (0.25-0.50) |"));
}
