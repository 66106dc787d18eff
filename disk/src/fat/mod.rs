//! A FAT filesystem for the EFI System Partition, written from a [`Tree`] without tools or root.
//!
//! Type and cluster size follow the Microsoft FAT specification (fatgen103): FAT32 whenever the
//! volume can hold the 65525 clusters FAT32 needs (over 66600 sectors, about 33 MiB), with its
//! size table (512-byte clusters up to 260 MiB, 4 KiB up to 8 GiB, then 8, 16 and 32 KiB), as
//! UEFI asks ESPs to be FAT32 and mkfs.fat picks the same clusters; below that FAT16 with 1 or
//! 2 KiB clusters, and FAT12 for volumes under 4.1 MiB. The type is then the one the cluster
//! count implies, as every reader decides it.
//!
//! Layout: reserved sectors (boot sector; for FAT32 also FSInfo at 1 and their backups at 6 and
//! 7), two FATs, the fixed root directory (FAT12/16), then clusters allocated contiguously in
//! path order (the FAT32 root first), so the image is written front to back in one pass. The
//! data area starts on a cluster-size boundary. Names get VFAT long entries unless they are
//! upper-case 8.3 names already; short names are ASCII, with `~N` tails given in name order.
//! Every timestamp is the epoch (clamped into 1980..2107), and the volume id is the caller's.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{self, Write};

use kiln_tree::host_file::{self, HostFileError, StreamError};
use kiln_tree::image_path::ImagePath;
use kiln_tree::tree::{Content, Entry, EntryKind, Tree};
use kiln_tree::Epoch;

mod format;

use format::{
    checksum, fat12_pair, fat16_entry, fat32_entry, media_entry, BootSector, FatType, FsInfo,
    LongEntry, ShortEntry, Stamp, ATTR_ARCHIVE, ATTR_DIR, ATTR_VOLUME_ID, BACKUP_BOOT_SECTOR,
    DIRENT_SIZE, FSINFO_SECTOR, LFN_UNITS, NUM_FATS, SECTOR,
};

const FAT12_MAX_CLUSTERS: u64 = 4084;
const FAT16_MAX_CLUSTERS: u64 = 65524;
/// Smallest volume accepted: room for a FAT12 layout with some clusters.
const MIN_SECTORS: u64 = 128;
/// Directories hold at most 65536 entries of 32 bytes (the spec's 2 MiB limit).
const MAX_DIR_ENTRIES: u64 = 65536;
/// Root directory entries on FAT12/16 unless the root needs more.
const ROOT_ENTRIES: u64 = 512;
/// Punctuation allowed in short names besides A-Z and 0-9.
const SHORT_PUNCT: &str = "$%'-_@~`!(){}^#&";
static ZEROS: [u8; 65536] = [0; 65536];

/// Why an ESP image could not be written.
#[derive(Debug, thiserror::Error)]
pub enum FatError {
    #[error("{path} is a {kind}; the ESP holds only directories and regular files")]
    Unsupported { path: ImagePath, kind: &'static str },
    #[error("{path} is {size} bytes; FAT stores at most 4 GiB - 1 per file")]
    FileTooLarge { path: ImagePath, size: u64 },
    #[error("{path}: FAT cannot hold this name: {why}")]
    BadName { path: ImagePath, why: String },
    #[error("{path} and {other} differ only in case, which FAT treats as one name")]
    CaseClash { path: ImagePath, other: ImagePath },
    #[error("directory {path} needs {entries} directory entries; FAT allows {max}")]
    DirTooLarge { path: ImagePath, entries: u64, max: u64 },
    #[error("volume label {label:?}: {why}")]
    BadLabel { label: String, why: &'static str },
    #[error(
        "the ESP size {size} bytes is not a FAT volume size: it must be a multiple of 512 \
         between 64 KiB and 2 TiB"
    )]
    BadSize { size: u64 },
    #[error("the ESP content needs {needed} bytes, the ESP has {size}")]
    NoSpace { needed: u64, size: u64 },
    #[error("{path}")]
    Host {
        path: ImagePath,
        #[source]
        source: HostFileError,
    },
    #[error("writing the FAT image")]
    Write(#[source] io::Error),
}

/// Where everything lies, in sectors.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    fat_type: FatType,
    total: u64,
    per_cluster: u64,
    reserved: u64,
    fat_sectors: u64,
    /// Fixed root directory entries (0 on FAT32).
    root_entries: u64,
    clusters: u64,
}

