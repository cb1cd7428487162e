//! The markdown report of a benchmark run: per case (scenario and size), each system's median
//! figures over its rounds, and the medians of the A/B ratios between Samvad and each other
//! system taken round by round (runs of one round were interleaved, so they saw the same
//! machine conditions).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;

use crate::coordinator::{RunResult, StepResult};
use crate::plan::{DEVICES, Scenario};

/// The system every other one is compared with.
const BASE: &str = "samvad";

pub fn write(dir: &Path, out: Option<&Path>) -> anyhow::Result<()> {
    let mut runs = Vec::new();
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    names.sort();
    for path in names {
        let text = std::fs::read_to_string(&path)?;
        let run: RunResult = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a run result", path.display()))?;
        runs.push(run);
    }
    let markdown = render(&runs);
    match out {
        Some(path) => std::fs::write(path, markdown)
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => {
            use std::io::Write as _;
            write!(std::io::stdout().lock(), "{markdown}")?;
        }
    }
    Ok(())
}

/// Runs of one case, by system, by round.
type Case<'a> = BTreeMap<String, BTreeMap<u32, &'a RunResult>>;

pub fn render(runs: &[RunResult]) -> String {
    let mut cases: BTreeMap<(u8, &str), Case<'_>> = BTreeMap::new();
    for run in runs {
        let order = match run.scenario {
            Scenario::Idle => 0,
            Scenario::OneToOne => 1,
            Scenario::MultiDevice => 2,
            Scenario::Fanout => 3,
        };
        cases
            .entry((order, run.case.as_str()))
            .or_default()
            .entry(run.system.clone())
            .or_default()
            .insert(run.round, run);
    }
    let mut md = String::new();
    for case in cases.values() {
        let Some(first) = case.values().flat_map(|r| r.values()).next() else {
            continue;
        };
        match first.scenario {
            Scenario::Idle => idle(&mut md, first, case),
            _ => steps(&mut md, first, case),
        }
    }
    md
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

fn fmt(v: Option<f64>, digits: usize) -> String {
    v.map_or("–".into(), |v| format!("{v:.digits$}"))
}

fn idle(md: &mut String, first: &RunResult, case: &Case<'_>) {
    let _ = writeln!(
        md,
        "### Idle connections ({} per system, one server process) [{}]\n\n\
         | system | rounds | held (median) | failed (median) | server RSS per connection (median) |\n\
         |---|---|---|---|---|",
        first.users, first.case
    );
    for (system, rounds) in case {
        let held = median(
            rounds
                .values()
                .map(|r| {
                    let closed = r.idle.as_ref().map_or(0, |i| i.closed_during_hold);
                    r.connected as f64 - closed as f64
                })
                .collect(),
        );
        let failed = median(rounds.values().map(|r| r.failed as f64).collect());
        let rss = median(
            rounds
                .values()
                .filter_map(|r| r.idle.as_ref()?.rss_per_connection_bytes)
                .collect(),
        );
        let _ = writeln!(
            md,
            "| {system} | {} | {} | {} | {} |",
            rounds.len(),
            fmt(held, 0),
            fmt(failed, 0),
            rss.map_or("–".into(), |b| format!("{:.1} KiB", b / 1024.0)),
        );
    }
    md.push('\n');
}

/// The figure compared across systems: deliveries per second at the last step within limits.
fn sustained(r: &RunResult) -> f64 {
    r.sustained.as_ref().map_or(0.0, |s| s.deliveries_per_sec)
}

fn steps(md: &mut String, first: &RunResult, case: &Case<'_>) {
    let title = match first.scenario {
        Scenario::OneToOne => format!("1:1 messages ({} pairs)", first.users / 2),
        Scenario::MultiDevice => format!(
            "1:1 messages, every user on {DEVICES} devices ({} pairs, {} connections)",
            first.users / 2,
            first.users * DEVICES
        ),
        _ => format!(
            "Fan-out, rooms of {} ({} rooms)",
            first.room_size,
            first.users / first.room_size.max(1)
        ),
    };
    let _ = writeln!(md, "### {title} [{}]\n", first.case);
    if first.scenario == Scenario::MultiDevice {
        let _ = writeln!(
            md,
            "Each user sends from its first device; every message must reach both devices of \
             its recipient, and each device acks it. Samvad only: Bun and NATS have no notion of \
             a user's devices.\n"
        );
    }
    let measured_dependencies = case
        .values()
        .flat_map(|r| r.values())
        .any(|r| r.steps.iter().any(|s| s.dependency_cpu_secs.is_some()));
    let dependencies = if measured_dependencies {
        "; `A + B`: B is the CPU of the processes the server depends on (for the cluster shape, \
         nginx, Redis, tansu and SecantusDB)"
    } else {
        ""
    };
    let _ = writeln!(
        md,
        "Sustained: the highest offered rate whose p99 stayed within the limit with nothing lost \
         (medians over rounds; latencies in µs, measured from the intended send time). Server \
         CPU: user + system time of the server's processes (`/proc/PID/stat`) over the step and \
         its drain, in µs per delivery received{dependencies}.\n\n\
         | system | rounds | sustained msgs/s | deliveries/s | delivery p50 | p99 | p99.9 | \
         durable ack p50 | p99 | p99.9 | server CPU µs/delivery | stopped (last round) |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for (system, rounds) in case {
        let at = |f: &dyn Fn(&StepResult) -> Option<f64>| {
            median(
                rounds
                    .values()
                    .filter_map(|r| f(r.sustained.as_ref()?))
                    .collect(),
            )
        };
        let has_acks = rounds
            .values()
            .any(|r| r.steps.iter().any(|s| s.counts.acked > 0));
        let ack = |f: &dyn Fn(&StepResult) -> u64| {
            if has_acks {
                fmt(at(&|s| Some(f(s) as f64)), 0)
            } else {
                "none".into()
            }
        };
        let last = rounds.values().last().map_or("", |r| r.stopped.as_str());
        let _ = writeln!(
            md,
            "| {system} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {last} |",
            rounds.len(),
            fmt(at(&|s| Some(s.msgs_per_sec)), 0),
            fmt(at(&|s| Some(s.deliveries_per_sec)), 0),
            fmt(at(&|s| Some(s.delivery_us.p50 as f64)), 0),
            fmt(at(&|s| Some(s.delivery_us.p99 as f64)), 0),
            fmt(at(&|s| Some(s.delivery_us.p999 as f64)), 0),
            ack(&|s| s.ack_us.p50),
            ack(&|s| s.ack_us.p99),
            ack(&|s| s.ack_us.p999),
            cpu(
                at(&|s| s.cpu_us_per_delivery(s.server_cpu_secs)),
                at(&|s| s.cpu_us_per_delivery(s.dependency_cpu_secs)),
            ),
        );
    }
    md.push('\n');
    per_rate(
        md,
        case,
        "Delivery p50 / p99 / p99.9 (µs) by offered msgs/s (medians over rounds; ✗: a step that \
         lost messages or passed the limit)",
        |steps| {
            let p = |f: &dyn Fn(&StepResult) -> u64| {
                fmt(median(steps.iter().map(|st| f(st) as f64).collect()), 0)
            };
            let bad = if steps.iter().any(|st| !st.ok) {
                " ✗"
            } else {
                ""
            };
            format!(
                "{} / {} / {}{bad}",
                p(&|st| st.delivery_us.p50),
                p(&|st| st.delivery_us.p99),
                p(&|st| st.delivery_us.p999)
            )
        },
    );
    per_rate(
        md,
        case,
        &format!(
            "Server CPU µs per delivery by offered msgs/s (medians over rounds{dependencies})"
        ),
        |steps| {
            let m = |secs: &dyn Fn(&StepResult) -> Option<f64>| {
                median(
                    steps
                        .iter()
                        .filter_map(|st| st.cpu_us_per_delivery(secs(st)))
                        .collect(),
                )
            };
            cpu(m(&|st| st.server_cpu_secs), m(&|st| st.dependency_cpu_secs))
        },
    );
    let per_device = if first.scenario == Scenario::MultiDevice {
        "; each device of a recipient counts apart, so every message is expected once per device"
    } else {
        ""
    };
    per_rate(
        md,
        case,
        &format!(
            "Deliveries received of those expected, by offered msgs/s (summed over \
             rounds{per_device})"
        ),
        |steps| {
            let delivered: u64 = steps.iter().map(|st| st.counts.delivered).sum();
            let expected: u64 = steps.iter().map(|st| st.counts.expected).sum();
            let missing: u64 = steps.iter().map(|st| st.lost).sum();
            if missing > 0 {
                format!("{delivered} of {expected}, {missing} missing")
            } else {
                format!("{delivered} of {expected}")
            }
        },
    );
    ratios(md, case);
}

/// A server's CPU µs per delivery, and its dependencies' after a `+` where measured.
pub fn cpu(server: Option<f64>, dependencies: Option<f64>) -> String {
    match dependencies {
        Some(d) => format!("{} + {d:.1}", fmt(server, 1)),
        None => fmt(server, 1),
    }
}

/// One figure per offered rate and system (`cell` of the steps at that rate, one per round),
/// so systems can be read side by side at the same load.
fn per_rate(
    md: &mut String,
    case: &Case<'_>,
    title: &str,
    cell: impl Fn(&[&StepResult]) -> String,
) {
    let mut rates: Vec<f64> = case
        .values()
        .flat_map(|r| r.values())
        .flat_map(|r| r.steps.iter().map(|s| s.rate))
        .collect();
    rates.sort_by(f64::total_cmp);
    rates.dedup();
    let systems: Vec<&String> = case.keys().collect();
    let _ = write!(md, "{title}\n\n| msgs/s |");
    for s in &systems {
        let _ = write!(md, " {s} |");
    }
    md.push_str("\n|---|");
    for _ in &systems {
        md.push_str("---|");
    }
    md.push('\n');
    for rate in rates {
        let _ = write!(md, "| {rate:.0} |");
        for s in &systems {
            let steps: Vec<&StepResult> = case[*s]
                .values()
                .filter_map(|r| r.steps.iter().find(|st| st.rate == rate))
                .collect();
            if steps.is_empty() {
                md.push_str(" |");
            } else {
                let _ = write!(md, " {} |", cell(&steps));
            }
        }
        md.push('\n');
    }
    md.push('\n');
}

/// Round by round, Samvad against each other system: sustained throughput, and delivery p99 at
/// the highest rate both sustained; the medians of those ratios. A variant of Samvad (the
/// cluster shape) is put over the all-in-one figure instead, as a fraction of it.
fn ratios(md: &mut String, case: &Case<'_>) {
    let Some(base) = case.get(BASE) else {
        return;
    };
    let mut lines = Vec::new();
    for (system, rounds) in case {
        if system == BASE {
            continue;
        }
        let variant = system.starts_with(BASE);
        let mut throughput = Vec::new();
        let mut p99 = Vec::new();
        let mut first = Vec::new();
        for (round, other) in rounds {
            let Some(ours) = base.get(round) else {
                continue;
            };
            let (a, b) = if variant {
                (other, ours)
            } else {
                (ours, other)
            };
            if sustained(b) > 0.0 {
                throughput.push(sustained(a) / sustained(b));
            }
            let common = a.steps.iter().rev().filter(|s| s.ok).find_map(|sa| {
                let sb = b.steps.iter().find(|sb| sb.rate == sa.rate && sb.ok)?;
                Some((sa.delivery_us.p99, sb.delivery_us.p99))
            });
            if let Some((pa, pb)) = common
                && pb > 0
            {
                p99.push(pa as f64 / pb as f64);
            }
            if let (Some(sa), Some(sb)) = (a.steps.first(), b.steps.first())
                && sa.rate == sb.rate
                && sb.delivery_us.p99 > 0
            {
                first.push(sa.delivery_us.p99 as f64 / sb.delivery_us.p99 as f64);
            }
        }
        let label = if variant {
            format!("{system} / {BASE}")
        } else {
            format!("{BASE} / {system}")
        };
        lines.push(format!(
            "| {label} | {} | {} | {} | {} |",
            throughput.len().max(first.len()),
            fmt(median(throughput), 2),
            fmt(median(p99), 2),
            fmt(median(first), 2)
        ));
    }
    if lines.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "Medians of per-round ratios A / B. Sustained deliveries/s: above 1 means A sustained \
         more. Delivery p99 at the highest rate both sustained, and at the first (lowest) \
         offered rate, which every run reaches: below 1 means A was faster.\n\n\
         | A / B | rounds | sustained deliveries/s | delivery p99, highest common rate | \
         delivery p99, first rate |\n|---|---|---|---|---|"
    );
    for l in lines {
        let _ = writeln!(md, "{l}");
    }
    md.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Target;
    use crate::stats::{Counts, Latency};

    fn step(rate: f64, p99: u64, ok: bool) -> StepResult {
        StepResult {
            rate,
            secs: 1.0,
            counts: Counts {
                sent: rate as u64,
                expected: rate as u64,
                delivered: rate as u64,
                ..Counts::default()
            },
            lost: 0,
            msgs_per_sec: rate,
            deliveries_per_sec: rate,
            ack_us: Latency::default(),
            delivery_us: Latency {
                count: 1,
                p50: p99 / 2,
                p99,
                p999: p99 * 2,
                max: p99 * 3,
            },
            ok,
            server_cpu_secs: None,
            dependency_cpu_secs: None,
        }
    }

    fn run(system: &str, round: u32, steps: Vec<StepResult>) -> RunResult {
        RunResult {
            scenario: Scenario::OneToOne,
            target: Target::Samvad,
            case: "pairs".into(),
            system: system.into(),
            round,
            addr: String::new(),
            workers: 1,
            users: 20,
            room_size: 2,
            connected: 20,
            failed: 0,
            error: None,
            idle: None,
            sustained: steps.iter().rev().find(|s| s.ok).cloned(),
            steps,
            stopped: String::new(),
        }
    }

    #[test]
    fn ratios_are_medians_of_per_round_ratios() {
        let runs = vec![
            run(
                "samvad",
                1,
                vec![step(100.0, 500, true), step(200.0, 900, true)],
            ),
            run(
                "bun",
                1,
                vec![step(100.0, 250, true), step(200.0, 300, false)],
            ),
            run(
                "samvad",
                2,
                vec![step(100.0, 400, true), step(200.0, 0, false)],
            ),
            run(
                "bun",
                2,
                vec![step(100.0, 400, true), step(200.0, 300, true)],
            ),
            run(
                "samvad",
                3,
                vec![step(100.0, 600, true), step(200.0, 800, true)],
            ),
            run(
                "bun",
                3,
                vec![step(100.0, 200, true), step(200.0, 200, true)],
            ),
            run("samvad-cluster", 1, vec![step(100.0, 1000, true)]),
        ];
        let md = render(&runs);
        // Throughput ratios: 200/100, 100/200, 200/200 → median 1.00.
        // p99 ratios at the highest common sustained rate: 500/250, 400/400, 800/200 → 2.00;
        // at the first rate, the same steps.
        assert!(
            md.contains("| samvad / bun | 3 | 1.00 | 2.00 | 2.00 |"),
            "{md}"
        );
        assert!(md.contains("| 200 |"), "{md}");
        // A variant of samvad is put over the all-in-one figure.
        assert!(
            md.contains("| samvad-cluster / samvad | 1 | 0.50 | 2.00 | 2.00 |"),
            "{md}"
        );
    }
    #[test]
    fn cpu_is_per_delivery_and_deliveries_are_summed_over_rounds() {
        let measured = |server: f64, dependencies: Option<f64>, lost: u64| {
            let mut s = step(100.0, 500, lost == 0);
            s.counts.delivered -= lost;
            s.lost = lost;
            s.server_cpu_secs = Some(server);
            s.dependency_cpu_secs = dependencies;
            s
        };
        let runs = vec![
            run("samvad", 1, vec![measured(0.002, None, 0)]),
            run("samvad", 2, vec![measured(0.004, None, 0)]),
            run("samvad-cluster", 1, vec![measured(0.005, Some(0.01), 10)]),
        ];
        let md = render(&runs);
        // 2 and 4 ms over 100 deliveries: 20 and 40 µs, median 30; the cluster's 5 and 10 ms
        // over the 90 that arrived.
        assert!(md.contains("| 100 | 30.0 | 55.6 + 111.1 |"), "{md}");
        assert!(md.contains("| 30.0 |  |"), "the sustained row: {md}");
        assert!(
            md.contains("| 100 | 200 of 200 | 90 of 100, 10 missing |"),
            "{md}"
        );
    }
}
