//! Progress display on stderr: a spinner per step, hidden when stderr is not a terminal
//! or output is quiet. No colour is ever used, so NO_COLOR holds trivially.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use kiln_builder::Observer;
use kiln_oci::Platform;

/// A spinner that shows what the build is doing.
pub struct Progress {
    bar: ProgressBar,
    /// The layer each list of platforms is at, by platforms: lists are made at once.
    layers: Mutex<BTreeMap<String, String>>,
    /// Print notices (maintainer scripts skipped) on stderr.
    notices: bool,
}

impl Progress {
    /// A spinner on stderr, or a hidden one when `visible` is false or stderr is no terminal.
    pub fn new(visible: bool) -> Progress {
        let target = if visible && std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(None, target);
        if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} [{elapsed}]") {
            bar.set_style(style);
        }
        bar.enable_steady_tick(Duration::from_millis(120));
        Progress { bar, layers: Mutex::new(BTreeMap::new()), notices: false }
    }

    /// Also prints the build's notices on stderr (unless `-q`).
    pub fn with_notices(mut self, on: bool) -> Progress {
        self.notices = on;
        self
    }

    /// Shows `message`.
    pub fn step(&self, message: String) {
        self.bar.set_message(message);
    }

    /// Removes the spinner.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Observer for Progress {
    fn hashing(&self) {
        self.step("hashing inputs".into());
    }

    fn layer_started(
        &self,
        platforms: &[Platform],
        name: &str,
        index: usize,
        total: usize,
        bytes: Option<u64>,
    ) {
        let what = match bytes {
            Some(bytes) => format!("{:.1} MiB", bytes as f64 / 1048576.0),
            None => "cached".to_string(),
        };
        let list = platforms.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
        let mut layers = self.layers.lock().unwrap_or_else(PoisonError::into_inner);
        layers.insert(list, format!("layer {}/{total} {name} ({what})", index + 1));
        // One list says where it is; several say whose layer each is at.
        let message = match layers.len() {
            1 => layers.values().cloned().collect(),
            _ => layers
                .iter()
                .map(|(list, at)| format!("{list}: {at}"))
                .collect::<Vec<_>>()
                .join("; "),
        };
        self.step(message);
    }

    fn scripts_skipped(&self, package: &str, scripts: &[&str]) {
        if self.notices {
            let list = scripts.join(", ");
            self.bar.suspend(|| {
                eprintln!("notice: package {package}: maintainer scripts not run: {list}")
            });
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}