impl Geometry {
    fn cluster_bytes(&self) -> u64 {
        self.per_cluster * SECTOR
    }

    fn root_sectors(&self) -> u64 {
        self.root_entries * DIRENT_SIZE as u64 / SECTOR
    }

    fn data_start(&self) -> u64 {
        self.reserved + NUM_FATS * self.fat_sectors + self.root_sectors()
    }
}

/// fatgen103's cluster-size tables: up to this many volume sectors, this many sectors per
/// cluster (0: the type does not suit the volume).
const FAT32_TABLE: [(u64, u64); 6] = [
    (66_600, 0),
    (532_480, 1),
    (16_777_216, 8),
    (33_554_432, 16),
    (67_108_864, 32),
    (u64::MAX, 64),
];
const FAT16_TABLE: [(u64, u64); 8] = [
    (8_400, 0),
    (32_680, 2),
    (262_144, 4),
    (524_288, 8),
    (1_048_576, 16),
    (2_097_152, 32),
    (4_194_304, 64),
    (u64::MAX, 0),
];

/// Sectors per cluster for a volume of `total` sectors by one of the tables.
fn per_cluster(table: &[(u64, u64)], total: u64) -> Option<u64> {
    table.iter().find(|(max, _)| total <= *max).map(|row| row.1).filter(|&n| n > 0)
}

/// The smallest FAT that covers the clusters it leaves room for, with the data area aligned
/// to the cluster size (the reserved area grows to pad).
fn layout(fat_type: FatType, total: u64, per_cluster: u64, root_entries: u64) -> Geometry {
    let base_reserved = if fat_type == FatType::Fat32 { 32 } else { 1 };
    let root_sectors = root_entries * DIRENT_SIZE as u64 / SECTOR;
    let mut fat_sectors = 1;
    loop {
        let data_start =
            (base_reserved + NUM_FATS * fat_sectors + root_sectors).next_multiple_of(per_cluster);
        let clusters = total.saturating_sub(data_start) / per_cluster;
        // Both FATs shrink the data area, so this only grows until it covers what is left.
        let need = ((clusters + 2) * fat_type.bits()).div_ceil(8).div_ceil(SECTOR);
        if need <= fat_sectors {
            return Geometry {
                fat_type,
                total,
                per_cluster,
                reserved: data_start - NUM_FATS * fat_sectors - root_sectors,
                fat_sectors,
                root_entries,
                clusters,
            };
        }
        fat_sectors = need;
    }
}

/// Picks the FAT type and cluster size for a volume of `size` bytes whose root directory needs
/// `root_slots` entries.
fn choose_geometry(size: u64, root_slots: u64) -> Result<Geometry, FatError> {
    let total = size / SECTOR;
    if !size.is_multiple_of(SECTOR) || total < MIN_SECTORS || total > u64::from(u32::MAX) {
        return Err(FatError::BadSize { size });
    }
    if let Some(n) = per_cluster(&FAT32_TABLE, total) {
        let g = layout(FatType::Fat32, total, n, 0);
        if g.clusters > FAT16_MAX_CLUSTERS {
            return Ok(g);
        }
    }
    let root_entries = ROOT_ENTRIES.max(root_slots.next_multiple_of(SECTOR / DIRENT_SIZE as u64));
    if let Some(n) = per_cluster(&FAT16_TABLE, total) {
        let g = layout(FatType::Fat16, total, n, root_entries);
        if (FAT12_MAX_CLUSTERS + 1..=FAT16_MAX_CLUSTERS).contains(&g.clusters) {
            return Ok(g);
        }
    }
    (0..=6)
        .map(|shift| layout(FatType::Fat12, total, 1 << shift, root_entries))
        .find(|g| g.clusters <= FAT12_MAX_CLUSTERS)
        .ok_or(FatError::BadSize { size })
}

