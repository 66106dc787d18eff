//! `kiln gc`: delete what no root needs, once older than the grace period.

use anyhow::Context as _;
use kiln_store::GcOptions;

use super::Ctx;
use crate::cli::GcArgs;

pub fn run(ctx: &Ctx, args: &GcArgs) -> anyhow::Result<()> {
    // Local leftovers of killed runs go too: scratch folders of processes that are gone.
    if !args.dry_run {
        kiln_store::scratch::remove_dead_folders();
    }
    let options = GcOptions { grace: args.grace, dry_run: args.dry_run };
    let report = ctx
        .runtime
        .block_on(ctx.store.gc(options))
        .with_context(|| format!("collecting garbage in {}", ctx.store.describe()))?;
    if ctx.json {
        ctx.print_json(&crate::report::Gc {
            store: ctx.store.describe(),
            grace_seconds: args.grace.as_secs(),
            report: &report,
        })?;
    } else {
        let verb = if report.dry_run { "would delete" } else { "deleted" };
        ctx.say(format!(
            "{verb} {} blobs ({} bytes), {} quarantined blobs ({} bytes), {} staging uploads \
             ({} bytes), {} cache entries and {} dead lease records; kept {} reachable or leased \
             blobs ({} live leases) and {} younger than {}",
            report.blobs_deleted,
            report.bytes_deleted,
            report.quarantined_deleted,
            report.quarantined_bytes_deleted,
            report.uploads_deleted,
            report.upload_bytes_deleted,
            report.cache_entries_deleted,
            report.lease_records_deleted,
            report.reachable,
            report.leases_live,
            report.blobs_kept_young,
            humantime::format_duration(args.grace),
        ));
    }
    Ok(())
}
