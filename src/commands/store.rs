//! `kiln store check`: the store's fsck, with a progress bar while blobs are re-hashed.

use std::io::IsTerminal;

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use kiln_store::CheckProgress;

use super::Ctx;
use crate::cli::CheckArgs;

/// The check found problems; `main` maps this to the integrity exit code.
#[derive(Debug, thiserror::Error)]
#[error("the store {store} has {count} problem(s); see the report above")]
pub struct StoreProblems {
    pub store: String,
    pub count: usize,
}

/// A byte-counting bar on stderr, hidden when stderr is no terminal or output is quiet.
struct CheckBar(ProgressBar);

impl CheckProgress for CheckBar {
    fn blobs_found(&self, count: u64, bytes: u64) {
        self.0.set_length(bytes);
        self.0.set_message(format!("re-hashing {count} blobs"));
    }

    fn blob_checked(&self, bytes: u64) {
        self.0.inc(bytes);
    }
}

pub fn check(ctx: &Ctx, args: &CheckArgs) -> anyhow::Result<()> {
    let target = if !ctx.quiet && !ctx.json && std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(0), target);
    if let Ok(style) =
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
    {
        bar.set_style(style);
    }
    let progress = CheckBar(bar);
    let store = &ctx.store;
    let report = if args.repair {
        ctx.runtime.block_on(store.repair(&progress))
    } else {
        ctx.runtime.block_on(store.check(&progress))
    };
    let report = report.with_context(|| format!("checking {}", store.describe()))?;
    progress.0.finish_and_clear();

    if ctx.json {
        let clean = report.is_clean();
        ctx.print_json(&crate::report::Check { store: store.describe(), clean, report: &report })?;
    } else {
        for problem in &report.problems {
            eprintln!("problem: {problem}");
        }
        if let Some(repair) = &report.repair {
            for q in &repair.quarantined {
                eprintln!("repaired: {q}");
            }
            for key in repair.refs_dropped.iter().chain(&repair.referrers_dropped) {
                eprintln!("repaired: deleted {key}");
            }
            for key in &repair.changed_since {
                eprintln!("left: {key} changed since it was checked; check again");
            }
            for problem in &repair.left {
                eprintln!("left: {problem}");
            }
        }
        ctx.say(format!(
            "checked {} blobs ({} bytes), {} refs and {} referrers in {}: {}",
            report.blobs,
            report.bytes,
            report.refs,
            report.referrers,
            store.describe(),
            match (&report.repair, report.is_clean()) {
                (_, true) => "clean".to_string(),
                (None, false) => format!("{} problem(s)", report.problems.len()),
                (Some(r), false) => format!(
                    "{} problem(s), {} left after repair",
                    report.problems.len(),
                    r.left.len()
                ),
            }
        ));
    }
    if report.is_settled() {
        Ok(())
    } else {
        let count = report.repair.as_ref().map_or(report.problems.len(), |r| r.left.len());
        Err(StoreProblems { store: store.describe().to_string(), count }.into())
    }
}