/// One directory or file of the ESP.
struct Node<'a> {
    path: ImagePath,
    /// `None` for directories.
    content: Option<&'a Content>,
    parent: usize,
    children: Vec<usize>,
    /// The name as UTF-16, stored in long entries when `long` is set.
    units: Vec<u16>,
    long: bool,
    short: [u8; 11],
    /// Content bytes, or directory entries × 32.
    size: u64,
    first: u64,
    clusters: u64,
}

/// Writes `tree` as a FAT filesystem of `size` bytes to `out`.
///
/// `tree` holds only directories and regular files (hard links count as copies), paths relative
/// to the ESP root; `size` is the partition size in bytes (multiple of 512).
pub fn write_fat<W: Write>(
    tree: &Tree,
    size: u64,
    epoch: Epoch,
    volume_id: u32,
    label: &str,
    out: &mut W,
) -> Result<(), FatError> {
    let label = label_bytes(label)?;
    let mut nodes = collect(tree)?;
    for dir in 0..nodes.len() {
        if nodes[dir].content.is_none() {
            name_children(&mut nodes, dir)?;
        }
    }
    for dir in 0..nodes.len() {
        if nodes[dir].content.is_none() {
            let fixed = if dir == 0 { u64::from(label.is_some()) } else { 2 };
            let children = &nodes[dir].children;
            let entries = fixed + children.iter().map(|&c| slots(&nodes[c])).sum::<u64>();
            if entries > MAX_DIR_ENTRIES {
                let path = nodes[dir].path.clone();
                return Err(FatError::DirTooLarge { path, entries, max: MAX_DIR_ENTRIES });
            }
            nodes[dir].size = entries * DIRENT_SIZE as u64;
        }
    }
    let root_entries = nodes[0].size / DIRENT_SIZE as u64;
    let g = choose_geometry(size, root_entries)?;
    // The FAT12/16 root's entry count is a 16-bit field, in whole sectors.
    let fixed_root_max = u64::from(u16::MAX) & !15;
    if g.fat_type != FatType::Fat32 && root_entries > fixed_root_max {
        let (path, max) = (ImagePath::root(), fixed_root_max);
        return Err(FatError::DirTooLarge { path, entries: root_entries, max });
    }

    // Clusters in path order; the FAT12/16 root lives in its fixed region instead.
    let mut next = 2;
    for (i, node) in nodes.iter_mut().enumerate() {
        if i == 0 && g.fat_type != FatType::Fat32 {
            continue;
        }
        node.clusters = node.size.div_ceil(g.cluster_bytes());
        if node.content.is_none() {
            node.clusters = node.clusters.max(1);
        }
        if node.clusters > 0 {
            node.first = next;
            next += node.clusters;
        }
    }
    let used = next - 2;
    if used > g.clusters {
        let needed = g.data_start() * SECTOR + used * g.cluster_bytes();
        return Err(FatError::NoSpace { needed, size });
    }

    let stamp = Stamp::of(epoch);
    let mut out = Out { inner: out, written: 0 };
    let boot = boot_sector(&g, volume_id, label.unwrap_or(*b"NO NAME    "));
    out.write(&boot)?;
    if g.fat_type == FatType::Fat32 {
        let free_count = (g.clusters - used) as u32;
        let next_free = if used < g.clusters { next as u32 } else { 0xFFFF_FFFF };
        let info = FsInfo { free_count, next_free }.encode();
        out.write(&info)?;
        out.zeros(u64::from(BACKUP_BOOT_SECTOR - FSINFO_SECTOR - 1) * SECTOR)?;
        out.write(&boot)?;
        out.write(&info)?;
    }
    out.zeros(g.reserved * SECTOR - out.written)?;
    let ends: Vec<u64> =
        nodes.iter().filter(|n| n.clusters > 0).map(|n| n.first + n.clusters - 1).collect();
    for _ in 0..NUM_FATS {
        write_table(&mut out, &g, &ends)?;
    }
    if g.fat_type != FatType::Fat32 {
        let root = dir_bytes(&nodes, 0, label, stamp);
        out.write(&root)?;
        out.zeros(g.root_sectors() * SECTOR - root.len() as u64)?;
    }
    for (i, node) in nodes.iter().enumerate() {
        if node.clusters == 0 {
            continue;
        }
        match node.content {
            None => out.write(&dir_bytes(&nodes, i, label, stamp))?,
            Some(Content::Bytes(bytes)) => out.write(bytes)?,
            Some(Content::Host(host)) => {
                host_file::stream(host, |b| out.write_io(b)).map_err(|e| match e {
                    StreamError::Host(source) => FatError::Host { path: node.path.clone(), source },
                    StreamError::Sink(e) => FatError::Write(e),
                })?;
            }
        }
        out.zeros(node.clusters * g.cluster_bytes() - node.size)?;
    }
    out.zeros(g.total * SECTOR - out.written)?;
    out.inner.flush().map_err(FatError::Write)
}

