//! The store says what it could not clean up through the `log` facade, whose logger the
//! program installs (the `kiln` binary prints each record on stderr), never on stderr itself.
// A failed unwrap in a test is the failure report we want.
#![allow(clippy::unwrap_used)]

use std::sync::Mutex;

use kiln_store::scratch::Scratch;
use log::{Level, LevelFilter, Log, Metadata, Record};

/// Keeps every record it is given: level, target and text.
struct Kept(Mutex<Vec<(Level, String, String)>>);

impl Log for Kept {
    fn enabled(&self, _: &Metadata) -> bool {
        true
    }

    fn log(&self, record: &Record) {
        let mut kept = self.0.lock().unwrap();
        kept.push((record.level(), record.target().to_string(), record.args().to_string()));
    }

    fn flush(&self) {}
}

static KEPT: Kept = Kept(Mutex::new(Vec::new()));

#[test]
fn a_scratch_folder_left_behind_is_a_warning_through_the_log_facade() {
    log::set_logger(&KEPT).unwrap();
    log::set_max_level(LevelFilter::Trace);
    let scratch = Scratch::create().unwrap();
    let path = scratch.path().to_path_buf();
    // A file where the folder was cannot be removed as a folder, not even by root.
    std::fs::remove_dir_all(&path).unwrap();
    std::fs::write(&path, b"").unwrap();
    drop(scratch);
    std::fs::remove_file(&path).unwrap();

    let kept = KEPT.0.lock().unwrap();
    let said = format!("cannot remove scratch folder {}: ", path.display());
    let warned: Vec<_> = kept.iter().filter(|(_, _, text)| text.starts_with(&said)).collect();
    assert_eq!(warned.len(), 1, "{kept:#?}");
    let (level, target, _) = warned[0];
    assert_eq!(*level, Level::Warn);
    assert!(target.starts_with("kiln_store"), "{target}");
}
