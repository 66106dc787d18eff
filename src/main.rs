//! The `kiln` command: parses arguments, wires the builder to a store, prints results.

mod cli;
mod commands;
mod progress;
mod sink;

use std::process::ExitCode;

use clap::Parser;
use kiln_builder::BuildError;
use kiln_store::layout::LayoutError;
use kiln_store::StoreError;

use cli::{Cli, Command, StoreCommand};

/// An input differs from the lock, or there is none (with --locked).
const EXIT_LOCK: u8 = 3;
/// A stored blob does not match its digest.
const EXIT_INTEGRITY: u8 = 4;

fn main() -> ExitCode {
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
    let ctx = commands::Ctx::new(cli)?;
    match &cli.command {
        Command::Build(args) => commands::build::run(&ctx, args),
        Command::Lock(args) => commands::lock::run(&ctx, args),
        Command::Images => commands::images::run(&ctx),
        Command::Inspect(args) => commands::inspect::run(&ctx, args),
        Command::Export(args) => commands::export::run(&ctx, args),
        Command::Store(StoreCommand::Check) => commands::store::check(&ctx),
        Command::Gc(args) => commands::gc::run(&ctx, args),
        Command::Copy(args) => commands::copy::run(&ctx, cli, args),
        Command::Keygen(args) => commands::keygen::run(&ctx, args),
        Command::Sign(args) => commands::sign::run(&ctx, args),
        Command::Verify(args) => commands::verify::run(&ctx, args),
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
        if let Some(StoreError::DigestMismatch { .. }) = cause.downcast_ref() {
            return EXIT_INTEGRITY;
        }
        // An export wraps store errors transparently, so look inside it too.
        if let Some(LayoutError::Store(StoreError::DigestMismatch { .. })) = cause.downcast_ref() {
            return EXIT_INTEGRITY;
        }
        if cause.downcast_ref::<commands::verify::VerifyFailed>().is_some() {
            return EXIT_INTEGRITY;
        }
        if cause.downcast_ref::<commands::store::StoreProblems>().is_some() {
            return EXIT_INTEGRITY;
        }
    }
    1
}
