//! The results as Markdown tables (results.md) and JSON (results.json), with the targets
//! checked.

use std::fmt::Write as _;

use serde_json::{json, Value};

use crate::bootstrap::BootstrapResult;
use crate::capacity::CapacityResult;
use crate::cost::{CostResult, InstructionCount, SdkCostResult};
use crate::drain::{DrainResult, Settings, Strategy};
use crate::pacing::PacingResult;
use crate::shared::{self, Mode, Probe, SharedRun, Table};
use crate::stats;

/// The targets of issue 6.
pub mod targets {
    /// Drain efficiency T*/T of ours with one instance.
    pub const EFFICIENCY_K1: f64 = 0.98;
    /// Drain efficiency T*/T of ours with several instances.
    pub const EFFICIENCY_KN: f64 = 0.95;
    /// Throttled calls / all calls of ours.
    pub const THROTTLE_RATIO: f64 = 0.005;
    /// Pacing error |achieved − target| / target.
    pub const PACING_ERROR: f64 = 0.01;
    /// Handler CPU per message, µs.
    pub const CPU_US: f64 = 10.0;
    /// Init to ready, ms.
    pub const INIT_MS: f64 = 30.0;
    /// Peak RSS, MB (10⁶ bytes).
    pub const RSS_MB: f64 = 25.0;
    /// Bootstrap size, MB (10⁶ bytes).
    pub const BOOTSTRAP_MB: f64 = 10.0;
}

/// The drain table: one row per run.
fn drain_rows(md: &mut String, drains: &[DrainResult]) {
    let _ = writeln!(
            md,
            "| K | quota B / r | batch | strategy | M | T* (s) | T (s) | T*/T | started | throttled / calls | reported for retry | redriven to DLQ | enqueue→start p50 / p99 (s) | CPU/msg (µs) | client CPU/msg (µs) |"
        );
    let _ = writeln!(
        md,
        "|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for d in drains {
        let s = &d.scenario;
        let _ = writeln!(
                md,
                "| {} | {} / {} | {} | {} | {} | {:.1} | {}{:.2} | {} | {} | {:.2} % ({} / {}) | {} | {} | {} / {} | {:.1} | {:.1} |",
                s.instances,
                s.burst,
                s.refill_per_second,
                d.batch_size,
                match (d.strategy, d.starts_burst) {
                    (Strategy::Ours, _) => "**ours**".to_string(),
                    (Strategy::OursHeadroom, Some(b)) => format!("ours+headroom (STARTS_BURST {b})"),
                    (other, _) => other.to_string(),
                },
                s.messages,
                s.ideal_seconds(),
                if d.drained { "" } else { "> " },
                d.drain_seconds,
                opt(d.efficiency(), 3),
                d.started,
                d.throttle_ratio() * 100.0,
                d.throttled,
                d.calls,
                d.reported,
                d.redriven,
                opt(d.enqueue_to_start(50.0), 2),
                opt(d.enqueue_to_start(99.0), 2),
                d.cpu_per_message_us(),
                d.client_cpu_per_message_us(),
            );
    }
    let _ = writeln!(md);
}

fn shared_json(r: &SharedRun) -> Value {
    let p = &r.plan;
    json!({
        "scenario": p.id, "title": p.title, "mode": p.mode.to_string(), "skew_ms": p.skew.as_millis() as u64,
        "burst": p.account.0, "refill_per_second": p.account.1,
        "deployments": p.deployments.iter().map(|d| json!({
            "instances": d.instances, "messages": d.messages, "starts_per_second": d.rate,
            "starts_burst": d.burst, "max_concurrency": d.max_concurrency, "batch_size": d.batch_size,
        })).collect::<Vec<_>>(),
        "ideal_seconds": if p.ideal_seconds.is_finite() { Some(p.ideal_seconds) } else { None },
        "drain_seconds": r.drain_seconds, "drained": r.drained, "efficiency": r.efficiency(),
        "messages": r.messages, "started": r.started, "calls": r.calls, "throttled": r.throttled,
        "throttle_ratio": r.throttle_ratio(), "table_calls": r.table_calls,
        "table_calls_per_start": r.table_calls_per_start(), "fallbacks": r.fallbacks, "redriven": r.redriven,
        "dropped_slots": r.dropped, "refused_writes": r.refused, "decreases": r.decreases,
        "table_faults": r.table_faults, "busiest_item_write_units_per_second": r.busiest_item_units,
        "lease_latency_p99_ms": r.lease_latency_p99_ms,
        "starts_per_second": r.starts_per_second, "throttles_per_second": r.throttles_per_second,
        "replaced": r.replaced.as_ref().map(|x| json!({
            "fresh_at_seconds": x.fresh_at, "throttled_after": x.throttled_after,
            "throttled_fresh": x.throttled_fresh, "calls_fresh": x.calls_fresh,
        })),
        "foreign": r.foreign.as_ref().map(|f| json!({
            "rate": f.rate, "calls": f.calls, "throttled": f.throttled, "our_rate": f.our_rate,
            "left_rate": f.left_rate,
        })),
        "change": r.change.as_ref().map(|c| json!({
            "at_seconds": c.at, "old_rate": c.old_rate, "new_rate": c.new_rate, "before_rate": c.before_rate,
            "after_rate": c.after_rate, "settle_seconds": c.settle_seconds, "throttled_after": c.throttled_after,
        })),
    })
}