/// Every entry of `tree` as a node, the root first and each directory's children in name order.
fn collect(tree: &Tree) -> Result<Vec<Node<'_>>, FatError> {
    let mut nodes = vec![Node {
        path: ImagePath::root(),
        content: None,
        parent: 0,
        children: Vec::new(),
        units: Vec::new(),
        long: false,
        short: [b' '; 11],
        size: 0,
        first: 0,
        clusters: 0,
    }];
    let mut index: HashMap<&ImagePath, usize> = HashMap::new();
    for (path, entry) in tree.iter() {
        let content = match &entry.kind {
            EntryKind::Dir => None,
            EntryKind::File(content) => Some(content),
            EntryKind::HardLink(target) => match tree.get(target) {
                Some(Entry { kind: EntryKind::File(content), .. }) => Some(content),
                _ => return Err(FatError::Unsupported { path: path.clone(), kind: "hard link" }),
            },
            EntryKind::Symlink(_) => {
                return Err(FatError::Unsupported { path: path.clone(), kind: "symbolic link" })
            }
            EntryKind::Device(_) => {
                return Err(FatError::Unsupported {
                    path: path.clone(),
                    kind: "device node or FIFO",
                })
            }
        };
        let size = content.map_or(0, Content::size);
        if size > u64::from(u32::MAX) {
            return Err(FatError::FileTooLarge { path: path.clone(), size });
        }
        let name = path.as_str().rsplit('/').next().unwrap_or_default();
        let units = check_name(path, name)?;
        // Tree creates every parent before its children, so only the root is missing here.
        let parent = path.parent().and_then(|p| index.get(&p).copied()).unwrap_or(0);
        let i = nodes.len();
        nodes[parent].children.push(i);
        index.insert(path, i);
        nodes.push(Node {
            path: path.clone(),
            content,
            parent,
            children: Vec::new(),
            units,
            long: false,
            short: [b' '; 11],
            size,
            first: 0,
            clusters: 0,
        });
    }
    Ok(nodes)
}

