//! `kiln store check`: the store's fsck, with a progress bar while blobs are re-hashed.

use std::io::IsTerminal;

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use kiln_store::CheckProgress;

use super::Ctx;

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

pub fn check(ctx: &Ctx) -> anyhow::Result<()> {
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
    let report = ctx
        .runtime
        .block_on(ctx.store.check(&progress))
        .with_context(|| format!("checking {}", ctx.store.describe()))?;
    progress.0.finish_and_clear();

    if ctx.json {
        ctx.print_json(&serde_json::json!({
            "store": ctx.store.describe(),
            "clean": report.is_clean(),
            "blobs": report.blobs,
            "bytes": report.bytes,
            "refs": report.refs,
            "problems": report.problems,
        }))?;
    } else {
        for problem in &report.problems {
            eprintln!("problem: {problem}");
        }
        ctx.say(format!(
            "checked {} blobs ({} bytes) and {} refs in {}: {}",
            report.blobs,
            report.bytes,
            report.refs,
            ctx.store.describe(),
            if report.is_clean() {
                "clean".to_string()
            } else {
                format!("{} problem(s)", report.problems.len())
            }
        ));
    }
    if report.is_clean() {
        Ok(())
    } else {
        Err(StoreProblems { store: ctx.store.describe().to_string(), count: report.problems.len() }
            .into())
    }
}
