//! `kiln copy`: an image and its referrers from one store to another.

use anyhow::Context as _;
use kiln_store::{Location, Reference, Store};

use super::Ctx;
use crate::cli::{Cli, CopyArgs};

/// Opens `location`, giving it the `--store-option`s only if it is a bucket, so that one
/// command can copy between a bucket and a local folder.
pub fn open(location: &str, options: &[(String, String)]) -> anyhow::Result<Store> {
    let bucket = matches!(Location::parse(location), Ok(Location::Bucket(_)));
    let options = if bucket { options } else { &[] };
    Store::open_with_options(location, options).with_context(|| format!("opening store {location}"))
}

pub fn run(ctx: &Ctx, cli: &Cli, args: &CopyArgs) -> anyhow::Result<()> {
    let reference: Reference = args
        .reference
        .parse()
        .with_context(|| format!("reading reference {:?}", args.reference))?;
    let options = super::store_options(cli)?;
    let from = open(&args.from, &options)?;
    let to = open(&args.to, &options)?;
    let report =
        ctx.runtime.block_on(kiln_store::copy::copy_image(&from, &to, &reference)).with_context(
            || format!("copying {reference} from {} to {}", from.describe(), to.describe()),
        )?;
    if ctx.json {
        let mut value = serde_json::to_value(&report)?;
        if let Some(map) = value.as_object_mut() {
            map.insert("from".into(), from.describe().into());
            map.insert("to".into(), to.describe().into());
        }
        ctx.print_json(&value)?;
    } else {
        ctx.say(format!(
            "copied {reference} ({}) from {} to {}: {} blobs sent ({} bytes), {} already there, \
             {} referrers",
            report.digest,
            from.describe(),
            to.describe(),
            report.copied,
            report.bytes_copied,
            report.present,
            report.referrers,
        ));
    }
    Ok(())
}
