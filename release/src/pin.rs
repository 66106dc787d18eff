//! A release rendered for its consumer, naming only digests (never a tag alone):
//!
//! - `json`: the record plus `imageRef` (`REPO@sha256:…`) and each disk's object URL;
//! - `tfvars`: a Terraform `*.auto.tfvars.json` setting one object variable, `kiln_release`;
//! - `k8s`: a kustomize `images:` entry with `newName` and `digest`;
//! - `env`: `KEY='value'` lines for shells and CI.
//!
//! A revoked release is never rendered. Resolving `CHANNEL/NAME` reads the checkpoint, the
//! head entry, one probe past it, the revocation log's checkpoint, the entry it names and a
//! probe, and the release: a handful of requests whatever the channel's length.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::str::FromStr;

use kiln_attest::PublicKey;
use kiln_oci::Digest;
use kiln_store::Store;
use serde::Serialize;

use crate::channel::{self, ChannelRef};
use crate::record::{self, Loaded, Release};
use crate::{revocation, ReleaseError, Result};

/// A pin's format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Json,
    Tfvars,
    K8s,
    Env,
}

impl FromStr for Format {
    type Err = ReleaseError;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "json" => Format::Json,
            "tfvars" => Format::Tfvars,
            "k8s" => Format::K8s,
            "env" => Format::Env,
            other => return Err(ReleaseError::UnknownFormat(other.to_string())),
        })
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Format::Json => "json",
            Format::Tfvars => "tfvars",
            Format::K8s => "k8s",
            Format::Env => "env",
        })
    }
}

/// What to pin: a release id or a channel's head.
#[derive(Clone, Debug)]
pub enum Target {
    Release(Digest),
    Channel(ChannelRef),
}

impl FromStr for Target {
    type Err = ReleaseError;
    fn from_str(s: &str) -> Result<Self> {
        if s.starts_with("sha256:") {
            let d = s.parse().map_err(|e: kiln_oci::DigestError| ReleaseError::InvalidName {
                what: "release digest",
                text: s.to_string(),
                reason: e.to_string(),
            })?;
            return Ok(Target::Release(d));
        }
        Ok(Target::Channel(s.parse()?))
    }
}

/// Resolves `target` to a release that is not revoked. For a channel, the checkpoint's and
/// the head entry's signatures are checked against `keys` when any are given.
pub async fn resolve(store: &Store, target: &Target, keys: &[PublicKey]) -> Result<Loaded> {
    let id = match target {
        Target::Release(d) => *d,
        Target::Channel(ch) => {
            // With keys, the checkpoint and the entries read must be signed by one of them.
            let head =
                channel::head(store, ch, keys).await?.ok_or_else(|| ReleaseError::InvalidName {
                    what: "channel",
                    text: ch.to_string(),
                    reason: "it has no entries: nothing was promoted into it".to_string(),
                })?;
            head.entry.release
        }
    };
    revocation::revoked(store, &id).await?;
    record::load(store, &id).await
}

/// One disk file in a JSON pin.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DiskPin {
    pub platform: String,
    pub format: String,
    pub digest: Digest,
    pub size: u64,
    pub verity_root_hash: Option<String>,
    /// The object in the store: `<store URL>/blobs/sha256/<hex>`.
    pub url: String,
}

/// The `json` pin.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JsonPin {
    /// The release id.
    pub release: Digest,
    pub record: Release,
    /// `REPO@sha256:…` of the image index.
    pub image_ref: String,
    pub disks: Vec<DiskPin>,
}

/// The Terraform variable `kiln_release` (see docs/releases.md for its `variable` block).
#[derive(Clone, Debug, Serialize)]
pub struct TfRelease {
    pub release: Digest,
    pub name: String,
    pub version: String,
    pub image_digest: Digest,
    pub image_ref: String,
    /// Per platform: manifest and config digests.
    pub platforms: BTreeMap<String, TfPlatform>,
    pub disks: Vec<TfDisk>,
}

/// One platform in the Terraform variable.
#[derive(Clone, Debug, Serialize)]
pub struct TfPlatform {
    pub manifest: Digest,
    pub config: Digest,
}

/// One disk in the Terraform variable (an empty verity root hash when the disk has none, so
/// the object type stays fixed).
#[derive(Clone, Debug, Serialize)]
pub struct TfDisk {
    pub platform: String,
    pub format: String,
    pub digest: Digest,
    pub size: u64,
    pub url: String,
    pub verity_root_hash: String,
}

/// Checks a `--repository`: a registry path without tag, digest, spaces or quotes.
pub fn check_repository(repo: &str) -> Result<()> {
    let ok = !repo.is_empty()
        && repo.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-/:".contains(&b))
        && !repo.starts_with('/')
        && !repo.ends_with('/')
        && !repo.ends_with(':');
    if ok {
        Ok(())
    } else {
        Err(ReleaseError::InvalidName {
            what: "repository",
            text: repo.to_string(),
            reason: "use a registry path such as registry.example.com/team/app (letters, digits, \
                     . _ - / and a :port), without tag or digest"
                .to_string(),
        })
    }
}

