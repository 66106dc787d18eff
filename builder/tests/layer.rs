//! The layer writer: tar fields read back by independent readers, compressed bytes that do
//! not depend on the thread count, and pinned golden digests.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use kiln_builder::tar::{write_tar, TarError};
use kiln_builder::{write_layer, LayerError};
use kiln_compress::{compress, Compression, GZIP_CHUNK};
use kiln_oci::Digest;
use kiln_tree::host_file::HostFileError;
use kiln_tree::{Content, Entry, EntryKind, Epoch, HostFile, ImagePath, Meta, Tree};

const EPOCH: Epoch = Epoch::saturating(1_700_000_000);

fn p(s: &str) -> ImagePath {
    ImagePath::parse(s).unwrap()
}

fn meta(mode: u32, uid: u32, gid: u32) -> Meta {
    Meta { mode, uid, gid, xattrs: BTreeMap::new() }
}

fn bytes(b: &[u8]) -> EntryKind {
    EntryKind::File(Content::Bytes(b.into()))
}

/// True when `name` can be run; in CI a missing tool fails the test instead.
fn have_tool(name: &str) -> bool {
    let found = Command::new(name)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        assert!(std::env::var_os("CI").is_none(), "{name} is required in CI");
        eprintln!("skipping: {name} not found (apt-get install {name})");
    }
    found
}

/// Pipes `input` through a command and returns its stdout, asserting success.
fn run_with_stdin(cmd: &mut Command, input: &[u8]) -> Vec<u8> {
    let mut child =
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

const LONG_DIR: &str = "d123456789d123456789d123456789d123456789d123456789d12345678";

/// A tree with every kind of entry and every header feature.
fn feature_tree() -> Tree {
    let mut t = Tree::new();
    let mut ins = |path: &str, kind: EntryKind, meta: Meta| {
        t.insert(p(path), Entry { kind, meta }).unwrap();
    };
    ins("/etc", EntryKind::Dir, meta(0o755, 0, 0));
    ins("/home/user", EntryKind::Dir, meta(0o750, 1000, 1000));
    ins("/usr/bin/su", bytes(b"setuid binary\n"), meta(0o4755, 0, 0));
    ins("/usr/bin/sh", EntryKind::Symlink("busybox".into()), meta(0o777, 0, 0));
    ins("/usr/bin/busybox", bytes(b"#!busybox\n"), meta(0o755, 0, 0));
    ins("/usr/bin/ash", EntryKind::HardLink(p("/usr/bin/busybox")), meta(0o755, 0, 0));
    ins("/home/user/notes", bytes(b"mine\n"), meta(0o600, 1000, 1000));
    // 150 bytes that fit the ustar prefix/name split.
    let split = format!("/{LONG_DIR}/{}", "f".repeat(150 - LONG_DIR.len() - 1));
    assert_eq!(split.len() - 1, 150);
    ins(&split, bytes(b"split"), meta(0o644, 0, 0));
    // 150 bytes in one component: only a PAX path can hold it.
    ins(&format!("/{}", "g".repeat(150)), bytes(b"pax path"), meta(0o644, 0, 0));
    ins("/lnk", EntryKind::Symlink("t".repeat(120)), meta(0o777, 0, 0));
    ins("/ünïcödé-名前", bytes(b"utf-8"), meta(0o644, 0, 0));
    let mut cap = meta(0o755, 0, 0);
    cap.xattrs.insert("security.capability".into(), vec![1, 0, 0, 2, 0x20, 0, 0, 0, 0, 0]);
    cap.xattrs.insert("user.comment".into(), b"a = b, c=d".to_vec());
    ins("/usr/bin/ping", bytes(b"ping"), cap);
    ins("/big-ids", bytes(b""), meta(0o644, 3_000_000, 4_000_000));
    t
}

struct Member {
    path: String,
    kind: u8,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    link: Option<String>,
    data: Vec<u8>,
    xattrs: BTreeMap<String, Vec<u8>>,
}

/// Reads a tar with the `tar` crate, an implementation we did not write.
fn read_back(tar_bytes: &[u8]) -> Vec<Member> {
    let mut archive = tar::Archive::new(tar_bytes);
    let mut out = Vec::new();
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        let h = e.header().clone();
        let mut xattrs = BTreeMap::new();
        if let Some(exts) = e.pax_extensions().unwrap() {
            for ext in exts {
                let ext = ext.unwrap();
                if let Some(name) = ext.key().unwrap().strip_prefix("SCHILY.xattr.") {
                    xattrs.insert(name.to_string(), ext.value_bytes().to_vec());
                }
            }
        }
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        out.push(Member {
            path: String::from_utf8(e.path_bytes().to_vec()).unwrap(),
            kind: h.entry_type().as_byte(),
            mode: h.mode().unwrap(),
            uid: e.header().uid().unwrap(),
            gid: e.header().gid().unwrap(),
            mtime: h.mtime().unwrap(),
            link: e.link_name_bytes().map(|l| String::from_utf8(l.to_vec()).unwrap()),
            data,
            xattrs,
        });
        assert_eq!(h.as_ustar().map(|u| u.magic), Some(*b"ustar\0"));
        assert_eq!(h.username_bytes(), Some(&b""[..]));
        assert_eq!(h.groupname_bytes(), Some(&b""[..]));
    }
    out
}

