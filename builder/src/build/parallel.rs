//! The lists of layers of a recipe's platforms (see [`PlatformLayers`]) made at once, each
//! on a thread of its own, as many at a time as the build has threads.
//!
//! Only the making is concurrent: the cache is looked up before, in the recipe's order, and
//! everything is stored after, in the same order, so the store sees what a build of one list
//! at a time would have given it. The first list to fail stops the others at their next
//! step, and its error, naming its platforms, is the build's.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

use kiln_oci::{Descriptor, Digest, Platform};

use crate::build::error::BuildError;
use crate::build::sink::{BlobSink, BlobStream, SinkError};
use crate::build::PlatformLayers;
use crate::image::{JsonBlob, LayerRecord};
use crate::layer::LayerBlob;

/// Why the making of one list of layers ended early.
pub(super) enum Halt {
    Failed(Box<BuildError>),
    /// Another list failed first: this one's work was of no use.
    Stopped,
}

impl<E: Into<BuildError>> From<E> for Halt {
    fn from(e: E) -> Self {
        Halt::Failed(Box::new(e.into()))
    }
}

/// Raised by the first list that fails; the others look at it between steps.
#[derive(Default)]
pub(super) struct Stop(AtomicBool);

impl Stop {
    /// `Err(Halt::Stopped)` once another list has failed.
    pub fn check(&self) -> Result<(), Halt> {
        match self.0.load(Ordering::Relaxed) {
            true => Err(Halt::Stopped),
            false => Ok(()),
        }
    }

    fn raise(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// What one list is given to be made with: the threads it may use, its handle on the sink,
/// and the flag that tells it to stop.
pub(super) struct Slot<'s, 'a> {
    pub threads: usize,
    pub sink: Shared<'s, 'a>,
    pub stop: &'s Stop,
}

/// One list's share of the work: its platforms' layers and what was planned for them.
pub(super) struct Work<'a, P> {
    pub group: &'a mut PlatformLayers,
    pub plan: P,
}

/// Runs `make` on every item of `work`, at most `threads` at once, each with its [`Slot`]
/// (calls to `sink` are made one at a time); returns the results in `work`'s order. When one
/// fails, the others stop at their next step, and the error returned names the failed list's
/// platforms when there are several lists. What was written goes with the scratch folder.
pub(super) fn make_all<P: Send, T: Send>(
    work: Vec<Work<'_, P>>,
    threads: usize,
    sink: &mut dyn BlobSink,
    make: impl Fn(Work<'_, P>, &mut Slot) -> Result<T, Halt> + Sync,
) -> Result<Vec<T>, BuildError> {
    let lists = work.len();
    let at_once = threads.clamp(1, lists.max(1));
    // The build's threads are shared out, so that lists made at once use no more than one
    // list made alone.
    let each = (threads / at_once).max(1);
    let names: Vec<Vec<Platform>> = work.iter().map(|w| w.group.platforms.clone()).collect();
    let stop = Stop::default();
    let shared = Mutex::new(sink);
    let queue = Mutex::new(work.into_iter().enumerate());
    let done = Mutex::new(Vec::with_capacity(lists));
    // The first failure, by the time it happened.
    let failure: Mutex<Option<(usize, Box<BuildError>)>> = Mutex::new(None);
    let worker = || loop {
        let next = queue.lock().unwrap_or_else(PoisonError::into_inner).next();
        let Some((i, item)) = next else { break };
        if stop.check().is_err() {
            break;
        }
        let mut slot = Slot { threads: each, sink: Shared(&shared), stop: &stop };
        match make(item, &mut slot) {
            Ok(made) => done.lock().unwrap_or_else(PoisonError::into_inner).push((i, made)),
            Err(Halt::Stopped) => {}
            Err(Halt::Failed(e)) => {
                stop.raise();
                failure.lock().unwrap_or_else(PoisonError::into_inner).get_or_insert((i, e));
            }
        }
    };
    if at_once == 1 {
        worker();
    } else {
        std::thread::scope(|scope| {
            for _ in 0..at_once {
                scope.spawn(worker);
            }
        });
    }
    if let Some((i, error)) = failure.into_inner().unwrap_or_else(PoisonError::into_inner) {
        return Err(match lists {
            1 => *error,
            _ => BuildError::Platforms { platforms: names[i].clone(), source: error },
        });
    }
    let mut done = done.into_inner().unwrap_or_else(PoisonError::into_inner);
    done.sort_by_key(|(i, _)| *i);
    Ok(done.into_iter().map(|(_, made)| made).collect())
}

/// One thread's handle on the build's sink: each call holds the sink alone while it runs.
pub(super) struct Shared<'s, 'a>(&'s Mutex<&'a mut dyn BlobSink>);

impl Shared<'_, '_> {
    fn with<R>(&self, call: impl FnOnce(&mut dyn BlobSink) -> R) -> R {
        let mut sink = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        call(&mut **sink)
    }
}

impl BlobSink for Shared<'_, '_> {
    fn cached_layers(&mut self, keys: &[Digest]) -> Result<Vec<Option<LayerRecord>>, SinkError> {
        self.with(|s| s.cached_layers(keys))
    }
    fn start_storing(&mut self, path: &std::path::Path, d: &Descriptor) -> Result<(), SinkError> {
        self.with(|s| s.start_storing(path, d))
    }
    fn stream_blob(&mut self, path: &std::path::Path) -> Result<Option<BlobStream>, SinkError> {
        self.with(|s| s.stream_blob(path))
    }
    fn start_storing_streamed(
        &mut self,
        stream: BlobStream,
        path: &std::path::Path,
        d: &Descriptor,
    ) -> Result<(), SinkError> {
        self.with(|s| s.start_storing_streamed(stream, path, d))
    }
    fn settle(&mut self) -> Result<(), SinkError> {
        self.with(|s| s.settle())
    }
    fn put_layer(&mut self, key: &Digest, layer: &LayerBlob) -> Result<(), SinkError> {
        self.with(|s| s.put_layer(key, layer))
    }
    fn put_json(&mut self, blob: &JsonBlob) -> Result<(), SinkError> {
        self.with(|s| s.put_json(blob))
    }
    fn put_documents(&mut self, blobs: &[&JsonBlob]) -> Result<(), SinkError> {
        self.with(|s| s.put_documents(blobs))
    }
    fn put_file(&mut self, path: &std::path::Path, d: &Descriptor) -> Result<(), SinkError> {
        self.with(|s| s.put_file(path, d))
    }
    fn cached_disk(&mut self, key: &Digest) -> Result<Option<Descriptor>, SinkError> {
        self.with(|s| s.cached_disk(key))
    }
    fn remember_disk(&mut self, key: &Digest, artifact: &Descriptor) -> Result<(), SinkError> {
        self.with(|s| s.remember_disk(key, artifact))
    }
    fn put_referrer(&mut self, subject: &Digest, artifact: &Descriptor) -> Result<(), SinkError> {
        self.with(|s| s.put_referrer(subject, artifact))
    }
    fn copy_blob(&mut self, d: &Descriptor, target: &std::path::Path) -> Result<bool, SinkError> {
        self.with(|s| s.copy_blob(d, target))
    }
    fn get_document(&mut self, digest: &Digest, limit: u64) -> Result<Option<Vec<u8>>, SinkError> {
        self.with(|s| s.get_document(digest, limit))
    }
}
