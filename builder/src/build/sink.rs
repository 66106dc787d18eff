//! Where a build puts its blobs: the builder never talks to a store itself; the caller wires
//! one in through [`BlobSink`].

use std::path::Path;
use std::sync::Arc;

use kiln_oci::{Descriptor, Digest};

use crate::image::{JsonBlob, LayerRecord};
use crate::layer::{LayerBlob, WriteProgress};

/// An error from the code that stores blobs, kept opaque to the builder.
pub type SinkError = Box<dyn std::error::Error + Send + Sync>;

/// A layer's scratch file that a sink reads while it is written (see
/// [`BlobSink::stream_blob`]).
pub struct BlobStream {
    /// The sink's name for it, given back with [`BlobSink::start_storing_streamed`].
    pub id: u64,
    /// Told how much of the file is written, as it grows.
    pub progress: Arc<dyn WriteProgress>,
}

/// Where a build puts its blobs and looks up earlier layers. The layers of several platforms
/// are made at once, each thread calling the sink in turn, hence `Send`.
pub trait BlobSink: Send {
    /// For each key, the layer built before from it, if its blob is still available (all keys
    /// at once, so a remote store can look them up concurrently).
    fn cached_layers(&mut self, keys: &[Digest]) -> Result<Vec<Option<LayerRecord>>, SinkError>;
    /// Told as soon as the scratch file at `path` (a layer or disk image) is finished, long
    /// before [`BlobSink::put_layer`] or [`BlobSink::put_file`] is called for it: a sink
    /// whose store is remote may start uploading it while the build goes on. The file stays
    /// the builder's until then, and is not changed. A sink that stores at once does nothing
    /// here.
    fn start_storing(&mut self, _path: &Path, _descriptor: &Descriptor) -> Result<(), SinkError> {
        Ok(())
    }
    /// Told when a layer's scratch file is created at `path`, before its first byte: a sink
    /// whose store uploads large blobs through a staging key anyway may start uploading its
    /// bytes as they are written, as the returned stream's progress is told. The file is
    /// then given back finished with [`BlobSink::start_storing_streamed`] (under its final
    /// name); a stream never given back (the layer failed) is dropped by
    /// [`BlobSink::settle`], storing nothing. A sink that waits for whole files returns
    /// `None`.
    fn stream_blob(&mut self, _path: &Path) -> Result<Option<BlobStream>, SinkError> {
        Ok(None)
    }
    /// [`BlobSink::start_storing`] for a file whose bytes the sink has been reading since
    /// [`BlobSink::stream_blob`] returned `stream`.
    fn start_storing_streamed(
        &mut self,
        _stream: BlobStream,
        path: &Path,
        descriptor: &Descriptor,
    ) -> Result<(), SinkError> {
        self.start_storing(path, descriptor)
    }
    /// Waits for every blob [`BlobSink::start_storing`] began and not yet put: called once
    /// a build is over, whether it succeeded or not, so that nothing still reads its scratch
    /// folder. The first failure among them is the error.
    fn settle(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
    /// Stores a freshly written layer blob and remembers it under `key`; the blob's scratch
    /// file is the sink's to keep, move or delete.
    fn put_layer(&mut self, key: &Digest, layer: &LayerBlob) -> Result<(), SinkError>;
    /// Stores a JSON document (config, manifest, index).
    fn put_json(&mut self, blob: &JsonBlob) -> Result<(), SinkError>;
    /// Stores JSON documents in order, each after those it names (configs and manifests, then
    /// an index): one [`BlobSink::put_json`] each, unless the sink does better with them
    /// together (a remote store names them all in one lease record).
    fn put_documents(&mut self, blobs: &[&JsonBlob]) -> Result<(), SinkError> {
        blobs.iter().try_for_each(|blob| self.put_json(blob))
    }
    /// Stores the scratch file at `path` (a disk image) as the blob `descriptor` names; the
    /// file is the sink's to keep, move or delete.
    fn put_file(&mut self, path: &Path, descriptor: &Descriptor) -> Result<(), SinkError>;
    /// A disk artifact manifest made before under `key`, if it and every blob it names are
    /// still stored.
    fn cached_disk(&mut self, key: &Digest) -> Result<Option<Descriptor>, SinkError>;
    /// Remembers the disk artifact manifest `artifact` under `key`.
    fn remember_disk(&mut self, key: &Digest, artifact: &Descriptor) -> Result<(), SinkError>;
    /// Records that the artifact manifest `artifact` refers to `subject` (OCI 1.1 referrer).
    fn put_referrer(&mut self, subject: &Digest, artifact: &Descriptor) -> Result<(), SinkError>;
    /// Copies the stored blob `descriptor` names to the new file `target`, verified against
    /// its digest and size; `Ok(false)` when the store does not have it.
    fn copy_blob(&mut self, descriptor: &Descriptor, target: &Path) -> Result<bool, SinkError>;
    /// The stored blob `digest` (a manifest or config), verified, if it is stored and at most
    /// `limit` bytes (larger is an error); `Ok(None)` when the store does not have it.
    fn get_document(&mut self, digest: &Digest, limit: u64) -> Result<Option<Vec<u8>>, SinkError>;
}