/// The shared budget's tables: the runs, the scenario details, the probes, the targets.
fn shared_tables(md: &mut String, runs: &[SharedRun], probes: &[Probe]) {
    let _ = writeln!(md, "## Shared budget (coordinated mode)\n");
    let _ = writeln!(
        md,
        "Each scenario runs against one FakeSfn (the account's exact bucket): **static** (each instance \
         paces STARTS_PER_SECOND / MAX_CONCURRENCY) and **shared** (every instance of every deployment leases \
         from one budget item, `QUOTA_KEY` {}, in a `MemoryStore`): with a quick table ({} – {} ms per call), \
         and with a faulty one (10 – 30 ms, 3 % of answers 150 ms late, 1 % 500s, 1 % lost answers, 1 % \
         throttled; DynamoDB's 1,000 write units/s per item in both); scenario 2 also with the instances' \
         clocks {} ms ahead and behind, alternately. Network, queue and mapping as in the drain. T = start → \
         the last busy queue empty; T* = max(0, (M − B) / r) of the account (scenario 5: of what the foreign \
         caller leaves). Throttled and calls are ours only.\n",
        shared::QUOTA_KEY,
        shared::TABLE_LATENCY.0.as_millis(),
        shared::TABLE_LATENCY.1.as_millis(),
        shared::SKEW.as_millis(),
    );
    let _ = writeln!(
        md,
        "| # | scenario | mode | deployments: K × STARTS_PER_SECOND / STARTS_BURST / MAX_CONCURRENCY, M | batch | T* (s) | T (s) | T*/T | started | throttled / calls | table calls / start | fallbacks | dropped slots | refused writes, decreases | table faults | busiest item (WU in 1 s) | lease p99 (ms) | redriven |"
    );
    let _ = writeln!(
        md,
        "|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in runs {
        let p = &r.plan;
        let deployments: Vec<String> = p
            .deployments
            .iter()
            .map(|d| {
                format!(
                    "{} × {} / {} / {}, M {}",
                    d.instances, d.rate, d.burst, d.max_concurrency, d.messages
                )
            })
            .collect();
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {}{:.2} | {} | {} | {:.2} % ({} / {}) | {} | {} | {} | {} | {} | {} | {} | {} |",
            p.id,
            p.title,
            match (p.mode, p.skew.is_zero()) {
                (Mode::Static, _) => "static".to_string(),
                (mode, true) => format!("**{mode}**"),
                (mode, false) => format!("**{mode}, skew ±{} ms**", p.skew.as_millis()),
            },
            deployments.join("; "),
            p.deployments.first().map_or(0, |d| d.batch_size),
            if p.ideal_seconds.is_finite() {
                format!("{:.1}", p.ideal_seconds)
            } else {
                "—".to_string()
            },
            if r.drained { "" } else { "> " },
            r.drain_seconds,
            opt(r.efficiency(), 3),
            r.started,
            r.throttle_ratio() * 100.0,
            r.throttled,
            r.calls,
            shared_only(p.mode, format!("{:.3}", r.table_calls_per_start())),
            r.fallbacks,
            shared_only(p.mode, r.dropped.to_string()),
            shared_only(p.mode, format!("{}, {}", r.refused, r.decreases)),
            shared_only(p.mode, r.table_faults.to_string()),
            shared_only(p.mode, r.busiest_item_units.to_string()),
            shared_only(p.mode, opt(r.lease_latency_p99_ms, 1)),
            r.redriven,
        );
    }
    let _ = writeln!(md);
    let replaced: Vec<&SharedRun> = runs.iter().filter(|r| r.replaced.is_some()).collect();
    if !replaced.is_empty() {
        let _ = writeln!(md, "### 4. An instance replaced mid-drain\n");
        let _ = writeln!(
            md,
            "| mode | fresh instance's first batch at (s) | throttles from then on (all instances) | the fresh instance's throttled / calls |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|");
        for r in replaced {
            if let Some(x) = &r.replaced {
                let _ = writeln!(
                    md,
                    "| {} | {:.2} | {} | {} / {} |",
                    r.plan.mode, x.fresh_at, x.throttled_after, x.throttled_fresh, x.calls_fresh
                );
            }
        }
        let _ = writeln!(md);
    }
    let foreign: Vec<&SharedRun> = runs.iter().filter(|r| r.foreign.is_some()).collect();
    if !foreign.is_empty() {
        let _ = writeln!(md, "### 5. A foreign caller\n");
        let (from, to) = shared::FOREIGN_WINDOW;
        let _ = writeln!(
            md,
            "| mode | foreign rate (/s) | foreign calls (throttled) | our rate in [{}, {}) s (/s) | left for us (/s) | ours / left | our throttled / calls |",
            from.as_secs(),
            to.as_secs()
        );
        let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|");
        for r in foreign {
            if let Some(f) = &r.foreign {
                let _ = writeln!(
                    md,
                    "| {} | {:.0} | {} ({}) | {:.1} | {:.0} | {:.3} | {:.2} % ({} / {}) |",
                    r.plan.mode,
                    f.rate,
                    f.calls,
                    f.throttled,
                    f.our_rate,
                    f.left_rate,
                    f.our_rate / f.left_rate,
                    r.throttle_ratio() * 100.0,
                    r.throttled,
                    r.calls
                );
            }
        }
        let _ = writeln!(md);
    }
    let changes: Vec<&SharedRun> = runs.iter().filter(|r| r.change.is_some()).collect();
    if !changes.is_empty() {
        let _ = writeln!(md, "### 6. The rate halves mid-run\n");
        let _ = writeln!(
            md,
            "| mode | change at (s) | rate: old → new (/s) | ours, 2 s before (/s) | ours, from 1 s after (/s) | within 5 % of the new rate after (s) | throttles after | starts per second |"
        );
        let _ = writeln!(md, "|---|---:|---|---:|---:|---:|---:|---|");
        for r in changes {
            if let Some(c) = &r.change {
                let series: Vec<String> = r.starts_per_second.iter().map(u64::to_string).collect();
                let _ = writeln!(
                    md,
                    "| {} | {:.2} | {} → {} | {:.1} | {:.1} | {} | {} | {} |",
                    r.plan.mode,
                    c.at,
                    c.old_rate,
                    c.new_rate,
                    c.before_rate,
                    c.after_rate,
                    c.settle_seconds
                        .map_or_else(|| "never".to_string(), |s| format!("{s:.1}")),
                    c.throttled_after,
                    series.join(", ")
                );
            }
        }
        let _ = writeln!(md);
    }
    if !probes.is_empty() {
        let _ = writeln!(md, "### 7. Table calls and latency per start (probe)\n");
        let _ = writeln!(
            md,
            "`Pacing::reserve` alone (no network; each call takes 20 ms), an offered load of the quota's full rate \
             arriving as invocations of the given size, at most MAX_IN_FLIGHT units at once. Latency = from asking \
             the pacer to the call going out (time in `reserve` + the slot's wait). The bucket never runs dry at \
             this load, so the static split never waits: the shared mode's latency is the table's.\n"
        );
        let _ = writeln!(
            md,
            "| mode | instances | units per invocation | offered (/s) | starts | table calls / start | request → call p50 / p99 (ms) |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|");
        for p in probes {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} / {} |",
                p.mode,
                p.instances,
                p.batch,
                p.rate,
                p.starts,
                shared_only(p.mode, format!("{:.3}", p.table_calls_per_start())),
                opt(p.latency(50.0), 1),
                opt(p.latency(99.0), 1),
            );
        }
        let _ = writeln!(md);
    }
    shared_targets(md, runs, probes);
}

