//! Appends N promote entries of one release to a channel, as `kiln promote` would append them
//! but without verifying and copying the release each time: `ci/bench-release` uses it to make
//! a long history quickly.
//!
//! `cargo run --release -p kiln-release --example fill_channel -- STORE CHANNEL/NAME RELEASE KEY POLICY N`

use std::path::Path;

use kiln_attest::PrivateKey;
use kiln_release::channel::{self, Action, ChannelRef};
use kiln_release::policy::Policy;
use kiln_store::Store;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [store, ch, release, key, policy, n] = args.as_slice() else {
        return Err("usage: fill_channel STORE CHANNEL/NAME RELEASE KEY POLICY N".into());
    };
    let store = Store::open(store)?;
    let ch: ChannelRef = ch.parse()?;
    let release = release.parse()?;
    let key = PrivateKey::read(Path::new(key))?;
    let actor = key.public().key_id()?.0;
    let policy = Policy::load(Path::new(policy))?;
    let n: u64 = n.parse()?;
    let trusted = policy.channel(&ch.channel)?.keys.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        policy.record(&store).await?;
        for i in 0..n {
            let reason = format!("bench {i}");
            channel::append(&store, &ch, &key, &trusted, |head| {
                Ok(channel::next_entry(
                    &ch,
                    head,
                    Action::Promote,
                    release,
                    "bench",
                    actor,
                    &reason,
                    policy.digest,
                ))
            })
            .await?;
        }
        Ok::<_, kiln_release::ReleaseError>(())
    })?;
    Ok(())
}
