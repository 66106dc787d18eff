//! Progress display on stderr: a spinner per step, hidden when stderr is not a terminal
//! or output is quiet. No colour is ever used, so NO_COLOR holds trivially.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use kiln_builder::Observer;

/// A spinner that shows what the build is doing.
pub struct Progress {
    bar: ProgressBar,
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
        Progress { bar }
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
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}
