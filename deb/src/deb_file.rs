//! Reading a `.deb` as a stream: `debian-binary`, then `control.tar.*` (kept in memory,
//! bounded), then `data.tar.*`, whose members are checked and handed one at a time to a
//! visitor with their contents, so memory stays bounded whatever the package's size.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read};

use crate::ar::{ArError, ArReader};
use crate::deb822::{self, Deb822Error, Paragraph};
use crate::decompress::{Bounded, Bounds, Codec};
use crate::member::{Member, MemberKind, MemberPath, PathError};

/// The maintainer scripts dpkg would run; kiln never runs them.
pub const MAINTAINER_SCRIPTS: [&str; 5] = ["preinst", "postinst", "prerm", "postrm", "config"];

/// How far a package's members may expand.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub control: Bounds,
    pub data: Bounds,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            control: Bounds { max_total: 64 << 20, max_ratio: 1000 },
            // Debian's largest packages unpack to a few GiB; real data compresses far less
            // than 200:1 (only runs of zeros do better).
            data: Bounds { max_total: 16 << 30, max_ratio: 200 },
        }
    }
}

/// The control part of a package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Control {
    /// The `control` file's fields.
    pub fields: Paragraph,
    /// The `control` file exactly as packaged (written into the installed-package status).
    pub text: String,
    /// The `md5sums` file as packaged, if any.
    pub md5sums: Option<String>,
    /// The maintainer scripts the package has, in [`MAINTAINER_SCRIPTS`] order.
    pub scripts: Vec<&'static str>,
}

