//! The root filesystem: an image's layer trees flattened in order, with OCI whiteouts applied.
//!
//! The result is one [`Tree`] that disk writers consume directly, so ownership, modes and
//! link targets come from the image and never from the host. Rules (OCI image spec, "Layer
//! changesets"): a `.wh.NAME` entry deletes `NAME` of the lower layers from its directory,
//! a `.wh..wh..opq` entry hides every lower entry of its directory, an entry replaces a lower
//! one at the same path (a directory over a directory only takes its metadata), and whiteout
//! entries never appear in the result.

use std::collections::{BTreeMap, BTreeSet};

use kiln_tree::image_path::ImagePath;
use kiln_tree::tree::{Entry, EntryKind, Meta, Tree, TreeError};

/// The prefix that marks a whiteout entry.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// The name that makes its directory opaque.
pub const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";

/// Why layers could not be flattened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RootfsError {
    #[error(
        "layer {layer}: whiteout {path} would delete {name:?}, which is not an entry of its \
         directory; a whiteout may only name a sibling, so this layer is refused"
    )]
    WhiteoutEscapes { layer: usize, path: ImagePath, name: String },
    #[error("layer {layer}")]
    Tree {
        layer: usize,
        #[source]
        source: TreeError,
    },
}

/// What one layer entry means to the layers below it.
enum Change<'a> {
    /// Delete this path (and everything under it) from the lower layers.
    Delete(ImagePath),
    /// Hide every lower entry inside this directory.
    Opaque(ImagePath),
    /// Put this entry here.
    Put(&'a ImagePath, &'a Entry),
    /// An aufs-internal `.wh..wh.*` entry other than the opaque marker: ignored.
    Skip,
}

/// Flattens `layers` (bottom first) into one tree with whiteouts applied.
pub fn flatten(layers: &[Tree]) -> Result<Tree, RootfsError> {
    let mut rootfs = Rootfs::default();
    for tree in layers {
        rootfs.push(tree)?;
    }
    rootfs.finish()
}

/// Layers flattened so far, one [`Rootfs::push`] at a time, so that each layer can be given
/// what the layers below it hold (see [`Tree::inherit_implicit`]) before it is pushed.
#[derive(Debug, Default)]
pub struct Rootfs {
    map: BTreeMap<ImagePath, Entry>,
    layers: usize,
}

impl Rootfs {
    /// The metadata of the directory at `path` in the layers pushed so far, if there is one.
    pub fn dir_meta(&self, path: &ImagePath) -> Option<&Meta> {
        match self.map.get(path) {
            Some(Entry { kind: EntryKind::Dir, meta }) => Some(meta),
            _ => None,
        }
    }

    /// Applies the next layer up.
    pub fn push(&mut self, tree: &Tree) -> Result<(), RootfsError> {
        let layer = self.layers;
        self.layers += 1;
        let map = &mut self.map;
        let changes = tree
            .iter()
            .map(|(path, entry)| classify(layer, path, entry))
            .collect::<Result<Vec<_>, _>>()?;
        // Deletions first: they apply to the lower layers only, never to this layer's entries.
        let mut doomed: Vec<ImagePath> = Vec::new();
        for change in &changes {
            match change {
                Change::Delete(path) => doomed.push(path.clone()),
                Change::Opaque(dir) => doomed.extend(children(map, dir)),
                Change::Put(path, entry) => {
                    let both_dirs = entry.kind == EntryKind::Dir
                        && matches!(map.get(*path), Some(Entry { kind: EntryKind::Dir, .. }));
                    if map.contains_key(*path) && !both_dirs {
                        doomed.push((*path).clone());
                    }
                }
                Change::Skip => {}
            }
        }
        remove_all(map, &doomed);
        for change in changes {
            let Change::Put(path, entry) = change else {
                continue;
            };
            match (map.get_mut(path), &entry.kind) {
                // A directory over a directory takes only its metadata, and an implicit one
                // has the lower directory's (see `Tree::inherit_implicit`).
                (Some(lower), EntryKind::Dir) => {
                    if !tree.is_implicit(path) {
                        lower.meta = entry.meta.clone();
                    }
                }
                _ => {
                    map.insert(path.clone(), entry.clone());
                }
            }
        }
        Ok(())
    }

