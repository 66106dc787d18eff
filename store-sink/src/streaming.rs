//! Layers uploaded while they are compressed, where the store stages large blobs anyway
//! (see [`kiln_store::growing`]): each scratch file is read as the writer says it grows, and
//! published under its digest once the build names it.

use std::path::Path;
use std::sync::Arc;

use kiln_builder::build::BlobStream;
use kiln_builder::layer::WriteProgress;
use kiln_oci::Descriptor;
use kiln_store::growing::Growth;
use kiln_store::{Store, StoreError};

use crate::Stored;
use tokio::runtime::Runtime;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

/// What a background upload ends with.
pub(crate) type Upload = JoinHandle<Result<Stored, StoreError>>;

/// What the writer of one scratch file has said, for its upload to read.
struct Tail(watch::Sender<Growth>);

impl WriteProgress for Tail {
    fn written(&self, len: u64) {
        // Never undoes the end a sink has told.
        self.0.send_if_modified(|now| match now {
            Growth::Written(n) if *n < len => {
                *now = Growth::Written(len);
                true
            }
            _ => false,
        });
    }
}

/// One scratch file being uploaded as it is written.
pub(crate) struct Streaming {
    id: u64,
    tail: Arc<Tail>,
    task: Upload,
}

impl Streaming {
    /// The file is whole and is the blob `descriptor` names: its upload ends and publishes
    /// it (or fails, publishing nothing, if what was sent is not that blob).
    pub(crate) fn whole(self, descriptor: &Descriptor) -> Upload {
        let (digest, size) = (descriptor.digest, descriptor.size);
        self.tail.0.send_replace(Growth::Whole { digest, size });
        self.task
    }

    /// The file is not to be stored: its upload is aborted.
    fn drop_upload(self) -> Upload {
        self.tail.0.send_replace(Growth::Dropped);
        self.task
    }
}

/// The scratch files being uploaded as they are written, and those dropped whose aborts are
/// still to be waited for.
#[derive(Default)]
pub(crate) struct Streams {
    open: Vec<Streaming>,
    dropped: Vec<Upload>,
    next_id: u64,
}

impl Streams {
    /// Starts uploading the scratch file at `path` as it grows, once one of `permits` is
    /// free; the file is opened now (a new open file, so the writer's direct I/O is not
    /// shared), so renaming it later changes nothing.
    pub(crate) fn start(
        &mut self,
        store: &Store,
        runtime: &Runtime,
        path: &Path,
        permits: Arc<Semaphore>,
    ) -> Result<BlobStream, StoreError> {
        let file = std::fs::File::open(path)
            .map_err(|source| StoreError::LocalFile { path: path.to_path_buf(), source })?;
        let (sender, growth) = watch::channel(Growth::Written(0));
        let tail = Arc::new(Tail(sender));
        let (store, path) = (store.clone(), path.to_path_buf());
        let task = runtime.spawn(async move {
            // The semaphore is never closed, so a permit always comes.
            let _permit = permits.acquire_owned().await.ok();
            let stored = store.put_growing_file(file, path, growth).await?;
            // Whether the sink's lease record preceded it is not known here: it is looked for
            // again before tagging.
            let uploaded = stored.is_some_and(|outcome| outcome.uploaded);
            Ok(Stored { uploaded, recorded: false, healed: None })
        });
        let id = self.next_id;
        self.next_id += 1;
        self.open.push(Streaming { id, tail: tail.clone(), task });
        Ok(BlobStream { id, progress: tail })
    }

    /// The stream `id` names, taken out of those open.
    pub(crate) fn take(&mut self, id: u64) -> Option<Streaming> {
        let i = self.open.iter().position(|s| s.id == id)?;
        Some(self.open.swap_remove(i))
    }

    /// Aborts `stream`'s upload; it is waited for by [`Streams::settle`].
    pub(crate) fn drop_upload(&mut self, stream: Streaming) {
        self.dropped.push(stream.drop_upload());
    }

    /// Aborts every upload still open (its layer failed, or the build stopped) and waits for
    /// every abort. Nothing was published by them, so a failure to abort is only warned
    /// about: the upload's marker stays for gc.
    pub(crate) fn settle(&mut self, runtime: &Runtime) {
        for stream in std::mem::take(&mut self.open) {
            self.drop_upload(stream);
        }
        for task in std::mem::take(&mut self.dropped) {
            match runtime.block_on(task) {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => eprintln!(
                    "warning: aborting the upload of an unfinished layer failed: {}",
                    kiln_store::one_line(&e)
                ),
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(e) => eprintln!("warning: the upload of an unfinished layer ended: {e}"),
            }
        }
    }
}