/// `text` in shared mode, a dash in static mode.
fn shared_only(mode: Mode, text: String) -> String {
    match mode.is_shared() {
        true => text,
        false => "—".to_string(),
    }
}

/// The targets of the shared budget: the static split's figure beside the shared ones, with
/// the quick and with the faulty table (and its target).
fn shared_targets(md: &mut String, runs: &[SharedRun], probes: &[Probe]) {
    use shared::targets as t;
    let find = |id: u32, mode: Mode, skewed: bool| {
        runs.iter()
            .find(|r| r.plan.id == id && r.plan.mode == mode && r.plan.skew.is_zero() != skewed)
    };
    let _ = writeln!(md, "### Targets (shared mode)\n");
    let _ = writeln!(
        md,
        "| # | measure | static | shared, quick table | shared, faulty table | target (quick; faulty) | quick | faulty |"
    );
    let _ = writeln!(md, "|---:|---|---:|---:|---:|---|---|---|");
    type Measure<'a> = &'a dyn Fn(&SharedRun) -> Option<f64>;
    let mut row =
        |id: u32, measure: &str, value: Measure, fmt: &dyn Fn(f64) -> String, target: (f64, f64), at_most: bool| {
            let shown = |r: Option<&SharedRun>| r.and_then(value).map_or_else(|| "—".to_string(), fmt);
            let ok = |r: Option<&SharedRun>, limit: f64| match r.and_then(value) {
                Some(v) if at_most => pass(v <= limit).to_string(),
                Some(v) => pass(v >= limit).to_string(),
                None => "—".to_string(),
            };
            let (quick, faulty) = (
                find(id, Mode::Shared(Table::Quick), false),
                find(id, Mode::Shared(Table::Faulty), false),
            );
            let sign = if at_most { "≤" } else { "≥" };
            let _ = writeln!(
                md,
                "| {id} | {measure} | {} | {} | {} | {sign} {}; {sign} {} | {} | {} |",
                shown(find(id, Mode::Static, false)),
                shown(quick),
                shown(faulty),
                fmt(target.0),
                fmt(target.1),
                ok(quick, target.0),
                ok(faulty, target.1),
            );
        };
    let three = |v: f64| format!("{v:.3}");
    let pct = |v: f64| format!("{:.2} %", v * 100.0);
    let secs = |v: f64| format!("{v:.1} s");
    let count = |v: f64| format!("{v:.0}");
    let efficiency = |r: &SharedRun| r.efficiency();
    let throttles = |r: &SharedRun| Some(r.throttle_ratio());
    let eff = (t::EFFICIENCY, t::FAULTY_EFFICIENCY);
    row(1, "T*/T, one of two deployments busy", &efficiency, &three, eff, false);
    row(2, "T*/T, two busy deployments", &efficiency, &three, eff, false);
    let throttle_limit = (t::THROTTLE_RATIO, t::THROTTLE_RATIO);
    row(
        2,
        "throttled / calls, two busy deployments",
        &throttles,
        &pct,
        throttle_limit,
        true,
    );
    row(3, "T*/T, K = 10", &efficiency, &three, eff, false);
    let after = |r: &SharedRun| r.replaced.as_ref().map(|x| x.throttled_after as f64);
    row(
        4,
        "throttles after the fresh instance started",
        &after,
        &count,
        (0.0, 0.0),
        true,
    );
    let foreign = (t::FOREIGN_THROTTLE_RATIO, t::FOREIGN_THROTTLE_RATIO);
    row(
        5,
        "our throttled / our calls, foreign caller at r/3",
        &throttles,
        &pct,
        foreign,
        true,
    );
    let left = |r: &SharedRun| r.foreign.as_ref().map(|f| f.our_rate / f.left_rate);
    let fraction = (t::FOREIGN_RATE_FRACTION, t::FOREIGN_RATE_FRACTION);
    row(5, "our rate / what is left (2r/3)", &left, &three, fraction, false);
    let settle = |r: &SharedRun| r.change.as_ref().and_then(|c| c.settle_seconds);
    let settle_limit = (t::SETTLE_SECONDS, t::SETTLE_SECONDS);
    row(
        6,
        "time to within 5 % of the new rate",
        &settle,
        &secs,
        settle_limit,
        true,
    );
    if let Some(r) = find(2, Mode::Shared(Table::Faulty), true) {
        let v = r.throttle_ratio();
        let _ = writeln!(
            md,
            "| 2 | throttled / calls, faulty table, clocks ±{} ms | — | — | {} | —; ≤ {} | — | {} |",
            r.plan.skew.as_millis(),
            pct(v),
            pct(t::THROTTLE_RATIO),
            pass(v <= t::THROTTLE_RATIO)
        );
    }
    for p in probes.iter().filter(|p| p.mode.is_shared()) {
        let v = p.table_calls_per_start();
        let _ = writeln!(
            md,
            "| 7 | table calls / start at full rate, {} instance(s), {} units per invocation | — | {:.3} | — | ≤ {}; — | {} | — |",
            p.instances,
            p.batch,
            v,
            t::TABLE_CALLS_PER_START,
            pass(v <= t::TABLE_CALLS_PER_START)
        );
    }
    let _ = writeln!(md);
}