    /// The flattened tree.
    pub fn finish(self) -> Result<Tree, RootfsError> {
        let mut out = Tree::new();
        for (path, entry) in self.map {
            out.insert(path, entry)
                .map_err(|source| RootfsError::Tree { layer: self.layers, source })?;
        }
        Ok(out)
    }
}

/// Reads one entry of layer `layer` as a change to the layers below it.
fn classify<'a>(
    layer: usize,
    path: &'a ImagePath,
    entry: &'a Entry,
) -> Result<Change<'a>, RootfsError> {
    let (dir, name) = match path.as_str().rsplit_once('/') {
        Some((dir, name)) => (dir, name),
        None => ("", path.as_str()),
    };
    let Some(target) = name.strip_prefix(WHITEOUT_PREFIX) else {
        return Ok(Change::Put(path, entry));
    };
    let parent = path.parent().unwrap_or_else(ImagePath::root);
    if name == OPAQUE_WHITEOUT {
        return Ok(Change::Opaque(parent));
    }
    if target.starts_with(WHITEOUT_PREFIX) {
        return Ok(Change::Skip);
    }
    let escapes =
        || RootfsError::WhiteoutEscapes { layer, path: path.clone(), name: target.to_string() };
    if matches!(target, "" | "." | "..") {
        return Err(escapes());
    }
    let full = if dir.is_empty() { target.to_string() } else { format!("{dir}/{target}") };
    let deleted = ImagePath::parse(&full).map_err(|_| escapes())?;
    if deleted.parent().as_ref() != Some(&parent) {
        return Err(escapes());
    }
    Ok(Change::Delete(deleted))
}

/// The direct and indirect children of `dir` present in `map`.
fn children(map: &BTreeMap<ImagePath, Entry>, dir: &ImagePath) -> Vec<ImagePath> {
    if dir.is_root() {
        return map.keys().cloned().collect();
    }
    let prefix = format!("{}/", dir.as_str());
    map.range(dir.clone()..)
        .map(|(k, _)| k)
        .take_while(|k| k.as_str().starts_with(dir.as_str()))
        .filter(|k| k.as_str().starts_with(&prefix))
        .cloned()
        .collect()
}