/// The name's UTF-16 units, or why FAT (as Windows and Linux's vfat read it) cannot hold it.
fn check_name(path: &ImagePath, name: &str) -> Result<Vec<u16>, FatError> {
    let bad = |why: String| FatError::BadName { path: path.clone(), why };
    if let Some(c) = name.chars().find(|&c| c < ' ' || "\"*/:<>?\\|".contains(c)) {
        return Err(bad(format!("it contains {c:?}")));
    }
    if name.ends_with(['.', ' ']) {
        return Err(bad("it ends with a dot or a space, which FAT drops".into()));
    }
    let units: Vec<u16> = name.encode_utf16().collect();
    if units.len() > 255 {
        return Err(bad(format!("it is {} UTF-16 units long; FAT allows 255", units.len())));
    }
    Ok(units)
}

/// Upper case one character at a time (as FAT's case-insensitive names compare), keeping
/// characters whose upper case is longer than one character.
fn upper(name: &str) -> String {
    name.chars()
        .map(|c| {
            let mut up = c.to_uppercase();
            match (up.next(), up.next()) {
                (Some(u), None) => u,
                _ => c,
            }
        })
        .collect()
}

/// fatgen103's basis name: upper case, spaces and leading dots dropped, up to 8 characters
/// before the first dot and 3 after the last, anything else ASCII short names cannot hold
/// as `_`. Returns the base, the extension, and whether the name is exactly this 8.3 name.
fn basis(upper_name: &str) -> (String, String, bool) {
    let kept: String = upper_name.chars().filter(|&c| c != ' ').collect();
    let kept = kept.trim_start_matches('.');
    let short_char = |c: char| {
        if c.is_ascii_uppercase() || c.is_ascii_digit() || SHORT_PUNCT.contains(c) {
            c
        } else {
            '_'
        }
    };
    let (head, ext) = match kept.rfind('.') {
        Some(dot) => (kept.split('.').next().unwrap_or_default(), &kept[dot + 1..]),
        None => (kept, ""),
    };
    let base: String = head.chars().take(8).map(short_char).collect();
    let ext: String = ext.chars().take(3).map(short_char).collect();
    let exact = if ext.is_empty() { base.clone() } else { format!("{base}.{ext}") };
    let fits = exact == upper_name;
    (base, ext, fits)
}

/// Checks a directory's names and gives each child its short name and long-name flag.
fn name_children(nodes: &mut [Node], dir: usize) -> Result<(), FatError> {
    let children = nodes[dir].children.clone();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut bases = Vec::with_capacity(children.len());
    for &c in &children {
        let name = String::from_utf16_lossy(&nodes[c].units);
        let up = upper(&name);
        if let Some(&other) = seen.get(&up) {
            let (path, other) = (nodes[c].path.clone(), nodes[other].path.clone());
            return Err(FatError::CaseClash { path, other });
        }
        bases.push(basis(&up));
        seen.insert(up, c);
    }
    // Names that are 8.3 already keep them; the others take the first free `~N` in name order.
    let mut used: BTreeSet<[u8; 11]> =
        bases.iter().filter(|b| b.2).map(|(base, ext, _)| pack(base, ext)).collect();
    for (&c, (base, ext, fits)) in children.iter().zip(&bases) {
        let short = if *fits {
            pack(base, ext)
        } else {
            let mut n = 1u32;
            loop {
                let tail = format!("~{n}");
                let keep = base.len().min(8 - tail.len());
                let candidate = pack(&format!("{}{tail}", &base[..keep]), ext);
                if used.insert(candidate) {
                    break candidate;
                }
                n += 1;
            }
        };
        let node = &mut nodes[c];
        node.short = short;
        node.long = String::from_utf16_lossy(&node.units) != display(&short);
    }
    Ok(())
}

/// Base and extension as the 11 space-padded bytes of a directory entry.
fn pack(base: &str, ext: &str) -> [u8; 11] {
    let mut out = [b' '; 11];
    for (slot, b) in out[..8].iter_mut().zip(base.bytes()) {
        *slot = b;
    }
    for (slot, b) in out[8..].iter_mut().zip(ext.bytes()) {
        *slot = b;
    }
    out
}

