//! The `[disk]` outputs of a build: the flattened root filesystem as erofs, squashfs or ext4, an
//! optional dm-verity hash partition and FAT ESP, a GPT disk, and that disk as raw, qcow2, fixed
//! VHD and GCE files, and an initramfs, described by an OCI 1.1 artifact manifest whose subject
//! is the image manifest. Each platform's disks are found in the cache or made in a scratch
//! folder, and stored with the image.

mod artifact;
pub(super) mod error;
mod esp;
mod formats;
mod hashed_file;
mod make;
mod partitioned;

use kiln_disk::gpt::Arch;
use kiln_oci::{Descriptor, Digest, Platform, Sha256};
use kiln_tree::tree::Tree;

use crate::build::error::BuildError;
use crate::build::options::BuildOptions;
use crate::build::sink::BlobSink;
use crate::recipe::DiskSpec;

pub use artifact::{media_type_of, DiskFile};
pub use error::DiskError;
pub use esp::esp_tree;
pub use make::{make_disks, DiskOutput};

/// One platform's disks before they are stored.
pub(super) struct PlatformDisks {
    platform: Platform,
    /// The image manifest they were made from.
    subject: Digest,
    /// Their cache key (see [`disk_key`]).
    key: Digest,
    disks: Disks,
}

enum Disks {
    /// Found in the cache: the artifact manifest.
    Cached(Descriptor),
    /// Made now, in the scratch folder.
    Made(Box<DiskOutput>),
}

/// Each platform's disks, found in the cache or made in a scratch folder of their own, from
/// its flattened root in `roots` (one per manifest of `manifests`).
pub(super) fn prepare(
    spec: &DiskSpec,
    roots: &[Option<&Tree>],
    manifests: &[(Platform, Descriptor)],
    e2fsprogs: Option<&str>,
    opts: &BuildOptions,
    sink: &mut dyn BlobSink,
) -> Result<Vec<PlatformDisks>, BuildError> {
    let mut prepared = Vec::new();
    let targets = manifests
        .iter()
        .zip(roots)
        .filter_map(|((p, d), rootfs)| Some((p, Arch::of(p)?, d, (*rootfs)?)));
    for (platform, arch, subject, rootfs) in targets {
        let key = disk_key(&subject.digest, arch, spec, e2fsprogs);
        let disks = match sink.cached_disk(&key).map_err(BuildError::Sink)? {
            Some(artifact) => Disks::Cached(artifact),
            None => {
                // Named by the manifest: platforms of other layers make disks too.
                let dir = opts.work_dir.join(format!("disk-{}", subject.digest.hex()));
                std::fs::create_dir(&dir)
                    .map_err(|source| DiskError::Io { path: dir.clone(), source })?;
                let out = make_disks(rootfs, spec, arch, opts.epoch, opts.threads, &dir, subject)?;
                for file in &out.files {
                    sink.start_storing(&file.path, &file.descriptor).map_err(BuildError::Sink)?;
                }
                Disks::Made(Box::new(out))
            }
        };
        prepared.push(PlatformDisks {
            platform: platform.clone(),
            subject: subject.digest,
            key,
            disks,
        });
    }
    Ok(prepared)
}

/// Each platform's disk artifact manifest, as stored.
pub(super) struct StoredDisks {
    pub artifacts: Vec<(Platform, Descriptor)>,
    /// How many of `artifacts` were found in the cache.
    pub reused: usize,
}

/// Stores the disks made, remembers them under their keys, and records every artifact as a
/// referrer of its image manifest.
pub(super) fn store(
    sink: &mut dyn BlobSink,
    prepared: Vec<PlatformDisks>,
) -> Result<StoredDisks, BuildError> {
    let mut artifacts = Vec::new();
    let mut reused = 0;
    for PlatformDisks { platform, subject, key, disks } in prepared {
        let artifact = match disks {
            Disks::Cached(artifact) => {
                reused += 1;
                artifact
            }
            Disks::Made(out) => {
                for file in &out.files {
                    sink.put_file(&file.path, &file.descriptor).map_err(BuildError::Sink)?;
                }
                sink.put_documents(&[&out.empty_config, &out.manifest])
                    .map_err(BuildError::Sink)?;
                sink.remember_disk(&key, &out.manifest.descriptor).map_err(BuildError::Sink)?;
                out.manifest.descriptor
            }
        };
        sink.put_referrer(&subject, &artifact).map_err(BuildError::Sink)?;
        artifacts.push((platform, artifact));
    }
    Ok(StoredDisks { artifacts, reused })
}

/// The cache key of one platform's disks: the image manifest (which names every layer and the
/// config, and so the epoch), the architecture, the `[disk]` table and, for an ext4 root, the
/// host's e2fsprogs version. The version string changes whenever the disk writers' bytes do.
fn disk_key(subject: &Digest, arch: Arch, spec: &DiskSpec, e2fsprogs: Option<&str>) -> Digest {
    let mut h = Sha256::new();
    h.update(b"kiln disk cache v3\0");
    h.update(subject.to_string().as_bytes());
    // Debug output of these plain types is deterministic (no hash maps); a change in it only
    // costs a cache miss.
    h.update(format!("\0{arch:?}\0{spec:?}\0{e2fsprogs:?}").as_bytes());
    h.finish()
}
