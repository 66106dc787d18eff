//! Progress display on stderr: a spinner per step, hidden when stderr is not a terminal
//! or output is quiet. No colour is ever used, so NO_COLOR holds trivially.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use kiln_builder::Observer;

/// A spinner that shows what the build is doing.
pub struct Progress {
    bar: ProgressBar,
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
        Progress { bar, notices: false }
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

    fn layer_started(&self, name: &str, index: usize, total: usize, bytes: Option<u64>) {
        let what = match bytes {
            Some(bytes) => format!("{:.1} MiB", bytes as f64 / 1048576.0),
            None => "cached".to_string(),
        };
        self.step(format!("layer {}/{total} {name} ({what})", index + 1));
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