/// A short name as readers show it (`NAME.EXT`).
fn display(short: &[u8; 11]) -> String {
    let base = String::from_utf8_lossy(&short[..8]).trim_end().to_string();
    let ext = String::from_utf8_lossy(&short[8..]).trim_end().to_string();
    if ext.is_empty() {
        base
    } else {
        format!("{base}.{ext}")
    }
}

/// Directory entries a child takes: its long-name entries and its short entry.
fn slots(node: &Node) -> u64 {
    if node.long {
        1 + node.units.len().div_ceil(LFN_UNITS) as u64
    } else {
        1
    }
}

/// The label as stored (upper case, space padded); `None` for no label.
fn label_bytes(label: &str) -> Result<Option<[u8; 11]>, FatError> {
    if label.is_empty() {
        return Ok(None);
    }
    let bad = |why| FatError::BadLabel { label: label.to_string(), why };
    let up = label.to_ascii_uppercase();
    if !up.chars().all(|c| c == ' ' || c.is_ascii_alphanumeric() || SHORT_PUNCT.contains(c)) {
        return Err(bad("labels hold only ASCII letters, digits, spaces and $%'-_@~`!(){}^#&"));
    }
    if up.len() > 11 {
        return Err(bad("FAT labels hold at most 11 characters"));
    }
    if label.starts_with(' ') {
        return Err(bad("a label cannot start with a space"));
    }
    Ok(Some(pack(&up[..up.len().min(8)], &up[up.len().min(8)..])))
}

/// Long-name entries for `units`, last part first as they are stored.
fn push_long(out: &mut Vec<u8>, units: &[u16], short: &[u8; 11]) {
    let sum = checksum(short);
    let count = units.len().div_ceil(LFN_UNITS);
    for ord in (1..=count).rev() {
        let mut part = [0xFFFFu16; LFN_UNITS];
        let chunk = &units[(ord - 1) * LFN_UNITS..units.len().min(ord * LFN_UNITS)];
        part[..chunk.len()].copy_from_slice(chunk);
        if chunk.len() < LFN_UNITS {
            part[chunk.len()] = 0;
        }
        let entry = LongEntry { ord: ord as u8, last: ord == count, units: part, checksum: sum };
        out.extend_from_slice(&entry.encode());
    }
}

/// One short directory entry.
fn short_entry(name: &[u8; 11], attr: u8, cluster: u64, size: u64, stamp: Stamp) -> [u8; 32] {
    let (first_cluster, size) = (cluster as u32, size as u32);
    ShortEntry { name, attr, first_cluster, size, stamp }.encode()
}

/// The entries of directory `dir`: label or `.` and `..`, then each child in name order.
fn dir_bytes(nodes: &[Node], dir: usize, label: Option<[u8; 11]>, stamp: Stamp) -> Vec<u8> {
    let node = &nodes[dir];
    let mut out = Vec::with_capacity(node.size as usize);
    if dir == 0 {
        if let Some(label) = label {
            out.extend_from_slice(&short_entry(&label, ATTR_VOLUME_ID, 0, 0, stamp));
        }
    } else {
        let parent = if node.parent == 0 { 0 } else { nodes[node.parent].first };
        out.extend_from_slice(&short_entry(b".          ", ATTR_DIR, node.first, 0, stamp));
        out.extend_from_slice(&short_entry(b"..         ", ATTR_DIR, parent, 0, stamp));
    }
    for &c in &node.children {
        let child = &nodes[c];
        if child.long {
            push_long(&mut out, &child.units, &child.short);
        }
        let (attr, size) = match child.content {
            None => (ATTR_DIR, 0),
            Some(_) => (ATTR_ARCHIVE, child.size),
        };
        out.extend_from_slice(&short_entry(&child.short, attr, child.first, size, stamp));
    }
    out
}

