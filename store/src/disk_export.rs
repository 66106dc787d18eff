//! The disk images attached to an image as a kiln disk artifact (see
//! [`kiln_oci::disk_artifact`]), written out as files.

use std::path::{Path, PathBuf};

use kiln_oci::disk_artifact::ARTIFACT_TYPE;
use kiln_oci::{media_type, Descriptor, Digest, ImageIndex, ImageManifest};
use serde::{Serialize, Serializer};

use crate::{Store, StoreError};

/// One disk image file written.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportedDisk {
    #[serde(serialize_with = "lossy_path")]
    pub path: PathBuf,
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
}

/// A local path as text, lossily where it is not UTF-8: reports only name it.
fn lossy_path<S: Serializer>(value: &Path, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&value.display())
}

/// Why an image's disks could not be written out.
#[derive(Debug, thiserror::Error)]
pub enum DiskExportError {
    #[error("it has no disk images: build it from a recipe with a [disk] table")]
    NoDisks,
    #[error("it has no disk images for {wanted}; {}", where_disks_are(.available))]
    NoDisksFor { wanted: String, available: Vec<String> },
    #[error("it has disk images for {}: choose one with --platform", .available.join(", "))]
    ChoosePlatform { available: Vec<String> },
    #[error("creating {}", .dir.display())]
    CreateDir { dir: PathBuf, source: std::io::Error },
    #[error("writing {}", .path.display())]
    Write { path: PathBuf, source: StoreError },
    #[error("two of its disk images are both named {name:?}: one would replace the other")]
    SameName { name: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where an image's disks are, for a `--platform` that named none of them.
fn where_disks_are(available: &[String]) -> String {
    if available.is_empty() {
        // A single-platform image: its manifest, not an index entry, carries the disks.
        "its disks name no platform: leave out --platform".to_string()
    } else {
        format!("it has them for {}", available.join(", "))
    }
}

/// Writes the files of the disk artifact attached to the image `root` (or, for an index, to
/// its manifest for `platform`, which may be left out when only one has disks) into `dir`,
/// each under its title when that is a plain file name, else its digest.
pub async fn export_disks(
    store: &Store,
    root: &Descriptor,
    platform: Option<&str>,
    dir: &Path,
) -> Result<Vec<ExportedDisk>, DiskExportError> {
    // (platform, disk artifact) for every manifest with disks attached.
    let mut manifests = vec![(None, root.digest)];
    if root.media_type == media_type::IMAGE_INDEX {
        let index: ImageIndex = store.get_described_json(root).await?;
        manifests.extend(index.manifests.iter().map(|m| (m.platform.clone(), m.digest)));
    }
    let mut disks = Vec::new();
    for (p, subject) in manifests {
        for r in store.referrers(&subject).await? {
            if r.artifact_type.as_deref() == Some(ARTIFACT_TYPE) {
                disks.push((p.as_ref().map(|p| p.to_string()), r));
            }
        }
    }
    let available = || disks.iter().filter_map(|(p, _)| p.clone()).collect::<Vec<_>>();
    let chosen = match (platform, disks.as_slice()) {
        (_, []) => return Err(DiskExportError::NoDisks),
        (Some(wanted), _) => match disks.iter().find(|(p, _)| p.as_deref() == Some(wanted)) {
            Some(found) => found,
            None => {
                let available = available();
                return Err(DiskExportError::NoDisksFor { wanted: wanted.to_string(), available });
            }
        },
        (None, [only]) => only,
        (None, _) => return Err(DiskExportError::ChoosePlatform { available: available() }),
    };
    let artifact: ImageManifest = store.get_described_json(&chosen.1).await?;
    // Every name is checked before anything is written: no disk is left half exported.
    let names = file_names(&artifact.layers).map_err(|name| DiskExportError::SameName { name })?;
    std::fs::create_dir_all(dir)
        .map_err(|source| DiskExportError::CreateDir { dir: dir.to_path_buf(), source })?;
    let mut written = Vec::new();
    for (layer, name) in artifact.layers.iter().zip(names) {
        let path = dir.join(&name);
        let size = store
            .copy_described_to(layer, &path)
            .await
            .map_err(|source| DiskExportError::Write { path: path.clone(), source })?;
        written.push(ExportedDisk {
            path,
            digest: layer.digest,
            media_type: layer.media_type.clone(),
            size,
        });
    }
    Ok(written)
}

/// The file name of each disk: its title when that is a plain file name, else its digest.
/// Two disks that would share a name are refused, as the second would replace the first:
/// the error is that name.
fn file_names(layers: &[Descriptor]) -> Result<Vec<String>, String> {
    let mut names = Vec::with_capacity(layers.len());
    for layer in layers {
        let title = layer.annotations.get("org.opencontainers.image.title");
        // Only plain file names: a title never chooses where outside `dir` to write.
        let name = title.filter(|t| {
            !t.is_empty() && !t.contains('/') && t.as_str() != "." && t.as_str() != ".."
        });
        let name = name.cloned().unwrap_or_else(|| layer.digest.hex());
        if names.contains(&name) {
            return Err(name);
        }
        names.push(name);
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use kiln_oci::{Descriptor, Digest};

    use super::{file_names, DiskExportError};

    fn disk(content: &[u8], title: Option<&str>) -> Descriptor {
        let mut d = Descriptor::new("application/x-raw-disk-image", Digest::of(content), 1);
        if let Some(title) = title {
            d.annotations.insert("org.opencontainers.image.title".into(), title.into());
        }
        d
    }

    #[test]
    fn two_disks_with_one_name_are_refused() {
        let err = DiskExportError::SameName { name: "disk.raw".into() };
        assert!(err.to_string().contains("\"disk.raw\""), "{err}");
        let layers = [disk(b"a", Some("disk.raw")), disk(b"b", Some("disk.raw"))];
        assert_eq!(file_names(&layers).unwrap_err(), "disk.raw");
        // A title that is no plain file name falls back to the digest, which may collide too.
        let hex = Digest::of(b"c").hex();
        let layers = [disk(b"c", Some("../x")), disk(b"d", Some(&hex))];
        assert_eq!(file_names(&layers).unwrap_err(), hex);
        let layers = [disk(b"e", Some("esp.img")), disk(b"f", Some("root.img")), disk(b"g", None)];
        let names = file_names(&layers).unwrap();
        assert_eq!(names, ["esp.img", "root.img", &Digest::of(b"g").hex()]);
    }

    #[test]
    fn a_platform_without_disks_says_where_they_are() {
        let some = DiskExportError::NoDisksFor {
            wanted: "linux/s390x".into(),
            available: vec!["linux/amd64".into(), "linux/arm64".into()],
        };
        assert_eq!(
            some.to_string(),
            "it has no disk images for linux/s390x; it has them for linux/amd64, linux/arm64"
        );
        let single =
            DiskExportError::NoDisksFor { wanted: "linux/s390x".into(), available: vec![] };
        assert_eq!(
            single.to_string(),
            "it has no disk images for linux/s390x; its disks name no platform: leave out \
             --platform"
        );
    }
}