/// Removes each path with everything under it; a hard link whose file was removed inherits
/// the content (the first remaining link of each group becomes the file).
fn remove_all(map: &mut BTreeMap<ImagePath, Entry>, paths: &[ImagePath]) {
    let mut removed_files: BTreeMap<ImagePath, Entry> = BTreeMap::new();
    for path in paths {
        let mut gone = children(map, path);
        gone.push(path.clone());
        for key in gone {
            if let Some(entry) = map.remove(&key) {
                if matches!(entry.kind, EntryKind::File(_)) {
                    removed_files.insert(key, entry);
                }
            }
        }
    }
    if removed_files.is_empty() {
        return;
    }
    let mut promoted: BTreeMap<ImagePath, ImagePath> = BTreeMap::new();
    let mut seen: BTreeSet<ImagePath> = BTreeSet::new();
    for (path, entry) in map.iter_mut() {
        let EntryKind::HardLink(target) = &entry.kind else {
            continue;
        };
        let Some(file) = removed_files.get(target) else {
            continue;
        };
        let target = target.clone();
        if seen.insert(target.clone()) {
            // Paths iterate in order, so the first link found is the smallest: the new file.
            *entry = file.clone();
            promoted.insert(target, path.clone());
        } else if let Some(new_file) = promoted.get(&target) {
            entry.kind = EntryKind::HardLink(new_file.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use kiln_tree::tree::{Content, Meta};

    fn p(s: &str) -> ImagePath {
        ImagePath::parse(s).unwrap()
    }

    fn file(bytes: &[u8]) -> Entry {
        Entry { kind: EntryKind::File(Content::Bytes(bytes.into())), meta: Meta::root(0o644) }
    }

    fn dir(mode: u32) -> Entry {
        Entry { kind: EntryKind::Dir, meta: Meta::root(mode) }
    }

    fn tree(entries: Vec<(&str, Entry)>) -> Tree {
        let mut t = Tree::new();
        for (path, entry) in entries {
            t.insert(p(path), entry).unwrap();
        }
        t
    }

    fn listing(t: &Tree) -> Vec<String> {
        t.iter()
            .map(|(path, e)| {
                let what = match &e.kind {
                    EntryKind::Dir => format!("dir {:o}", e.meta.mode),
                    EntryKind::File(Content::Bytes(b)) => {
                        format!("file {}", String::from_utf8_lossy(b))
                    }
                    EntryKind::File(Content::Host { .. }) => "host".to_string(),
                    EntryKind::Symlink(t) => format!("-> {t}"),
                    EntryKind::HardLink(t) => format!("link {}", t.as_str()),
                    EntryKind::Device(d) => d.describe(),
                };
                format!("{} {what}", path.as_str())
            })
            .collect()
    }

    #[test]
    fn upper_layers_replace_and_whiteouts_delete() {
        let lower = tree(vec![
            ("/etc", dir(0o755)),
            ("/etc/motd", file(b"old")),
            ("/etc/gone", file(b"x")),
            ("/var/lib/app/state", file(b"s")),
            (
                "/bin/sh",
                Entry { kind: EntryKind::Symlink("busybox".into()), meta: Meta::root(0o777) },
            ),
        ]);
        let upper = tree(vec![
            ("/etc", dir(0o700)),
            ("/etc/motd", file(b"new")),
            ("/etc/.wh.gone", file(b"")),
            ("/var/.wh.lib", file(b"")),
            ("/bin/sh", file(b"real")),
            ("/.wh.nothing-here", file(b"")),
        ]);
        let flat = flatten(&[lower, upper]).unwrap();
        assert_eq!(
            listing(&flat),
            ["bin dir 755", "bin/sh file real", "etc dir 700", "etc/motd file new", "var dir 755"]
        );
    }

    #[test]
    fn opaque_hides_lower_entries_but_keeps_its_own_layer() {
        let lower = tree(vec![("/d/a", file(b"a")), ("/d/sub/b", file(b"b")), ("/dx", file(b"x"))]);
        let upper = tree(vec![("/d/.wh..wh..opq", file(b"")), ("/d/c", file(b"c"))]);
        let flat = flatten(&[lower, upper]).unwrap();
        assert_eq!(listing(&flat), ["d dir 755", "d/c file c", "dx file x"]);
    }

    #[test]
    fn implicit_parents_take_lower_metadata_before_they_are_pushed() {
        let lower = tree(vec![("/srv", dir(0o750)), ("/tmp", dir(0o1777))]);
        let mut upper = tree(vec![("/srv/x", file(b"x")), ("/opt/y", file(b"y"))]);
        let mut rootfs = Rootfs::default();
        rootfs.push(&lower).unwrap();
        upper.inherit_implicit(|p| rootfs.dir_meta(p));
        assert_eq!(listing(&upper), ["opt dir 755", "opt/y file y", "srv dir 750", "srv/x file x"]);
        rootfs.push(&upper).unwrap();
        let flat = rootfs.finish().unwrap();
        assert_eq!(
            listing(&flat),
            ["opt dir 755", "opt/y file y", "srv dir 750", "srv/x file x", "tmp dir 1777"]
        );
    }

    #[test]
    fn removing_a_linked_file_moves_its_content_to_a_link() {
        let link = |t: &str| Entry { kind: EntryKind::HardLink(p(t)), meta: Meta::root(0o644) };
        let lower = tree(vec![("/a", file(b"data")), ("/b", link("/a")), ("/c", link("/a"))]);
        let upper = tree(vec![("/.wh.a", file(b""))]);
        let flat = flatten(&[lower, upper]).unwrap();
        assert_eq!(listing(&flat), ["b file data", "c link b"]);
    }

    #[test]
    fn whiteouts_that_escape_their_directory_are_refused() {
        for name in ["/d/.wh...", "/.wh...", "/d/.wh..", "/d/.wh."] {
            let upper = tree(vec![(name, file(b""))]);
            let err = flatten(&[Tree::new(), upper]).unwrap_err();
            assert!(matches!(err, RootfsError::WhiteoutEscapes { layer: 1, .. }), "{name}: {err}");
            assert!(err.to_string().contains("whiteout"), "{err}");
        }
    }
}