#[test]
fn tar_fields_read_back_with_the_tar_crate() {
    let tree = feature_tree();
    let tar_bytes = write_tar(&tree, EPOCH, Vec::new()).unwrap();
    assert_eq!(tar_bytes.len() % 512, 0);
    assert!(tar_bytes[tar_bytes.len() - 1024..].iter().all(|b| *b == 0));
    let members = read_back(&tar_bytes);
    let expected: Vec<String> = tree
        .iter()
        .map(|(path, e)| match e.kind {
            EntryKind::Dir => format!("{}/", path.as_str()),
            _ => path.as_str().to_string(),
        })
        .collect();
    let names: Vec<&str> = members.iter().map(|m| m.path.as_str()).collect();
    assert_eq!(names, expected);
    for (m, (_, entry)) in members.iter().zip(tree.iter()) {
        assert_eq!(m.mode, entry.meta.mode, "{}", m.path);
        assert_eq!(m.uid, u64::from(entry.meta.uid), "{}", m.path);
        assert_eq!(m.gid, u64::from(entry.meta.gid), "{}", m.path);
        assert_eq!(m.mtime, EPOCH.unsigned_seconds(), "{}", m.path);
        assert_eq!(m.xattrs, entry.meta.xattrs, "{}", m.path);
        match &entry.kind {
            EntryKind::Dir => assert_eq!(m.kind, b'5'),
            EntryKind::File(Content::Bytes(b)) => {
                assert_eq!(m.kind, b'0');
                assert_eq!(&m.data[..], &b[..], "{}", m.path);
            }
            EntryKind::File(Content::Host(_)) => unreachable!(),
            EntryKind::Symlink(t) => {
                assert_eq!(m.kind, b'2');
                assert_eq!(m.link.as_deref(), Some(t.as_str()));
            }
            EntryKind::HardLink(t) => {
                assert_eq!(m.kind, b'1');
                assert_eq!(m.link.as_deref(), Some(t.as_str()));
            }
            EntryKind::Device(_) => unreachable!("the fixture has no devices"),
        }
    }
    let su = members.iter().find(|m| m.path == "usr/bin/su").unwrap();
    assert_eq!(su.mode, 0o4755);
    // The tree moves a file's content to the first of its names, links point there.
    let busybox = members.iter().find(|m| m.path == "usr/bin/busybox").unwrap();
    assert_eq!((busybox.kind, busybox.link.as_deref()), (b'1', Some("usr/bin/ash")));
    let ping = members.iter().find(|m| m.path == "usr/bin/ping").unwrap();
    assert_eq!(ping.xattrs["security.capability"], [1, 0, 0, 2, 0x20, 0, 0, 0, 0, 0]);
    // PAX headers only where needed: the long component, the long link, the big ids and
    // the xattrs; the 150-byte path that splits and the UTF-8 name need none.
    let pax_headers = count_typeflag(&tar_bytes, b'x');
    assert_eq!(pax_headers, 4);
}