fn disks(loaded: &Loaded, store_url: &str) -> Vec<DiskPin> {
    let base = store_url.trim_end_matches('/');
    loaded
        .release
        .platforms
        .iter()
        .flat_map(|p| {
            p.disks.iter().map(move |d| DiskPin {
                platform: p.platform.clone(),
                format: d.format.clone(),
                digest: d.digest,
                size: d.size,
                verity_root_hash: d.verity_root_hash.clone(),
                url: format!("{base}/blobs/sha256/{}", d.digest.hex()),
            })
        })
        .collect()
}

/// Single-quotes `value` for a POSIX shell.
fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// The variable-name form of a platform or format: `linux/arm64/v8` → `LINUX_ARM64_V8`.
fn env_part(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' })
        .collect()
}

/// Renders `loaded` as `format` for the image at `repository`, naming disks by their object
/// URL under `store_url`.
pub fn render(
    format: Format,
    loaded: &Loaded,
    repository: &str,
    store_url: &str,
) -> Result<Vec<u8>> {
    check_repository(repository)?;
    let r = &loaded.release;
    // The record comes from the store: its name and version reach YAML, shell and HCL only
    // once they are known to be a valid repository name and tag.
    let valid = r.name.parse::<kiln_store::RepoName>().is_ok()
        && (r.version.is_empty() || r.version.parse::<kiln_store::Tag>().is_ok());
    if !valid {
        return Err(ReleaseError::NotARelease {
            digest: loaded.id,
            reason: format!("its name {:?} or version {:?} is malformed", r.name, r.version),
        });
    }
    let image_ref = format!("{repository}@{}", r.image.digest);
    let disks = disks(loaded, store_url);
    Ok(match format {
        Format::Json => {
            let mut out = serde_json::to_vec_pretty(&JsonPin {
                release: loaded.id,
                record: r.clone(),
                image_ref,
                disks,
            })?;
            out.push(b'\n');
            out
        }
        Format::Tfvars => {
            let variable = TfRelease {
                release: loaded.id,
                name: r.name.clone(),
                version: r.version.clone(),
                image_digest: r.image.digest,
                image_ref,
                platforms: r
                    .platforms
                    .iter()
                    .map(|p| {
                        (
                            p.platform.clone(),
                            TfPlatform { manifest: p.manifest.digest, config: p.config.digest },
                        )
                    })
                    .collect(),
                disks: disks
                    .into_iter()
                    .map(|d| TfDisk {
                        platform: d.platform,
                        format: d.format,
                        digest: d.digest,
                        size: d.size,
                        url: d.url,
                        verity_root_hash: d.verity_root_hash.unwrap_or_default(),
                    })
                    .collect(),
            };
            let mut out = serde_json::to_vec_pretty(&BTreeMap::from([("kiln_release", variable)]))?;
            out.push(b'\n');
            out
        }
        Format::K8s => {
            // Every value is a digest, a checked repository, name or tag: none needs escaping,
            // but each is quoted so a name like `on` or `1e3` stays a string.
            format!(
                "# kiln release {id} ({name} {version})\nimages:\n- name: \"{name}\"\n  newName: \"{repository}\"\n  digest: \"{digest}\"\n",
                id = loaded.id,
                name = r.name,
                version = r.version,
                digest = r.image.digest,
            )
            .into_bytes()
        }
        Format::Env => {
            let mut out = String::new();
            let mut line = |k: &str, v: &str| {
                out.push_str(&format!("{k}={}\n", shell_quote(v)));
            };
            line("KILN_RELEASE", &loaded.id.to_string());
            line("KILN_IMAGE_NAME", &r.name);
            line("KILN_IMAGE_VERSION", &r.version);
            line("KILN_IMAGE_DIGEST", &r.image.digest.to_string());
            line("KILN_IMAGE_REF", &image_ref);
            for p in &r.platforms {
                line(
                    &format!("KILN_MANIFEST_{}", env_part(&p.platform)),
                    &p.manifest.digest.to_string(),
                );
            }
            for d in &disks {
                let stem = format!("KILN_DISK_{}_{}", env_part(&d.platform), env_part(&d.format));
                line(&format!("{stem}_DIGEST"), &d.digest.to_string());
                line(&format!("{stem}_URL"), &d.url);
                if let Some(h) = &d.verity_root_hash {
                    line(&format!("{stem}_VERITY_ROOT_HASH"), h);
                }
            }
            out.into_bytes()
        }
    })
}

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, flushed and
/// renamed over `path`, so a reader sees the old pin or the new one, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let file_err = |source| ReleaseError::File { path: path.to_path_buf(), source };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(file_err)?;
    tmp.write_all(bytes).map_err(file_err)?;
    tmp.as_file().sync_all().map_err(file_err)?;
    tmp.persist(path).map_err(|e| file_err(e.error))?;
    Ok(())
}

/// What `kiln pin -o FILE` wrote.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Written {
    pub release: Digest,
    pub format: String,
    pub path: String,
    pub bytes: u64,
}