/// Everything measured in one invocation of the runner.
#[derive(Default)]
pub struct Results {
    /// The machine and its load (free text lines).
    pub machine: Vec<String>,
    /// The command line.
    pub command: String,
    /// The drain runs' settings.
    pub settings: Option<Settings>,
    /// The fake endpoint's capacity.
    pub capacity: Option<CapacityResult>,
    /// The drain runs.
    pub drains: Vec<DrainResult>,
    /// The drain's sensitivity to BatchSize (a fixed BatchSize instead of the default).
    pub sensitivity: Vec<DrainResult>,
    /// Pacing accuracy per target.
    pub pacing: Vec<PacingResult>,
    /// Handler cost.
    pub cost: Option<CostResult>,
    /// Handler plus the real SDK client over loopback.
    pub sdk_cost: Option<SdkCostResult>,
    /// Instruction counts (callgrind), or why not.
    pub instructions: Option<Result<InstructionCount, String>>,
    /// The bootstrap.
    pub bootstrap: Option<BootstrapResult>,
    /// The cross-built Lambda bootstrap (`cargo lambda build --release`), when present:
    /// (path, architecture, bytes).
    pub lambda_bootstrap: Option<(String, String, u64)>,
    /// Chart files written (relative to the output folder).
    pub charts: Vec<String>,
    /// The shared budget's runs (static and shared side by side).
    pub shared: Vec<SharedRun>,
    /// The shared budget's latency probes.
    pub probes: Vec<Probe>,
    /// Batch executions (`MESSAGES_PER_EXECUTION`).
    pub batches: Vec<crate::batch::BatchRun>,
    /// The `scale` section's runs.
    pub scale: Vec<crate::scale::ScaleRun>,
    /// The cap on running executions (`MAX_RUNNING_EXECUTIONS`).
    pub running: Vec<crate::running::CapRun>,
}