/// Counts headers of one type by walking the raw stream.
fn count_typeflag(tar_bytes: &[u8], flag: u8) -> usize {
    let mut n = 0;
    let mut at = 0;
    while at + 512 <= tar_bytes.len() && tar_bytes[at] != 0 {
        let h = &tar_bytes[at..at + 512];
        let size_field = std::str::from_utf8(&h[124..135]).unwrap();
        let size = u64::from_str_radix(size_field, 8).unwrap() as usize;
        if h[156] == flag {
            n += 1;
        }
        at += 512 + size.div_ceil(512) * 512;
    }
    n
}

#[test]
fn gnu_tar_lists_the_same_fields() {
    if !have_tool("tar") {
        return;
    }
    let tree = feature_tree();
    let tar_bytes = write_tar(&tree, EPOCH, Vec::new()).unwrap();
    let listing = run_with_stdin(
        Command::new("tar")
            .args(["-tvv", "--numeric-owner", "--full-time", "-f", "-"])
            .env("TZ", "UTC"),
        &tar_bytes,
    );
    let listing = String::from_utf8(listing).unwrap();
    let lines: Vec<&str> = listing.lines().collect();
    assert_eq!(lines.len(), tree.len(), "{listing}");
    let line = |suffix: &str| {
        *lines.iter().find(|l| l.ends_with(suffix)).unwrap_or_else(|| panic!("{suffix}\n{listing}"))
    };
    assert!(line(" usr/bin/su").starts_with("-rwsr-xr-x 0/0 "), "{listing}");
    assert!(line(" home/user/").starts_with("drwxr-x--- 1000/1000 "), "{listing}");
    assert!(line(" usr/bin/sh -> busybox").starts_with("lrwxrwxrwx 0/0 "));
    assert!(line(" usr/bin/busybox link to usr/bin/ash").starts_with("hrwxr-xr-x 0/0 "));
    assert!(line(&format!(" lnk -> {}", "t".repeat(120))).starts_with('l'));
    assert!(line(&format!(" {}", "g".repeat(150))).starts_with('-'));
    assert!(line(" ünïcödé-名前").starts_with("-rw-r--r-- 0/0 "));
    assert!(line(" big-ids").starts_with("-rw-r--r-- 3000000/4000000 "));
    assert!(lines.iter().all(|l| l.contains(" 2023-11-14 22:13:20 ")), "{listing}");
}

#[test]
fn same_tree_same_bytes() {
    let a = write_tar(&feature_tree(), EPOCH, Vec::new()).unwrap();
    let b = write_tar(&feature_tree(), EPOCH, Vec::new()).unwrap();
    assert_eq!(a, b);
    let c =
        write_tar(&feature_tree(), Epoch::new(EPOCH.seconds() + 1).unwrap(), Vec::new()).unwrap();
    assert_ne!(a, c);
}

/// Semi-compressible data (words from a small vocabulary, pseudo-randomly chosen).
fn sample(len: usize, seed: u64) -> Vec<u8> {
    const WORDS: [&str; 12] = [
        "kiln ",
        "layer ",
        "oci ",
        "digest ",
        "sha256 ",
        "tar\n",
        "zstd ",
        "gzip ",
        "0x3f ",
        "reproducible ",
        "image ",
        "blob ",
    ];
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if x.is_multiple_of(5) {
            out.extend_from_slice(&x.to_le_bytes()[..3]);
        } else {
            out.extend_from_slice(WORDS[(x >> 32) as usize % WORDS.len()].as_bytes());
        }
    }
    out.truncate(len);
    out
}

