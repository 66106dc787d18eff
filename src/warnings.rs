//! Warnings from kiln's libraries: they report through the `log` facade and print nothing
//! themselves; this logger prints each on stderr as `warning: …`. Warnings are printed even
//! with `--quiet` (something was left behind or retried), and are never coloured. Records
//! from other crates (HTTP, OpenPGP, …) are not kiln's to print, so only kiln's own pass.

use log::{Level, LevelFilter, Log, Metadata, Record};

struct Stderr;

impl Log for Stderr {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= Level::Warn && is_kiln(metadata.target())
    }

    fn log(&self, record: &Record) {
        if self.enabled(record.metadata()) {
            let label = match record.level() {
                Level::Error => "error",
                _ => "warning",
            };
            eprintln!("{label}: {}", record.args());
        }
    }

    fn flush(&self) {}
}

/// Whether `target` (by default the module path of the call) is in a kiln crate.
fn is_kiln(target: &str) -> bool {
    let krate = target.split("::").next().unwrap_or(target);
    krate == "kiln" || krate.starts_with("kiln_")
}

static STDERR: Stderr = Stderr;

/// Prints the libraries' warnings on stderr from now on.
pub fn print_on_stderr() {
    // Only `main` installs a logger, once; were one there already, it would keep printing.
    if log::set_logger(&STDERR).is_ok() {
        log::set_max_level(LevelFilter::Warn);
    }
}

#[cfg(test)]
mod tests {
    use super::is_kiln;

    #[test]
    fn only_kiln_crates_are_printed() {
        assert!(is_kiln("kiln_store::scratch"));
        assert!(is_kiln("kiln_attest"));
        assert!(is_kiln("kiln"));
        assert!(!is_kiln("reqwest::connect"));
        assert!(!is_kiln("kilnx::a"));
        assert!(!is_kiln("pgp::packet"));
    }
}