/// The boot sector of a volume laid out as `g`.
fn boot_sector(g: &Geometry, volume_id: u32, label: [u8; 11]) -> [u8; 512] {
    BootSector {
        fat_type: g.fat_type,
        sectors_per_cluster: g.per_cluster as u8,
        reserved_sectors: g.reserved as u16,
        root_entries: g.root_entries as u16,
        total_sectors: g.total as u32,
        fat_sectors: g.fat_sectors as u32,
        // CHS geometry means nothing here, but mtools refuses a volume that is not a whole
        // number of tracks: use the largest power of two up to 32 that divides it, and 64
        // heads.
        sectors_per_track: 1u16 << g.total.trailing_zeros().min(5),
        heads: 64,
        volume_id,
        label,
    }
    .encode()
}

/// One FAT: the media and clean marks, a chain through each node's contiguous clusters
/// (`ends` holds each chain's last cluster, ascending), then free entries.
fn write_table<W: Write>(out: &mut Out<W>, g: &Geometry, ends: &[u64]) -> Result<(), FatError> {
    let eoc = g.fat_type.eoc();
    let first_free = ends.last().map_or(2, |&e| e + 1);
    let mut ends = ends.iter().peekable();
    let mut value = |cluster: u64| -> u32 {
        match cluster {
            0 => media_entry(g.fat_type),
            1 => eoc,
            c if c >= first_free => 0,
            c if ends.next_if_eq(&&c).is_some() => eoc,
            c => c as u32 + 1,
        }
    };
    let mut buf = Vec::with_capacity(ZEROS.len() + 8);
    let mut table_bytes = 0;
    let mut cluster = 0;
    while cluster < first_free {
        match g.fat_type {
            FatType::Fat12 => {
                let (a, b) = (value(cluster), value(cluster + 1));
                buf.extend_from_slice(&fat12_pair(a, b));
                cluster += 2;
            }
            FatType::Fat16 => {
                buf.extend_from_slice(&fat16_entry(value(cluster)));
                cluster += 1;
            }
            FatType::Fat32 => {
                buf.extend_from_slice(&fat32_entry(value(cluster)));
                cluster += 1;
            }
        }
        if buf.len() >= ZEROS.len() || cluster >= first_free {
            out.write(&buf)?;
            table_bytes += buf.len() as u64;
            buf.clear();
        }
    }
    out.zeros(g.fat_sectors * SECTOR - table_bytes)
}

/// The output, counting what was written so padding can be computed.
struct Out<'w, W> {
    inner: &'w mut W,
    written: u64,
}