fn compressed(c: &Compression, threads: usize, input: &[u8]) -> Vec<u8> {
    compress(c, threads, input, Vec::new()).unwrap()
}

#[test]
fn gzip_bytes_do_not_depend_on_threads_and_round_trip() {
    for len in [0, 100, GZIP_CHUNK, 2 * GZIP_CHUNK, 5 * GZIP_CHUNK + 12345] {
        let input = sample(len, 7);
        let one = compressed(&Compression::GZIP, 1, &input);
        for threads in [2, 3, 8] {
            assert!(one == compressed(&Compression::GZIP, threads, &input), "len {len} x{threads}");
        }
        assert_eq!(&one[..10], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255]);
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&one[..]).read_to_end(&mut back).unwrap();
        assert!(back == input, "flate2 round trip, len {len}");
        let mut back = Vec::new();
        flate2::read::MultiGzDecoder::new(&one[..]).read_to_end(&mut back).unwrap();
        assert!(back == input);
        if have_tool("gzip") {
            run_with_stdin(Command::new("gzip").arg("-t"), &one);
            let back = run_with_stdin(Command::new("gunzip").arg("-c"), &one);
            assert!(back == input, "gunzip round trip, len {len}");
        }
    }
    // Every level libdeflate has gives valid gzip; the highest compresses best.
    let input = sample(3 * GZIP_CHUNK, 9);
    let sizes: Vec<usize> = [0, 1, 12]
        .map(|level| {
            let gz = compressed(&Compression::Gzip { level }, 2, &input);
            let mut back = Vec::new();
            flate2::read::GzDecoder::new(&gz[..]).read_to_end(&mut back).unwrap();
            assert!(back == input, "level {level}");
            gz.len()
        })
        .to_vec();
    assert!(sizes[2] < sizes[1] && sizes[1] < sizes[0], "{sizes:?}");
    assert!(sizes[2] < input.len() / 2, "{sizes:?}");
}

#[test]
fn zstd_bytes_do_not_depend_on_threads_and_round_trip() {
    for len in [0, 100, 5 * GZIP_CHUNK + 12345, 20 * GZIP_CHUNK] {
        let input = sample(len, 11);
        let one = compressed(&Compression::ZSTD, 1, &input);
        for threads in [0, 2, 3, 8] {
            assert!(one == compressed(&Compression::ZSTD, threads, &input), "len {len} x{threads}");
        }
        let back = zstd::stream::decode_all(&one[..]).unwrap();
        assert!(back == input, "zstd round trip, len {len}");
        if have_tool("zstd") {
            run_with_stdin(Command::new("zstd").args(["-t", "-q"]), &one);
            let back = run_with_stdin(Command::new("zstd").args(["-d", "-c", "-q"]), &one);
            assert!(back == input);
        }
    }
}