pub(crate) fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "—".to_string(), |v| format!("{v:.digits$}"))
}

pub(crate) fn pass(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "**missed**"
    }
}

fn mb(kib_or_bytes: f64) -> f64 {
    kib_or_bytes / 1e6
}

impl Results {
    /// The Markdown report.
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "# sfn-pacer benchmark results\n");
        let _ = writeln!(md, "Command: `{}`\n", self.command);
        for line in &self.machine {
            let _ = writeln!(md, "- {line}");
        }
        let _ = writeln!(md);
        if let Some(c) = &self.capacity {
            let _ = writeln!(md, "## Fake Step Functions endpoint capacity\n");
            let _ = writeln!(
                md,
                "{} StartExecution requests in {:.2} s with {} in flight: **{:.0} requests/s** with the client \
                 sharing the 2 cores; the endpoint's thread spent {:.1} µs of CPU per request, i.e. about \
                 {:.0} requests/s per core. Errors: {}.\n",
                c.requests,
                c.seconds,
                c.concurrency,
                c.per_second(),
                c.server_cpu_us,
                c.per_core_second(),
                c.errors
            );
        }
        if !self.drains.is_empty() {
            self.drain_tables(&mut md);
        }
        if !self.sensitivity.is_empty() {
            let _ = writeln!(md, "## Sensitivity to BatchSize\n");
            let _ = writeln!(
                md,
                "Same runs with a fixed BatchSize (the template's default) instead of half a second of an \
                 instance's share. At the end of a drain the last batches are held by a few instances, each \
                 paced at r / K while the others idle.\n"
            );
            drain_rows(&mut md, &self.sensitivity);
        }
        if !self.pacing.is_empty() {
            let _ = writeln!(md, "## Pacing accuracy\n");
            let _ = writeln!(
                md,
                "One instance, the real handler (BatchSize 10) with a StartExecution that returns at once. \
                 `STARTS_BURST` = 1 s of the target. Achieved rate over a steady window that starts 1 s after \
                 the first call (once the burst is spent). Bound for any 1 s window: burst + rate × 1 s.\n"
            );
            let _ = writeln!(
                md,
                "| target (/s) | burst | window (s) | achieved (/s) | pacing error | max in any 1 s | bound | target ≤ 1 % |"
            );
            let _ = writeln!(md, "|---:|---:|---:|---:|---:|---:|---:|---|");
            for p in &self.pacing {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {:.2} | {:.3} % | {} | {} | {} |",
                    p.target_per_second,
                    p.burst,
                    p.window_seconds,
                    p.achieved_per_second,
                    p.error() * 100.0,
                    p.max_in_one_second,
                    p.one_second_bound(),
                    pass(
                        p.error() <= targets::PACING_ERROR && p.max_in_one_second as f64 <= p.one_second_bound() + 1.0
                    )
                );
            }
            let _ = writeln!(md);
        }
        if let Some(c) = &self.cost {
            let _ = writeln!(md, "## Handler cost per message (network stubbed)\n");
            let _ = writeln!(
                md,
                "{} messages in batches of 10 on one thread (after a warm-up of as many), StartExecution \
                 returning at once, no pacing waits; CPU from getrusage(RUSAGE_THREAD), median of {} rounds.\n",
                c.messages,
                crate::cost::ROUNDS
            );
            let _ = writeln!(md, "| measure | per message | target ≤ {} µs |", targets::CPU_US);
            let _ = writeln!(md, "|---|---:|---|");
            let _ = writeln!(
                md,
                "| CPU, `Starter::process` only | {:.2} µs | {} |",
                c.process_us,
                pass(c.process_us <= targets::CPU_US)
            );
            let _ = writeln!(
                md,
                "| CPU, decode event JSON + process + encode response | {:.2} µs | {} |",
                c.end_to_end_us,
                pass(c.end_to_end_us <= targets::CPU_US)
            );
            let _ = writeln!(md, "| wall, same | {:.2} µs | |", c.end_to_end_wall_us);
            if let Some(k) = &self.sdk_cost {
                let _ = writeln!(
                    md,
                    "| CPU with the real aws-sdk-sfn client (SigV4, HTTP/1.1 over loopback to FakeSfn), handler thread | {:.1} µs | (not the handler's target: includes the SDK) |",
                    k.thread_us
                );
                let _ = writeln!(
                    md,
                    "| same, process CPU less the endpoint's thread | {:.1} µs | |",
                    k.process_us
                );
            }
            match &self.instructions {
                Some(Ok(i)) => {
                    let _ = writeln!(
                        md,
                        "| instructions (callgrind, (Ir({}) − Ir({})) / {}) | {:.0} | |",
                        i.runs.1,
                        i.runs.0,
                        i.runs.1 - i.runs.0,
                        i.per_message
                    );
                }
                Some(Err(e)) => {
                    let _ = writeln!(md, "| instructions (callgrind) | not measured: {e} | |");
                }
                None => {}
            }
            let _ = writeln!(md);
        }
        if !self.shared.is_empty() || !self.probes.is_empty() {
            shared_tables(&mut md, &self.shared, &self.probes);
        }
        if !self.scale.is_empty() {
            crate::scale::markdown(&mut md, &self.scale);
        }
        if !self.batches.is_empty() {
            crate::batch::markdown(&mut md, &self.batches, self.settings.as_ref());
        }
        if !self.running.is_empty() {
            crate::running::markdown(&mut md, &self.running);
        }
        if let Some(b) = &self.bootstrap {
            let _ = writeln!(md, "## Bootstrap\n");
            let init_median = stats::median(&b.init_ms);
            let init_max = b.init_ms.iter().copied().fold(f64::NAN, f64::max);
            let _ = writeln!(md, "| measure | value | target | |");
            let _ = writeln!(md, "|---|---:|---|---|");
            let _ = writeln!(
                md,
                "| size of `{}` ({}) | {:.2} MB ({} bytes) | ≤ {} MB | {} |",
                b.path.display(),
                crate::bootstrap::elf_machine(&b.path).unwrap_or("?"),
                mb(b.size_bytes as f64),
                b.size_bytes,
                targets::BOOTSTRAP_MB,
                pass(mb(b.size_bytes as f64) <= targets::BOOTSTRAP_MB)
            );
            if let Some((path, arch, bytes)) = &self.lambda_bootstrap {
                let _ = writeln!(
                    md,
                    "| size of `{path}` ({arch}, `cargo lambda build --release`) | {:.2} MB ({bytes} bytes) | ≤ {} MB | {} |",
                    mb(*bytes as f64),
                    targets::BOOTSTRAP_MB,
                    pass(mb(*bytes as f64) <= targets::BOOTSTRAP_MB)
                );
            }
            let _ = writeln!(
                md,
                "| init to ready (spawn → first `GET /next`), median of {} | {} ms (first spawn {:.1}, max {:.1}) | ≤ {} ms | {} |",
                b.init_ms.len(),
                opt(init_median, 1),
                b.init_ms.first().copied().unwrap_or(f64::NAN),
                init_max,
                targets::INIT_MS,
                pass(init_median.is_some_and(|m| m <= targets::INIT_MS))
            );
            let rss_mb = b.peak_rss_kib as f64 * 1024.0 / 1e6;
            let _ = writeln!(
                md,
                "| peak RSS (/proc/<pid>/status VmHWM) after {} invocations of 10 messages ({} executions started) | {:.1} MB ({} KiB; VmRSS {} KiB) | ≤ {} MB | {} |",
                b.invocations,
                b.started,
                rss_mb,
                b.peak_rss_kib,
                b.rss_kib,
                targets::RSS_MB,
                pass(rss_mb <= targets::RSS_MB)
            );
            let _ = writeln!(md);
        }
        md
    }

    fn drain_tables(&self, md: &mut String) {
        let _ = writeln!(md, "## Drain at the quota's limit\n");
        if let Some(s) = &self.settings {
            let _ = writeln!(
                md,
                "Backlog of M messages enqueued at once; K simulated instances (`sim::drive`, one `Starter` and \
                 pacer each, BatchSize {}, function timeout {} s); queue: maxReceiveCount {}, visibility timeout {} s, \
                 retried messages delayed by the handler's ChangeMessageVisibility backoff (RETRY_BASE_SECONDS {}, \
                 RETRY_MAX_SECONDS {}). Endpoint: FakeSfn with an exact token bucket; request path {} ms + U[0, {}] ms, \
                 response {} ms + U[0, {}] ms. T = first invocation → queue empty; T* = max(0, (M − B)/r). \
                 Enqueue→start is measured from the moment the whole backlog was enqueued. CPU = getrusage of the \
                 process over the run / M (\"client\" leaves out the fake endpoint's thread).\n",
                s.batch_size.map_or_else(|| "auto: 0.5 × r / K, between 10 and 100".to_string(), |b| b.to_string()),
                s.function_timeout.as_secs(),
                s.max_receive_count,
                s.visibility_timeout.as_secs(),
                s.retry_base_seconds,
                s.retry_max_seconds,
                s.request_latency.as_millis(),
                s.request_jitter.as_millis(),
                s.response_latency.as_millis(),
                s.response_jitter.as_millis(),
            );
        }
        drain_rows(md, &self.drains);
        let _ = writeln!(md);
        for chart in &self.charts {
            let _ = writeln!(md, "![starts per second]({chart})\n");
        }
        let _ = writeln!(md, "### Targets (ours)\n");
        let _ = writeln!(
            md,
            "| K | quota | batch | strategy | T*/T | target | throttled | ≤ 0.5 % | redriven | = 0 |"
        );
        let _ = writeln!(md, "|---:|---|---:|---|---:|---|---:|---|---:|---|");
        for d in self.drains.iter().filter(|d| d.strategy.is_ours()) {
            let s = &d.scenario;
            let target = if s.instances == 1 {
                targets::EFFICIENCY_K1
            } else {
                targets::EFFICIENCY_KN
            };
            let e = d.efficiency();
            let _ = writeln!(
                md,
                "| {} | {} / {} | {} | {} | {} | ≥ {} {} | {:.2} % | {} | {} | {} |",
                s.instances,
                s.burst,
                s.refill_per_second,
                d.batch_size,
                d.strategy,
                opt(e, 3),
                target,
                pass(e.is_some_and(|e| e >= target)),
                d.throttle_ratio() * 100.0,
                pass(d.throttle_ratio() <= targets::THROTTLE_RATIO),
                d.redriven,
                pass(d.redriven == 0)
            );
        }
        let _ = writeln!(md);
    }

    /// The results as JSON.
    pub fn json(&self) -> Value {
        let drains: Vec<Value> = self
            .drains
            .iter()
            .map(|d| {
                json!({
                    "strategy": d.strategy.to_string(),
                    "batch_size": d.batch_size,
                    "starts_burst": d.starts_burst,
                    "instances": d.scenario.instances,
                    "burst": d.scenario.burst,
                    "refill_per_second": d.scenario.refill_per_second,
                    "messages": d.scenario.messages,
                    "ideal_seconds": d.scenario.ideal_seconds(),
                    "drain_seconds": d.drain_seconds,
                    "drained": d.drained,
                    "last_start_seconds": d.last_start_seconds,
                    "efficiency": d.efficiency(),
                    "started": d.started,
                    "calls": d.calls,
                    "throttled": d.throttled,
                    "throttle_ratio": d.throttle_ratio(),
                    "redriven": d.redriven,
                    "reported": d.reported,
                    "dead_lettered": d.dead_lettered,
                    "enqueue_to_start_p50_seconds": d.enqueue_to_start(50.0),
                    "enqueue_to_start_p99_seconds": d.enqueue_to_start(99.0),
                    "cpu_per_message_us": d.cpu_per_message_us(),
                    "client_cpu_per_message_us": d.client_cpu_per_message_us(),
                    "invocations": d.invocations,
                    "failed_invocations": d.failed_invocations,
                    "starts_per_second": d.starts_per_second,
                    "throttles_per_second": d.throttles_per_second,
                })
            })
            .collect();
        let pacing: Vec<Value> = self
            .pacing
            .iter()
            .map(|p| {
                json!({
                    "target_per_second": p.target_per_second,
                    "burst": p.burst,
                    "window_seconds": p.window_seconds,
                    "achieved_per_second": p.achieved_per_second,
                    "error": p.error(),
                    "max_in_one_second": p.max_in_one_second,
                    "one_second_bound": p.one_second_bound(),
                    "calls": p.calls,
                })
            })
            .collect();
        let sensitivity: Vec<Value> = self
            .sensitivity
            .iter()
            .map(|d| {
                json!({
                    "strategy": d.strategy.to_string(), "batch_size": d.batch_size, "instances": d.scenario.instances,
                    "burst": d.scenario.burst, "refill_per_second": d.scenario.refill_per_second,
                    "messages": d.scenario.messages, "drain_seconds": d.drain_seconds, "efficiency": d.efficiency(),
                    "throttled": d.throttled, "calls": d.calls, "redriven": d.redriven,
                    "starts_per_second": d.starts_per_second,
                })
            })
            .collect();
        let shared_runs: Vec<Value> = self.shared.iter().map(shared_json).collect();
        let probes: Vec<Value> = self
            .probes
            .iter()
            .map(|p| {
                json!({
                    "mode": p.mode.to_string(), "instances": p.instances, "batch": p.batch, "rate": p.rate,
                    "starts": p.starts, "table_calls": p.table_calls,
                    "table_calls_per_start": p.table_calls_per_start(),
                    "latency_p50_ms": p.latency(50.0), "latency_p99_ms": p.latency(99.0),
                })
            })
            .collect();
        json!({
            "command": self.command,
            "shared": shared_runs,
            "shared_probes": probes,
            "batch": crate::batch::json(&self.batches),
            "scale": crate::scale::json(&self.scale),
            "running": crate::running::json(&self.running),
            "sensitivity": sensitivity,
            "machine": self.machine,
            "capacity": self.capacity.as_ref().map(|c| json!({
                "requests": c.requests, "seconds": c.seconds, "concurrency": c.concurrency,
                "per_second": c.per_second(), "server_cpu_us": c.server_cpu_us, "errors": c.errors,
            })),
            "drains": drains,
            "pacing": pacing,
            "cost": self.cost.as_ref().map(|c| json!({
                "messages": c.messages, "process_us": c.process_us, "end_to_end_us": c.end_to_end_us,
                "end_to_end_wall_us": c.end_to_end_wall_us,
                "instructions_per_message": match &self.instructions { Some(Ok(i)) => Some(i.per_message), _ => None },
            })),
            "sdk_cost": self.sdk_cost.as_ref().map(|k| json!({
                "messages": k.messages, "thread_us": k.thread_us, "process_us": k.process_us,
            })),
            "bootstrap": self.bootstrap.as_ref().map(|b| json!({
                "path": b.path.display().to_string(), "size_bytes": b.size_bytes, "init_ms": b.init_ms,
                "peak_rss_kib": b.peak_rss_kib, "started": b.started, "rss_kib": b.rss_kib, "invocations": b.invocations,

            })),
            "lambda_bootstrap": self.lambda_bootstrap.as_ref().map(|(p, a, b)| json!({"path": p, "arch": a, "size_bytes": b})),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::drain::Scenario;

    fn drain(strategy: Strategy, seconds: f64, throttled: u64, redriven: u64) -> DrainResult {
        DrainResult {
            strategy,
            scenario: Scenario {
                instances: 1,
                burst: 1300,
                refill_per_second: 300.0,
                messages: 4300,
            },
            batch_size: 100,
            starts_burst: strategy.is_ours().then_some(1300.0),
            drain_seconds: seconds,
            drained: true,
            last_start_seconds: seconds,
            started: 4300 - redriven,
            calls: 4300 + throttled,
            throttled,
            reported: redriven * 5,
            redriven,
            dead_lettered: 0,
            enqueue_to_start: vec![1.0, 2.0, 3.0, 4.0],
            cpu_process: Duration::from_millis(430),
            cpu_server: Duration::from_millis(43),
            invocations: 43,
            failed_invocations: 0,
            starts_per_second: vec![1300, 300],
            throttles_per_second: vec![0, 0],
        }
    }

    #[test]
    fn drain_rows_show_the_accounting() {
        let r = drain(Strategy::Ours, 10.2, 0, 0);
        assert_eq!(r.efficiency().map(|e| (e * 1000.0).round()), Some(980.0));
        assert_eq!(r.cpu_per_message_us(), 100.0);
        assert_eq!(r.client_cpu_per_message_us(), 90.0);
        assert_eq!(r.enqueue_to_start(50.0), Some(2.0));
        let naive = drain(Strategy::Naive, 20.0, 43, 7);
        assert_eq!(naive.throttle_ratio(), 43.0 / 4343.0);
        let results = Results {
            drains: vec![naive, r],
            ..Results::default()
        };
        let md = results.markdown();
        assert!(md.contains("| 1 | 1300 / 300 | 100 | **ours** | 4300 | 10.0 | 10.20 | 0.980 | 4300 | 0.00 % (0 / 4300) | 0 | 0 | 2.00 / 4.00 | 100.0 | 90.0 |"), "{md}");
        assert!(
            md.contains(
                "| 1 | 1300 / 300 | 100 | naive | 4300 | 10.0 | 20.00 | 0.500 | 4293 | 0.99 % (43 / 4343) | 35 | 7 |"
            ),
            "{md}"
        );
        // Only our strategies are judged against the targets; 0.980 meets the K = 1 target.
        assert!(
            md.contains("| 1 | 1300 / 300 | 100 | ours | 0.980 | ≥ 0.98 met | 0.00 % | met | 0 | met |"),
            "{md}"
        );
        assert!(!md.contains("| naive | 0.500 | ≥"), "{md}");
    }

    #[test]
    fn an_undrained_run_has_no_efficiency() {
        let mut r = drain(Strategy::SdkAdaptive, 60.0, 10, 0);
        r.drained = false;
        assert_eq!(r.efficiency(), None);
        let md = Results {
            drains: vec![r],
            ..Results::default()
        }
        .markdown();
        assert!(md.contains("| > 60.00 | — |"), "{md}");
    }
}