impl<W: Write> Out<'_, W> {
    fn write(&mut self, bytes: &[u8]) -> Result<(), FatError> {
        self.write_io(bytes).map_err(FatError::Write)
    }

    fn write_io(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.inner.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn zeros(&mut self, mut n: u64) -> Result<(), FatError> {
        while n > 0 {
            let chunk = n.min(ZEROS.len() as u64);
            self.write(&ZEROS[..chunk as usize])?;
            n -= chunk;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_tree::tree::Meta;

    fn names(list: &[&str]) -> Vec<(String, bool)> {
        let mut tree = Tree::new();
        for name in list {
            let entry = Entry { kind: EntryKind::Dir, meta: Meta::root(0o755) };
            tree.insert(ImagePath::parse(name).unwrap(), entry).unwrap();
        }
        let mut nodes = collect(&tree).unwrap();
        name_children(&mut nodes, 0).unwrap();
        nodes[1..].iter().map(|n| (display(&n.short), n.long)).collect()
    }

    #[test]
    fn short_names_follow_the_basis_rules_with_tails_in_name_order() {
        let got = names(&[
            "EFI",
            "README.TXT",
            "loader",
            "kiln-linux-6.1.conf",
            "kiln-linux-6.2.conf",
            "KILN-L~1.CON",
            ".hidden",
            "a+b;c",
            "été ☃.txt",
            "x.tar.gz",
        ]);
        // Tree order is bytewise: upper case first.
        let want = [
            (".hidden", "HIDDEN~1", true),
            ("EFI", "EFI", false),
            ("KILN-L~1.CON", "KILN-L~1.CON", false),
            ("README.TXT", "README.TXT", false),
            ("a+b;c", "A_B_C~1", true),
            ("kiln-linux-6.1.conf", "KILN-L~2.CON", true),
            ("kiln-linux-6.2.conf", "KILN-L~3.CON", true),
            ("loader", "LOADER", true),
            ("x.tar.gz", "X~1.GZ", true),
            ("été ☃.txt", "_T__~1.TXT", true),
        ];
        let want: Vec<_> = want.iter().map(|(_, s, l)| (s.to_string(), *l)).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn long_entries_carry_the_short_name_checksum() {
        // fatgen103's algorithm by hand for "A~1        ".
        let short = *b"A~1        ";
        let mut sum = 0u8;
        for b in short {
            sum = (if sum & 1 == 1 { 0x80u8 } else { 0 }).wrapping_add(sum >> 1).wrapping_add(b);
        }
        assert_eq!(checksum(&short), sum);
        let units: Vec<u16> = "abcdefghijklmn".encode_utf16().collect();
        let mut out = Vec::new();
        push_long(&mut out, &units, &short);
        assert_eq!(out.len(), 64);
        assert_eq!(out[0], 0x42);
        assert_eq!(&out[1..5], &[b'n', 0, 0, 0], "the last part ends in a NUL unit");
        assert_eq!(&out[5..7], &[0xFF, 0xFF], "then 0xFFFF padding");
        assert_eq!(out[32], 0x01);
        assert_eq!((out[11], out[13], out[32 + 13]), (0x0F, sum, sum));
    }

    #[test]
    fn timestamps_are_utc_and_clamped() {
        let s = Stamp::of(Epoch::new(1_700_000_001).unwrap()); // 2023-11-14T22:13:21Z
        assert_eq!(s.date, ((2023 - 1980) << 9) | (11 << 5) | 14);
        assert_eq!(s.time, (22 << 11) | (13 << 5) | 10);
        assert_eq!(s.tenths, 100);
        let leap = Stamp::of(Epoch::new(951_782_400).unwrap()); // 2000-02-29
        assert_eq!(leap.date, (20 << 9) | (2 << 5) | 29);
        assert_eq!(Stamp::of(Epoch::new(0).unwrap()).date, (1 << 5) | 1);
        let last = Stamp::of(Epoch::MAX);
        assert_eq!(
            (last.date, last.time),
            ((127 << 9) | (12 << 5) | 31, (23 << 11) | (59 << 5) | 29)
        );
    }

    #[test]
    fn the_type_follows_the_cluster_count() {
        for sectors in [128, 4096, 8400, 8401, 16_384, 32_680, 66_600, 66_601, 131_072, 1_228_800] {
            let g = choose_geometry(sectors * SECTOR, 3).unwrap();
            let want = if g.clusters <= FAT12_MAX_CLUSTERS {
                FatType::Fat12
            } else if g.clusters <= FAT16_MAX_CLUSTERS {
                FatType::Fat16
            } else {
                FatType::Fat32
            };
            assert_eq!(g.fat_type, want, "{sectors} sectors");
            assert!(g.fat_sectors * SECTOR * 8 / g.fat_type.bits() >= g.clusters + 2);
            assert!(g.data_start() + g.clusters * g.per_cluster <= sectors);
            assert_eq!(g.data_start() % g.per_cluster, 0);
        }
        assert_eq!(choose_geometry(66_601 * SECTOR, 3).unwrap().fat_type, FatType::Fat32);
        assert_eq!(choose_geometry(8_400 * SECTOR, 3).unwrap().fat_type, FatType::Fat12);
        assert_eq!(choose_geometry(600 << 20, 3).unwrap().per_cluster, 8);
    }
}