/// Why a `.deb` was refused.
#[derive(Debug, thiserror::Error)]
pub enum DebError {
    #[error("the ar archive is damaged")]
    Ar(#[source] ArError),
    #[error("it is not a binary package: {0}")]
    Format(String),
    #[error("reading {member} failed")]
    Read { member: String, source: io::Error },
    #[error("member {path:?} of {member} {problem}")]
    Member { member: String, path: String, problem: String },
    #[error("member {path:?} of {member} has an unsafe name")]
    Path { member: String, path: String, source: PathError },
    #[error("its control file is malformed")]
    ControlFile(#[source] Deb822Error),
    #[error("it has no control file")]
    NoControl,
    #[error("handling member {path} failed")]
    Visit { path: String, source: io::Error },
}

/// Reads `input` as a `.deb`: checks the control part, then hands every data member to
/// `visit` in archive order (a regular file's reader yields exactly its size; what the
/// visitor leaves unread is skipped). Returns the control part once the whole archive,
/// compressed checksums included, was read and found sound.
pub fn read_deb(
    input: impl Read,
    limits: Limits,
    mut visit: impl FnMut(&Member, &mut dyn Read) -> io::Result<()>,
) -> Result<Control, DebError> {
    let mut ar = ArReader::new(input).map_err(DebError::Ar)?;
    let first = ar.next_member().map_err(DebError::Ar)?;
    if first.as_ref().map(|m| m.name.as_str()) != Some("debian-binary") {
        return Err(DebError::Format("its first member is not debian-binary".into()));
    }
    let mut version = Vec::new();
    ar.data().take(64).read_to_end(&mut version).map_err(read_err("debian-binary"))?;
    if !version.starts_with(b"2.") {
        return Err(DebError::Format(format!(
            "debian-binary says {:?}, not format 2.x",
            String::from_utf8_lossy(&version).trim()
        )));
    }
    let control_member = next_tar(&mut ar, "control.tar")?;
    let control = {
        let codec = control_member.1;
        let reader =
            Bounded::new(ar.data(), codec, limits.control).map_err(read_err(&control_member.0))?;
        read_control(reader, &control_member.0)?
    };
    let data_member = next_tar(&mut ar, "data.tar")?;
    let reader =
        Bounded::new(ar.data(), data_member.1, limits.data).map_err(read_err(&data_member.0))?;
    read_data(reader, &data_member.0, &mut visit)?;
    // Later members (dpkg allows `_`-prefixed ones) carry nothing kiln installs, but the
    // archive must still be whole.
    while ar.next_member().map_err(DebError::Ar)?.is_some() {}
    Ok(control)
}

fn read_err(member: &str) -> impl Fn(io::Error) -> DebError + '_ {
    move |source| DebError::Read { member: member.to_string(), source }
}

/// The next member, which must be `stem` with a known compression suffix.
fn next_tar<R: Read>(ar: &mut ArReader<R>, stem: &str) -> Result<(String, Codec), DebError> {
    let member = ar
        .next_member()
        .map_err(DebError::Ar)?
        .ok_or_else(|| DebError::Format(format!("it has no {stem}.* member")))?;
    let codec = member
        .name
        .strip_prefix(stem)
        .and_then(Codec::from_suffix)
        .ok_or_else(|| DebError::Format(format!("member {} is not {stem}.*", member.name)))?;
    Ok((member.name, codec))
}

fn read_control(reader: impl Read, member: &str) -> Result<Control, DebError> {
    let mut archive = tar::Archive::new(reader);
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut scripts = BTreeSet::new();
    for entry in archive.entries().map_err(read_err(member))? {
        let mut entry = entry.map_err(read_err(member))?;
        let raw = entry.path_bytes().into_owned();
        let path = MemberPath::parse(&raw).map_err(|source| DebError::Path {
            member: member.to_string(),
            path: String::from_utf8_lossy(&raw).into_owned(),
            source,
        })?;
        let Some(path) = path else { continue };
        if let Some(script) = MAINTAINER_SCRIPTS.iter().find(|s| **s == path.as_str()) {
            scripts.insert(*script);
        }
        if matches!(path.as_str(), "control" | "md5sums") && entry.header().entry_type().is_file() {
            let mut data = Vec::new();
            entry.read_to_end(&mut data).map_err(read_err(member))?;
            files.insert(path.as_str().to_string(), data);
        }
    }
    drain(archive.into_inner(), member)?;
    let text = |name: &str| -> Result<Option<String>, DebError> {
        files
            .get(name)
            .map(|b| {
                String::from_utf8(b.clone()).map_err(|_| DebError::Member {
                    member: member.to_string(),
                    path: name.to_string(),
                    problem: "is not UTF-8".to_string(),
                })
            })
            .transpose()
    };
    let control_text = text("control")?.ok_or(DebError::NoControl)?;
    let mut paragraphs = deb822::parse(&control_text).map_err(DebError::ControlFile)?;
    if paragraphs.len() != 1 {
        return Err(DebError::Format(format!(
            "its control file has {} paragraphs, not 1",
            paragraphs.len()
        )));
    }
    let fields = paragraphs.remove(0);
    let scripts = MAINTAINER_SCRIPTS.iter().copied().filter(|s| scripts.contains(s)).collect();
    Ok(Control { fields, text: control_text, md5sums: text("md5sums")?, scripts })
}

/// Reads what follows the tar's end blocks: a compressed stream is checked only at its end.
fn drain(mut reader: impl Read, member: &str) -> Result<(), DebError> {
    io::copy(&mut reader, &mut io::sink()).map_err(read_err(member))?;
    Ok(())
}

/// What was seen of each path so far, to refuse writes through symlinks and duplicates.
#[derive(PartialEq)]
enum Seen {
    Dir,
    File,
    Link,
}

fn read_data(
    reader: impl Read,
    member: &str,
    visit: &mut impl FnMut(&Member, &mut dyn Read) -> io::Result<()>,
) -> Result<(), DebError> {
    let mut archive = tar::Archive::new(reader);
    let mut seen: BTreeMap<MemberPath, Seen> = BTreeMap::new();
    for entry in archive.entries().map_err(read_err(member))? {
        let mut entry = entry.map_err(read_err(member))?;
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let refuse = |problem: String| DebError::Member {
            member: member.to_string(),
            path: shown.clone(),
            problem,
        };
        let parse = |raw: &[u8]| {
            MemberPath::parse(raw).map_err(|source| DebError::Path {
                member: member.to_string(),
                path: String::from_utf8_lossy(raw).into_owned(),
                source,
            })
        };
        let header = entry.header();
        let entry_type = header.entry_type();
        let mode = header.mode().map_err(read_err(member))? & 0o7777;
        let id = |v: io::Result<u64>| -> Result<u32, DebError> {
            let v = v.map_err(read_err(member))?;
            u32::try_from(v)
                .ok()
                .filter(|v| *v != u32::MAX)
                .ok_or_else(|| refuse(format!("has owner id {v}, beyond Linux's")))
        };
        let (uid, gid) = (id(header.uid())?, id(header.gid())?);
        let declared = entry.size();
        let Some(path) = parse(&raw)? else {
            if !entry_type.is_dir() {
                return Err(refuse("is the root, but not a directory".into()));
            }
            continue;
        };
        for ancestor in path.ancestors() {
            if let Some((p, Seen::Link | Seen::File)) = seen.get_key_value(ancestor) {
                return Err(refuse(format!(
                    "would be written through {}, which is not a directory",
                    p
                )));
            }
        }
        let kind = if entry_type.is_dir() {
            MemberKind::Dir
        } else if entry_type.is_file() || entry_type == tar::EntryType::Continuous {
            MemberKind::File { size: declared }
        } else if entry_type.is_symlink() {
            let target = entry
                .link_name_bytes()
                .ok_or_else(|| refuse("is a symlink without a target".into()))?;
            let target = String::from_utf8(target.into_owned())
                .map_err(|_| refuse("has a non-UTF-8 link target".into()))?;
            if target.is_empty() || target.contains('\0') {
                return Err(refuse("has an empty link target".into()));
            }
            MemberKind::Symlink { target }
        } else if entry_type.is_hard_link() {
            let raw_target = entry
                .link_name_bytes()
                .ok_or_else(|| refuse("is a hard link without a target".into()))?
                .into_owned();
            let target =
                parse(&raw_target)?.ok_or_else(|| refuse("is a hard link to the root".into()))?;
            if seen.get(&target) != Some(&Seen::File) {
                return Err(refuse(format!(
                    "is a hard link to {target}, which is not an earlier regular file"
                )));
            }
            MemberKind::HardLink { target }
        } else {
            return Err(refuse(format!(
                "is a {entry_type:?} entry; packages may hold only directories, files and links"
            )));
        };
        let now = match kind {
            MemberKind::Dir => Seen::Dir,
            MemberKind::File { .. } | MemberKind::HardLink { .. } => Seen::File,
            MemberKind::Symlink { .. } => Seen::Link,
        };
        if let Some(before) = seen.get(&path) {
            if !(*before == Seen::Dir && now == Seen::Dir) {
                return Err(refuse("appears twice".into()));
            }
        }
        seen.insert(path.clone(), now);
        let m = Member { path, kind, mode, uid, gid };
        let mut counted = CountingReader { inner: &mut entry, count: 0, failed: false };
        let visited = if matches!(m.kind, MemberKind::File { .. }) {
            visit(&m, &mut counted)
        } else {
            visit(&m, &mut io::empty())
        };
        if let Err(source) = visited {
            // An error the package's own stream raised (damage, a bomb) is the package's.
            return Err(if counted.failed {
                DebError::Read { member: member.to_string(), source }
            } else {
                DebError::Visit { path: m.path.to_string(), source }
            });
        }
        io::copy(&mut counted, &mut io::sink()).map_err(read_err(member))?;
        if counted.count != declared {
            return Err(refuse(format!(
                "declares {declared} bytes, but the archive ends after {}",
                counted.count
            )));
        }
    }
    drain(archive.into_inner(), member)
}

/// Counts a member's bytes, and remembers whether reading them failed.
struct CountingReader<R> {
    inner: R,
    count: u64,
    failed: bool,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf).inspect_err(|_| self.failed = true)?;
        self.count += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests;
