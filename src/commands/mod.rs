//! One module per subcommand; each prints a human report or JSON.

pub mod approve;
pub mod build;
pub mod copy;
pub mod export;
pub mod gc;
pub mod history;
pub mod images;
pub mod inspect;
pub mod keygen;
pub mod lock;
pub mod pin;
pub mod promote;
pub mod pull;
pub mod push;
pub mod release;
pub mod revoke;
pub mod rollback;
pub mod sign;
pub mod store;
pub mod verify;

use anyhow::Context as _;
use kiln_store::Store;
use tokio::runtime::Runtime;

use crate::cli::{Cli, Command, StoreCommand};

/// What every command needs: a runtime to drive stores and registries, and output settings.
pub struct Session {
    pub runtime: Runtime,
    pub json: bool,
    pub quiet: bool,
}

impl Session {
    pub fn new(cli: &Cli) -> anyhow::Result<Session> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        Ok(Session { runtime, json: cli.json, quiet: cli.quiet })
    }

    /// Prints `value` as one line of JSON on stdout.
    pub fn print_json<T: serde::Serialize>(&self, value: &T) -> anyhow::Result<()> {
        println!("{}", serde_json::to_string(value)?);
        Ok(())
    }

    /// Prints a human line on stdout unless quiet.
    pub fn say(&self, line: impl AsRef<str>) {
        if !self.quiet {
            println!("{}", line.as_ref());
        }
    }
}

/// A [`Session`] with the one store a command works in.
pub struct Ctx {
    pub store: Store,
    session: Session,
}

impl Ctx {
    /// Opens the store named on the command line, in the environment, or the default folder.
    pub fn new(cli: &Cli) -> anyhow::Result<Ctx> {
        let location = match &cli.store {
            Some(s) => s.clone(),
            None => default_store()?,
        };
        let options = store_options(cli)?;
        // Checking a store that is not there must say so, not create an empty one.
        let store = match cli.command {
            Command::Store(StoreCommand::Check(_)) => Store::open_existing(&location, &options),
            _ => Store::open_with_options(&location, &options),
        }
        .with_context(|| format!("opening store {location}"))?;
        Ok(Ctx { store, session: Session::new(cli)? })
    }
}

impl std::ops::Deref for Ctx {
    type Target = Session;

    fn deref(&self) -> &Session {
        &self.session
    }
}

/// The `--store-option KEY=VALUE` pairs.
pub fn store_options(cli: &Cli) -> anyhow::Result<Vec<(String, String)>> {
    cli.store_options
        .iter()
        .map(|o| kiln_store::parse_option(o))
        .collect::<Result<Vec<_>, _>>()
        .context("reading --store-option")
}

/// `$XDG_DATA_HOME/kiln/store`, else `~/.local/share/kiln/store`.
fn default_store() -> anyhow::Result<String> {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return Ok(std::path::Path::new(&x).join("kiln/store").to_string_lossy().into_owned());
    }
    let home = std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .context("no store given and neither XDG_DATA_HOME nor HOME is set; pass --store DIR")?;
    Ok(std::path::Path::new(&home).join(".local/share/kiln/store").to_string_lossy().into_owned())
}
