//! Layers uploaded while they are compressed, where the store stages large blobs anyway
//! (see [`kiln_store::growing`]): each scratch file is read as the writer says it grows, and
//! published under its digest once the build names it, the blob named in the lease and
//! looked for in the store first, on the upload's task (the build goes on at once).

use std::path::Path;
use std::sync::Arc;

use kiln_builder::build::BlobStream;
use kiln_builder::layer::WriteProgress;
use kiln_oci::Descriptor;
use kiln_store::growing::Growth;
use kiln_store::{Quarantined, Reuse, Store, StoreError, Wanted};
use tokio::runtime::Runtime;
use tokio::sync::{oneshot, watch, Semaphore};
use tokio::task::JoinHandle;

use crate::Stored;

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
    /// Tells the upload which blob the finished file is.
    end: oneshot::Sender<Descriptor>,
    task: Upload,
}

impl Streaming {
    /// The file is whole and is the blob `descriptor` names: its upload names the blob in
    /// the lease and looks for it, then ends and publishes it (or fails, publishing nothing,
    /// if what was sent is not that blob), or aborts when a sound copy is stored.
    pub(crate) fn whole(self, descriptor: &Descriptor) -> Upload {
        if self.end.send(descriptor.clone()).is_err() {
            // The task has ended already (it failed): its error is in its result.
            self.tail.0.send_replace(Growth::Dropped);
        }
        self.task
    }

    /// The file is not to be stored: its upload is aborted.
    fn drop_upload(self) -> Upload {
        self.tail.0.send_replace(Growth::Dropped);
        self.task
    }
}

/// Once told which blob the file is (`end`), names it in the lease of `store` while looking
/// for it (judged by content when `content` is set), then lets the upload end: published
/// unless a sound copy is stored. Returns whether the lease record was written and the
/// corrupt bytes moved aside, if any; `None` when the file is dropped or the blob is stored.
async fn decide(
    store: &Store,
    end: oneshot::Receiver<Descriptor>,
    growth: &watch::Sender<Growth>,
    content: bool,
) -> Result<Option<(bool, Option<Quarantined>)>, StoreError> {
    // No descriptor: the file was dropped, and the watch says so.
    let Ok(descriptor) = end.await else { return Ok(None) };
    let (digest, size) = (descriptor.digest, descriptor.size);
    let (named, wanted) = ([digest], [Wanted { digest, size, vouched: None }]);
    let (recorded, verdict) =
        tokio::join!(store.lease_blobs(&named), store.check_reuse(&wanted, content));
    let decided = recorded.and_then(|recorded| Ok((recorded, verdict?)));
    let (recorded, verdict) = match decided {
        Ok(decided) => decided,
        Err(e) => {
            growth.send_replace(Growth::Dropped);
            return Err(e);
        }
    };
    let healed = match verdict.into_iter().next() {
        Some(Reuse::Sound) => {
            growth.send_replace(Growth::Dropped);
            return Ok(None);
        }
        Some(Reuse::Quarantined(quarantined)) => Some(quarantined),
        Some(Reuse::Missing | Reuse::WrongRecord { .. }) | None => None,
    };
    growth.send_replace(Growth::Whole { digest, size });
    Ok(Some((recorded, healed)))
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
    /// shared), so renaming it later changes nothing. `store` is the sink's leased handle,
    /// and `content` whether a blob found stored is judged by its content.
    pub(crate) fn start(
        &mut self,
        store: Store,
        runtime: &Runtime,
        path: &Path,
        content: bool,
        permits: Arc<Semaphore>,
    ) -> Result<BlobStream, StoreError> {
        let file = std::fs::File::open(path)
            .map_err(|source| StoreError::LocalFile { path: path.to_path_buf(), source })?;
        let (sender, growth) = watch::channel(Growth::Written(0));
        let tail = Arc::new(Tail(sender));
        let (end, told) = oneshot::channel();
        let (decider, path) = (tail.clone(), path.to_path_buf());
        let task = runtime.spawn(async move {
            let upload = async {
                // The semaphore is never closed, so a permit always comes.
                let _permit = permits.acquire_owned().await.ok();
                store.put_growing_file(file, path, growth).await
            };
            let (stored, decided) = tokio::join!(upload, decide(&store, told, &decider.0, content));
            let decided = decided?;
            let uploaded = stored?.is_some_and(|outcome| outcome.uploaded);
            Ok(match decided {
                Some((recorded, healed)) => Stored { uploaded, recorded, healed },
                None => Stored { uploaded: false, recorded: false, healed: None },
            })
        });
        let id = self.next_id;
        self.next_id += 1;
        self.open.push(Streaming { id, tail: tail.clone(), end, task });
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
                Ok(Err(e)) => log::warn!(
                    "aborting the upload of an unfinished layer failed: {}",
                    kiln_store::one_line(&e)
                ),
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(e) => log::warn!("the upload of an unfinished layer ended: {e}"),
            }
        }
    }
}
