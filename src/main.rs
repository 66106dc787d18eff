//! The `kiln` command: parses arguments, wires the builder to a store, prints results.

mod cli;
mod commands;
mod progress;
mod report;
mod warnings;

use std::process::ExitCode;

use clap::Parser;
use kiln_attest::AttestError;
use kiln_builder::inputs::InputError;
use kiln_builder::BuildError;
use kiln_registry::RegistryError;
use kiln_release::ReleaseError;
use kiln_store::layout::LayoutError;
use kiln_store::StoreError;

use cli::{Cli, Command, StoreCommand};

/// Scanning an input tree allocates on worker threads and frees on others, which glibc's
/// allocator handles slowly enough to show in an unchanged rebuild (docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// An input differs from the lock, or there is none (with --locked).
const EXIT_LOCK: u8 = 3;
/// A stored blob does not match its digest.
const EXIT_INTEGRITY: u8 = 4;

fn main() -> ExitCode {
    warnings::print_on_stderr();
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(exit_code(&err))
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    // Every command but `copy` works in the one store --store names; `copy` opens the two it
    // names with --from and --to.
    let ctx = || commands::Ctx::new(cli);
    match &cli.command {
        Command::Build(args) => commands::build::run(&ctx()?, args),
        Command::Lock(args) => commands::lock::run(&ctx()?, args),
        Command::Images => commands::images::run(&ctx()?),
        Command::Inspect(args) => commands::inspect::run(&ctx()?, args),
        Command::Export(args) => commands::export::run(&ctx()?, args),
        Command::Store(StoreCommand::Check(args)) => commands::store::check(&ctx()?, args),
        Command::Gc(args) => commands::gc::run(&ctx()?, args),
        Command::Copy(args) => commands::copy::run(&commands::Session::new(cli)?, cli, args),
        Command::Push(args) => commands::push::run(&ctx()?, args),
        Command::Pull(args) => commands::pull::run(&ctx()?, args),
        Command::Keygen(args) => commands::keygen::run(&ctx()?, args),
        Command::Sign(args) => commands::sign::run(&ctx()?, args),
        Command::Verify(args) => commands::verify::run(&ctx()?, args),
        Command::Release(args) => commands::release::run(&ctx()?, args),
        Command::Pin(args) => commands::pin::run(&ctx()?, args),
        Command::Approve(args) => commands::approve::run(&ctx()?, args),
        Command::Promote(args) => commands::promote::run(&ctx()?, cli, args),
        Command::Rollback(args) => commands::rollback::run(&ctx()?, args),
        Command::Revoke(args) => commands::revoke::run(&ctx()?, args),
        Command::History(args) => commands::history::run(&ctx()?, args),
    }
}

/// Scripts branch on these, so the cause is looked for anywhere in the error chain.
fn exit_code(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if let Some(BuildError::LockMismatch { .. } | BuildError::NoLock { .. }) =
            cause.downcast_ref()
        {
            return EXIT_LOCK;
        }
        if is_integrity(cause) {
            return EXIT_INTEGRITY;
        }
    }
    1
}

/// Whether `cause` is stored bytes that are not what their digest or descriptor promises, or
/// an audit that failed. Libraries wrap store errors transparently, so each is asked. A
/// missing blob is too when something stored names it; a ref or digest the user named that is
/// not there is not (exit 1).
fn is_integrity(cause: &(dyn std::error::Error + 'static)) -> bool {
    cause.downcast_ref::<StoreError>().is_some_and(StoreError::is_damage)
        || cause.downcast_ref::<LayoutError>().is_some_and(LayoutError::is_integrity)
        || cause.downcast_ref::<AttestError>().is_some_and(AttestError::is_integrity)
        || cause.downcast_ref::<RegistryError>().is_some_and(RegistryError::is_integrity)
        || cause.downcast_ref::<ReleaseError>().is_some_and(ReleaseError::is_integrity)
        || cause.downcast_ref::<commands::verify::VerifyFailed>().is_some()
        || cause.downcast_ref::<commands::store::StoreProblems>().is_some()
        || match cause.downcast_ref::<BuildError>() {
            Some(BuildError::Input(InputError::Package(e))) => e.is_integrity(),
            Some(BuildError::Base(e)) => e.is_integrity(),
            Some(BuildError::Platforms { source, .. }) => is_integrity(&**source),
            _ => false,
        }
}

#[cfg(test)]
mod tests {
    use super::{exit_code, EXIT_INTEGRITY};
    use kiln_builder::BuildError;
    use kiln_oci::Digest;
    use kiln_store::StoreError;

    #[test]
    fn a_store_failure_through_the_build_sink_keeps_its_cause_and_exit_code() {
        let corrupt = StoreError::DigestMismatch {
            key: "blobs/sha256/ab".to_string(),
            expected: Digest::of(b"a"),
            found: Digest::of(b"b"),
        };
        let err = anyhow::Error::new(BuildError::Sink(Box::new(corrupt))).context("building r");
        assert_eq!(exit_code(&err), EXIT_INTEGRITY);
        let text = format!("{err:#}");
        assert!(
            text.starts_with("building r: storing blobs: blob blobs/sha256/ab is corrupt"),
            "{text}"
        );
    }
}