#[test]
fn compression_records_round_trip_and_refuse_what_cannot_be_reproduced() {
    let gz = serde_json::to_string(&Compression::GZIP).unwrap();
    assert_eq!(gz, r#"{"algorithm":"gzip","level":5,"chunk":1048576}"#);
    let zs = serde_json::to_string(&Compression::ZSTD).unwrap();
    assert_eq!(zs, r#"{"algorithm":"zstd","level":3}"#);
    for c in [Compression::GZIP, Compression::ZSTD, Compression::Gzip { level: 12 }] {
        let back: Compression = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }
    let refused = [
        r#"{"algorithm":"gzip","level":6,"chunk":65536}"#,
        r#"{"algorithm":"gzip","level":13}"#,
        r#"{"algorithm":"zstd","level":0}"#,
        r#"{"algorithm":"zstd","level":3,"chunk":1048576}"#,
        r#"{"algorithm":"xz","level":6}"#,
        r#"{"algorithm":"gzip","level":6,"threads":2}"#,
    ];
    for bad in refused {
        assert!(serde_json::from_str::<Compression>(bad).is_err(), "{bad}");
    }
    assert_eq!(Compression::GZIP.describe(), "gzip/libdeflate level 5 chunk 1MiB");
    assert!(Compression::ZSTD.describe().starts_with("zstd/libzstd 1."));
}

/// A fixed tree for the golden digests: a few files with fixed bytes, one of them noise, so
/// that which parts are stored rather than deflated is pinned too.
fn golden_tree() -> Tree {
    let mut t = Tree::new();
    let mut ins = |path: &str, kind: EntryKind, meta: Meta| {
        t.insert(p(path), Entry { kind, meta }).unwrap();
    };
    ins("/etc/motd", bytes(b"hello\n"), meta(0o644, 0, 0));
    ins("/etc/os-release", bytes(b"ID=kiln\nVERSION_ID=1\n"), meta(0o644, 0, 0));
    ins("/usr/bin/app", bytes(&sample(300_000, 3)), meta(0o755, 0, 0));
    ins("/usr/bin/sh", EntryKind::Symlink("app".into()), meta(0o777, 0, 0));
    // sha256 output is noise: digests of consecutive numbers, back to back.
    let noise: Vec<u8> =
        (0u32..1563).flat_map(|i| *Digest::of(&i.to_le_bytes()).as_bytes()).collect();
    ins("/usr/share/app/data.bin", bytes(&noise), meta(0o644, 0, 0));
    ins("/var/lib/app", EntryKind::Dir, meta(0o750, 1000, 1000));
    t
}

// GOLDEN DIGESTS. If this test fails, the compressor backend/version or the tar format
// changed. That changes every image digest kiln produces and must be a deliberate,
// versioned decision (bump the output-format version and note it), never an accident.
const GOLDEN_DIFF_ID: &str =
    "sha256:5b90d80d30b6e00a7b761de37efd1ed488c1b273f5a8b2997fea16f24533d251";
const GOLDEN_GZIP: &str = "sha256:d2878038e9657021945650170c9674a83123156294e30da8b56826c64f931ec5";
const GOLDEN_ZSTD: &str = "sha256:57848ad2aa224499bf93084300df939432e66bd335fac1f8f94300d9fc440cb8";

#[test]
fn golden_layer_digests() {
    let dir = tempfile::tempdir().unwrap();
    let tree = golden_tree();
    let gz = write_layer(&tree, EPOCH, &Compression::GZIP, 2, dir.path()).unwrap();
    let zs = write_layer(&tree, EPOCH, &Compression::ZSTD, 2, dir.path()).unwrap();
    println!("diff_id {} gzip {} zstd {}", gz.diff_id, gz.digest, zs.digest);
    assert_eq!(gz.diff_id.to_string(), GOLDEN_DIFF_ID);
    assert_eq!(zs.diff_id.to_string(), GOLDEN_DIFF_ID);
    assert_eq!(gz.digest.to_string(), GOLDEN_GZIP);
    assert_eq!(zs.digest.to_string(), GOLDEN_ZSTD);
}

#[test]
fn layer_blob_matches_its_file_and_threads_do_not_matter() {
    let dir = tempfile::tempdir().unwrap();
    let mut tree = golden_tree();
    let big = sample(3 * GZIP_CHUNK + 777, 5);
    tree.insert(p("/data/big"), Entry { kind: bytes(&big), meta: meta(0o644, 0, 0) }).unwrap();
    for c in [Compression::GZIP, Compression::ZSTD] {
        let blobs: Vec<_> = [1, 2, 3]
            .iter()
            .map(|t| write_layer(&tree, EPOCH, &c, *t, dir.path()).unwrap())
            .collect();
        for b in &blobs[1..] {
            assert_eq!(
                (b.digest, b.diff_id, b.size),
                (blobs[0].digest, blobs[0].diff_id, blobs[0].size)
            );
        }
        let blob = &blobs[0];
        let file = std::fs::read(&blob.path).unwrap();
        assert_eq!(Digest::of(&file), blob.digest);
        assert_eq!(file.len() as u64, blob.size);
        assert_eq!(blob.media_type, c.media_type());
        let tar_bytes = match c {
            Compression::Gzip { .. } => {
                let mut v = Vec::new();
                flate2::read::GzDecoder::new(&file[..]).read_to_end(&mut v).unwrap();
                v
            }
            Compression::Zstd { .. } => zstd::stream::decode_all(&file[..]).unwrap(),
        };
        assert_eq!(Digest::of(&tar_bytes), blob.diff_id);
        assert_eq!(tar_bytes, write_tar(&tree, EPOCH, Vec::new()).unwrap());
    }
    // Only the finished blobs remain: no partial files left behind.
    let names: Vec<_> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

fn host_tree(path: &Path, original: &[u8]) -> Tree {
    let mut t = Tree::new();
    let content = Content::Host(HostFile::new(
        path.to_path_buf(),
        original.len() as u64,
        Digest::of(original),
    ));
    t.insert(p("/opt/input"), Entry { kind: EntryKind::File(content), meta: meta(0o644, 0, 0) })
        .unwrap();
    t
}

#[test]
fn host_files_are_streamed_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let host = dir.path().join("input");
    let original = sample(700_000, 13);
    std::fs::write(&host, &original).unwrap();
    let tree = host_tree(&host, &original);
    let tar_bytes = write_tar(&tree, EPOCH, Vec::new()).unwrap();
    let members = read_back(&tar_bytes);
    assert!(members.last().unwrap().data == original);

    let write = |tree: &Tree| write_layer(tree, EPOCH, &Compression::GZIP, 2, out.path());
    assert!(write(&tree).is_ok());

    std::fs::write(&host, &original[..1000]).unwrap();
    match write(&tree) {
        Err(LayerError::Tar(TarError::Host {
            source: HostFileError::Shorter { host: h, expected, found },
            ..
        })) => {
            assert_eq!((h.as_path(), expected, found), (host.as_path(), 700_000, 1000));
        }
        other => panic!("{other:?}"),
    }
    let mut longer = original.clone();
    longer.push(b'!');
    std::fs::write(&host, &longer).unwrap();
    match write(&tree) {
        Err(LayerError::Tar(TarError::Host {
            source: HostFileError::Longer { host: h, .. },
            ..
        })) => {
            assert_eq!(h, host)
        }
        other => panic!("{other:?}"),
    }
    let mut changed = original.clone();
    changed[123_456] ^= 1;
    std::fs::write(&host, &changed).unwrap();
    let err = write(&tree).unwrap_err();
    match &err {
        LayerError::Tar(TarError::Host {
            source: HostFileError::Changed { host: h, expected, found },
            ..
        }) => {
            assert_eq!(h, &host);
            assert_eq!(*expected, Digest::of(&original));
            assert_eq!(*found, Digest::of(&changed));
        }
        other => panic!("{other:?}"),
    }
    // The changed file's host path is named in the chain of causes.
    let tar = std::error::Error::source(&err).unwrap();
    let message = tar.source().unwrap().to_string();
    assert!(message.contains(host.to_str().unwrap()), "{message}");

    std::fs::remove_file(&host).unwrap();
    std::os::unix::fs::symlink(dir.path().join("elsewhere"), &host).unwrap();
    std::fs::write(dir.path().join("elsewhere"), &original).unwrap();
    assert!(matches!(
        write(&tree),
        Err(LayerError::Tar(TarError::Host { source: HostFileError::NotRegular { .. }, .. }))
    ));
    // Failed layers leave nothing behind except the one that succeeded.
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 1);
}
