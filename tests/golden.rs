//! Golden digests: the fixture recipes in `recipes/` build to pinned digests.
//!
//! A failure here means kiln's output bytes changed (tar layout, compressor backend or
//! version, JSON serialisation, a default). That must be a deliberate, versioned decision:
//! bump the output-format version, note it in CHANGELOG.md, and only then update the pins.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use support::{copy_recipes, digest_of, Kiln, Workspace};

// Pinned once the first builds were checked with skopeo and umoci (tests/oci_tools.rs).
// A change here means output bytes changed; that must be deliberate and versioned.

/// recipes/golden.toml (gzip, linux/amd64): the image index digest.
const GOLDEN_GZIP: &str = "sha256:55a70b701315d3cd437d25c1fbf8865045a69395e248a6b0d045409e84f8cb58";
/// recipes/golden.toml: the linux/amd64 image manifest digest.
const GOLDEN_GZIP_AMD64: &str =
    "sha256:3f4b037a0b7c18486d17aa8b58b43a0a9172037c4327a6f89aff9639b407c6b1";
/// recipes/golden-zstd.toml (zstd, linux/amd64 + linux/arm64): the image index digest.
const GOLDEN_ZSTD: &str = "sha256:239fd5bd2d8d8fb85a8e6c267fb738a58a0f9d6813abf476a28f41e92172e05e";
/// recipes/golden-zstd.toml: the per-platform image manifest digests.
const GOLDEN_ZSTD_MANIFESTS: [(&str, &str); 2] = [
    ("linux/amd64", "sha256:291f6a4560192ef7ba8577dd2897f4d74255be430e14caa9fc2e3cdc979d33db"),
    ("linux/arm64", "sha256:a1dac2d02b077542748f2562eff5ba645e0fca60cba3e745aaea4da755450bde"),
];

fn build_fixture(name: &str, extra: &[&str]) -> serde_json::Value {
    let ws = Workspace::new();
    let recipes = copy_recipes(ws.root());
    Kiln::new(&ws.store("store")).build(&recipes.join(name), extra)
}

#[test]
fn golden_gzip_digest_is_pinned() {
    let report = build_fixture("golden.toml", &[]);
    assert_eq!(digest_of(&report), GOLDEN_GZIP, "golden.toml output bytes changed:\n{report:#}");
    assert_eq!(report["name"], "golden");
    assert_eq!(report["tag"], "1.0.0");
    assert_eq!(report["mediaType"], "application/vnd.oci.image.index.v1+json");
    let manifests = report["manifests"].as_array().expect("manifests array");
    assert_eq!(manifests.len(), 1);
    assert_eq!(manifests[0]["platform"], "linux/amd64");
    assert_eq!(manifests[0]["digest"], GOLDEN_GZIP_AMD64);
}

#[test]
fn golden_zstd_digest_is_pinned() {
    let report = build_fixture("golden-zstd.toml", &[]);
    assert_eq!(
        digest_of(&report),
        GOLDEN_ZSTD,
        "golden-zstd.toml output bytes changed:\n{report:#}"
    );
    let manifests: Vec<(&str, &str)> = report["manifests"]
        .as_array()
        .expect("manifests array")
        .iter()
        .map(|m| (m["platform"].as_str().expect("platform"), m["digest"].as_str().expect("digest")))
        .collect();
    assert_eq!(manifests, GOLDEN_ZSTD_MANIFESTS);
}

#[test]
fn golden_digest_does_not_depend_on_threads() {
    let one = build_fixture("golden.toml", &["--threads", "1"]);
    let two = build_fixture("golden-zstd.toml", &["--threads", "1"]);
    assert_eq!(digest_of(&one), GOLDEN_GZIP);
    assert_eq!(digest_of(&two), GOLDEN_ZSTD);
}

/// The disk files `kiln export --disk` writes for recipes/golden.toml with a `[disk]` table
/// (dm-verity, a FAT ESP holding a file of the image, every format), for one root filesystem
/// and ESP size. The raw disk pins the GPT, the ESP, the root and the verity partition
/// together, each other file its own writer (qcow2, VHD, the GCE tar.gz, the initramfs's gzip
/// cpio, the same for every root); each partition is also pinned alone, so a failure names the
/// writer whose bytes moved. The ESP sizes give FAT12 (4 MiB), FAT16 (16 MiB) and FAT32
/// (34 MiB). ext4 roots are made by the host's e2fsprogs: their pins hold for
/// [`GOLDEN_E2FSPROGS`] only.
struct DiskGolden {
    root: &'static str,
    esp_size: &'static str,
    /// Each exported file with its sha256.
    files: [(&'static str, &'static str); 5],
    /// Each GPT partition of `disk.raw`, by name, with the sha256 of its bytes.
    partitions: [(&'static str, &'static str); 3],
}

const GOLDEN_DISKS: [DiskGolden; 4] = [
    DiskGolden {
        root: "erofs",
        esp_size: "4MiB",
        files: [
            ("disk.qcow2", "5e55b91be5a5567b49f591d4acbf468e60cc7a451b23d608b3942008b44a7ba7"),
            ("disk.raw", "50543d56e99858a7f5f24317556c262e5c73ba5655e3fd27a8c2ecb9a8e4c9c9"),
            ("disk.tar.gz", "de80b35c7bfd09d54f634a1cb3aa06d1c697ea835bd4adaf7c8717721a94d0b7"),
            ("disk.vhd", "81988e490e479c6da8847f2bf79f5d93933c70c3db4ed87ad27d7f16ef4124d6"),
            (
                "initramfs.cpio.gz",
                "1b80be84f1cecc6dc29fb5ce2e37c6bd9284556503289c2b6d625712d615091d",
            ),
        ],
        partitions: [
            ("esp", "a19bba1f04e3b417891c04ede0035ee2ec11dd88d58e4847c334b8f54e3c69af"),
            ("root-x86-64", "d45b9494dbd991f2b34514c1aa31a8b92a586a8903949a0cb1404c7e9b723dcd"),
            (
                "root-x86-64-verity",
                "6d4082d70e04c30f272ddc6a20b7e9664de4e924a359121be9157049eb4a1b0e",
            ),
        ],
    },
    DiskGolden {
        root: "squashfs",
        esp_size: "34MiB",
        files: [
            ("disk.qcow2", "28bea4997ce6bc9f628968089767976c8356ca263dbb563a9ab38099b6f1e28d"),
            ("disk.raw", "3067d07bca47fb100c387b81364f039928f436d1eecbe9e026f95a6474e60e9c"),
            ("disk.tar.gz", "e73a99861d80a84e642ff09c7e283144bc53aacdd7769c9d3eb41a18124370b9"),
            ("disk.vhd", "aa6ab8edd35c0e189d534f8e67a8ec1f386f8faa09dad84347a7cf9ed1ada76d"),
            (
                "initramfs.cpio.gz",
                "1b80be84f1cecc6dc29fb5ce2e37c6bd9284556503289c2b6d625712d615091d",
            ),
        ],
        partitions: [
            ("esp", "bdc9630a97d11be104531c30adec714520e375f9d04728c2128372d35facefa9"),
            ("root-x86-64", "93be5eb40b7a696d15de13c5fc9cf9fb4c71052ec2004f0f45086babad755f4d"),
            (
                "root-x86-64-verity",
                "e9dfce1a9290eda01d11afefc9fd3d1af6a7dff4744ad6b665735974cf0adadc",
            ),
        ],
    },
    DiskGolden {
        root: "ext4",
        esp_size: "4MiB",
        files: [
            ("disk.qcow2", "7c19ddb68e28911a5503a6de8f3b7b0523038793e9fb57c0f816ef6de585369c"),
            ("disk.raw", "fc91fa25205b89a3bd699bfccc21065052a94afa369badb250e6545db76502cb"),
            ("disk.tar.gz", "3a4185694081ea2dcbeeb0cc66e516d9a34ec4c09c584b0aeff9fcf6176fa0b1"),
            ("disk.vhd", "d2d2f2c3a36add606c144aa5b509ea6031e09000c8cee0508648408837008203"),
            (
                "initramfs.cpio.gz",
                "1b80be84f1cecc6dc29fb5ce2e37c6bd9284556503289c2b6d625712d615091d",
            ),
        ],
        partitions: [
            ("esp", "a19bba1f04e3b417891c04ede0035ee2ec11dd88d58e4847c334b8f54e3c69af"),
            ("root-x86-64", "7dfe33cb4acebd43b7764a64204e1bd0568a0bca56f30d4425f891321d324426"),
            (
                "root-x86-64-verity",
                "e1a8cc94f8d415fb412604b297b4a659ebd62ed5528addb20e958d8390b6d338",
            ),
        ],
    },
    DiskGolden {
        root: "erofs",
        esp_size: "16MiB",
        files: [
            ("disk.qcow2", "bd639412e2eb9bf73c6d6c4414fb933aa990685a52a2a9cae1af406b281ae776"),
            ("disk.raw", "f35f7b04d2f6b7283bb9d8049f0f2c6d628c8f0150ff167d5ead5bab901b2397"),
            ("disk.tar.gz", "5938f5fdc62ac55e8714a4d082afa9813cdb83de3adb70ec596c1e152bb6404f"),
            ("disk.vhd", "c9b5807b65c45c7006662571186c948f08340873f8ee96877fef721340df8da8"),
            (
                "initramfs.cpio.gz",
                "1b80be84f1cecc6dc29fb5ce2e37c6bd9284556503289c2b6d625712d615091d",
            ),
        ],
        partitions: [
            ("esp", "cac1aa612fe5d78401ef0ed2ee1287e99fbd5616db21eb31acfd4b42b12c6694"),
            ("root-x86-64", "d45b9494dbd991f2b34514c1aa31a8b92a586a8903949a0cb1404c7e9b723dcd"),
            (
                "root-x86-64-verity",
                "6d4082d70e04c30f272ddc6a20b7e9664de4e924a359121be9157049eb4a1b0e",
            ),
        ],
    },
];

/// The e2fsprogs version the ext4 pins were made with (`mke2fs -V`, `debugfs -V`).
const GOLDEN_E2FSPROGS: &str = "1.47.0";

/// The e2fsprogs version a tool reports (`mke2fs 1.47.0 (5-Feb-2023)` on stderr).
fn e2fsprogs_of(tool: &str) -> String {
    let out = Command::new(tool).arg("-V").output().expect("an e2fsprogs tool runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    stderr
        .lines()
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .unwrap_or_else(|| panic!("no version in `{tool} -V`: {stderr}"))
        .to_string()
}

/// Whether the ext4 pins can be checked here; panics naming both versions when this host's
/// e2fsprogs is not the one they hold for.
fn ext4_ready() -> bool {
    if !support::require_tool("mke2fs") || !support::require_tool("debugfs") {
        return false;
    }
    for tool in ["mke2fs", "debugfs"] {
        let host = e2fsprogs_of(tool);
        assert_eq!(
            host, GOLDEN_E2FSPROGS,
            "the ext4 golden digests hold for e2fsprogs {GOLDEN_E2FSPROGS}, and this host's \
             {tool} is e2fsprogs {host}: install e2fsprogs {GOLDEN_E2FSPROGS} to check them"
        );
    }
    true
}

/// Writes recipes/golden.toml with the `[disk]` table of `golden` beside the copied recipes.
fn golden_disk_recipe(recipes: &Path, golden: &DiskGolden) -> PathBuf {
    let recipe = recipes.join(format!("golden-disk-{}-{}.toml", golden.root, golden.esp_size));
    let base = fs::read_to_string(recipes.join("golden.toml")).expect("golden.toml");
    let disk = format!(
        "\n[disk]\nsize = \"96MiB\"\nroot = \"{}\"\nverity = true\n\
         formats = [\"raw\", \"qcow2\", \"vhd\", \"gce\", \"initramfs\"]\n\
         [disk.esp]\nsize = \"{}\"\n\
         files = {{ \"EFI/BOOT/BOOTX64.EFI\" = \"/usr/local/bin/app\" }}\n",
        golden.root, golden.esp_size
    );
    fs::write(&recipe, base + &disk).expect("writing the disk recipe");
    recipe
}

/// Builds `recipe`, exports its disks into `out` and returns each file's sha256, by name.
fn build_and_export(
    kiln: &Kiln,
    recipe: &Path,
    extra: &[&str],
    out: &Path,
) -> Vec<(String, String)> {
    let report = kiln.build(recipe, extra);
    assert_eq!(digest_of(&report), GOLDEN_GZIP, "[disk] changed the image itself");
    kiln.run(&["export", "golden:1.0.0", "--disk", out.to_str().expect("utf-8")]).ok();
    let mut found: Vec<(String, String)> = fs::read_dir(out)
        .expect("exported disks")
        .map(|entry| {
            let path = entry.expect("disk entry").path();
            let name = path.file_name().expect("name").to_string_lossy().into_owned();
            let bytes = fs::read(&path).expect("reading a disk file");
            (name, kiln_oci::Digest::of(&bytes).hex())
        })
        .collect();
    found.sort();
    found
}

/// The sha256 of each partition of a raw GPT disk, by partition name, in table order; read
/// from the primary header and its entries as the UEFI specification lays them out.
fn partition_digests(raw: &Path) -> Vec<(String, String)> {
    const SECTOR: usize = 512;
    let disk = fs::read(raw).expect("reading disk.raw");
    let u32_at = |at: usize| u32::from_le_bytes(disk[at..at + 4].try_into().expect("4 bytes"));
    let u64_at = |at: usize| u64::from_le_bytes(disk[at..at + 8].try_into().expect("8 bytes"));
    let header = SECTOR;
    assert_eq!(&disk[header..header + 8], b"EFI PART", "no GPT header in {}", raw.display());
    let entries = usize::try_from(u64_at(header + 72)).expect("entry LBA") * SECTOR;
    let count = u32_at(header + 80) as usize;
    let size = u32_at(header + 84) as usize;
    (0..count)
        .map(|i| entries + i * size)
        .filter(|&entry| disk[entry..entry + 16].iter().any(|&b| b != 0))
        .map(|entry| {
            let first = usize::try_from(u64_at(entry + 32)).expect("first LBA") * SECTOR;
            let last = usize::try_from(u64_at(entry + 40)).expect("last LBA") * SECTOR;
            let name: Vec<u16> = disk[entry + 56..entry + 128]
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .take_while(|&c| c != 0)
                .collect();
            let bytes = &disk[first..last + SECTOR];
            (String::from_utf16(&name).expect("UTF-16 name"), kiln_oci::Digest::of(bytes).hex())
        })
        .collect()
}

/// Compares what a build exported with the pins of `golden`, partitions first so that a
/// failure names the writer.
fn assert_pinned(golden: &DiskGolden, files: &[(String, String)], out: &Path, conditions: &str) {
    let partitions = partition_digests(&out.join("disk.raw"));
    let pinned: Vec<(String, String)> =
        golden.partitions.iter().map(|(n, d)| (n.to_string(), d.to_string())).collect();
    assert_eq!(
        partitions, pinned,
        "{conditions}: partitions of the {} disk with a {} ESP changed (esp: FAT; root-*: {}; \
         *-verity: dm-verity)",
        golden.root, golden.esp_size, golden.root
    );
    let pinned: Vec<(String, String)> =
        golden.files.iter().map(|(n, d)| (n.to_string(), d.to_string())).collect();
    assert_eq!(
        files, pinned,
        "{conditions}: the {} disk files with a {} ESP changed",
        golden.root, golden.esp_size
    );
}

#[test]
fn golden_disk_digests_are_pinned() {
    for golden in &GOLDEN_DISKS {
        if golden.root == "ext4" && !ext4_ready() {
            continue;
        }
        let ws = Workspace::new();
        let recipes = copy_recipes(ws.root());
        let recipe = golden_disk_recipe(&recipes, golden);
        let kiln = Kiln::new(&ws.store("store"));
        let out = ws.path("disks");
        let files = build_and_export(&kiln, &recipe, &[], &out);
        assert_pinned(golden, &files, &out, "a plain build");
        if golden.root == "ext4" {
            let lock = fs::read_to_string(recipe.with_extension("lock")).expect("the lock");
            assert!(
                lock.contains(&format!("e2fsprogs = \"{GOLDEN_E2FSPROGS}\"")),
                "the lock of an ext4 root records its e2fsprogs:\n{lock}"
            );
        }
    }
}

/// Copies the recipes folder as [`copy_recipes`] does, but creating every file in reverse
/// order, with other permission bits (execute bits kept) and times in 2030, so directory
/// order, inode numbers, modes and times of the inputs all differ from a plain checkout.
fn copy_recipes_shuffled(dest: &Path) -> PathBuf {
    fn files(dir: &Path, out: &mut Vec<PathBuf>) {
        let mut entries: Vec<PathBuf> =
            fs::read_dir(dir).expect("read folder").map(|e| e.expect("entry").path()).collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                files(&path, out);
            } else {
                out.push(path);
            }
        }
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes");
    let target = dest.join("recipes-shuffled");
    let mut all = Vec::new();
    files(&src, &mut all);
    all.reverse();
    for file in &all {
        let rel = file.strip_prefix(&src).expect("under recipes/");
        let to = target.join(rel);
        fs::create_dir_all(to.parent().expect("a parent")).expect("create folders");
        fs::copy(file, &to).expect("copy an input");
        let executable = fs::metadata(file).expect("stat").permissions().mode() & 0o100 != 0;
        let mode = if executable { 0o700 } else { 0o600 };
        fs::set_permissions(&to, fs::Permissions::from_mode(mode)).expect("chmod an input");
    }
    support::sh(
        "find",
        &[
            target.to_str().expect("utf-8"),
            "-exec",
            "touch",
            "-h",
            "-d",
            "2030-12-31 23:59:59",
            "{}",
            "+",
        ],
    );
    target
}

/// `/dev/shm` when it is a tmpfs with room for a build's scratch files (the disks of one
/// build take a few hundred MiB; a container's `/dev/shm` is often 64 MiB).
fn tmpfs_with_room() -> Option<PathBuf> {
    let shm = Path::new("/dev/shm");
    let df = Command::new("df").args(["--output=fstype,avail", "-B1"]).arg(shm).output().ok()?;
    let text = String::from_utf8_lossy(&df.stdout).into_owned();
    let mut fields = text.lines().nth(1)?.split_whitespace();
    let (fstype, avail) = (fields.next()?, fields.next()?.parse::<u64>().ok()?);
    (df.status.success() && fstype == "tmpfs" && avail >= 1 << 30).then(|| shm.to_path_buf())
}

/// The pins hold whatever the environment: each root is built from inputs laid out
/// differently (creation order, modes, times), under another umask, time zone and locale,
/// from another working folder, on one thread, with the scratch files on another file
/// system where there is room (tmpfs, whose directory order differs from a disk's).
#[test]
fn golden_disk_digests_hold_under_varied_conditions() {
    for (golden, umask, tz, locale) in [
        (&GOLDEN_DISKS[0], "077", "Pacific/Kiritimati", "tr_TR.UTF-8"),
        (&GOLDEN_DISKS[1], "000", "America/St_Johns", "C"),
        (&GOLDEN_DISKS[2], "077", "Asia/Kathmandu", "de_DE.UTF-8"),
        (&GOLDEN_DISKS[2], "000", "UTC", "C.UTF-8"),
    ] {
        if golden.root == "ext4" && !ext4_ready() {
            continue;
        }
        let ws = Workspace::new();
        let recipes = copy_recipes_shuffled(ws.root());
        let recipe = golden_disk_recipe(&recipes, golden);
        let scratch = tempfile::Builder::new()
            .prefix("kiln-golden-tmp-")
            .tempdir_in(tmpfs_with_room().as_deref().unwrap_or(ws.root()))
            .expect("a scratch folder");
        let elsewhere = ws.mkdir("elsewhere");
        let kiln = Kiln::new(&ws.store("store"))
            .umask(umask)
            .env("TZ", tz)
            .env("LC_ALL", locale)
            .env("LANG", locale)
            .env("TMPDIR", scratch.path().to_str().expect("utf-8"))
            .cwd(&elsewhere);
        let out = ws.path("disks");
        let files = build_and_export(&kiln, &recipe, &["--threads", "1"], &out);
        let conditions = format!(
            "shuffled inputs, umask {umask}, TZ={tz}, LC_ALL={locale}, one thread, TMPDIR on {}",
            scratch.path().display()
        );
        assert_pinned(golden, &files, &out, &conditions);
    }
}

/// A recipe whose root filesystem reaches the writers' rarer branches: device nodes and a FIFO
/// (from a tarball with `devices = true`), setuid and sticky modes, files of several blocks,
/// a tail smaller than a block, an empty file, a folder of 300 entries, a deep path, a long
/// symlink target and a 255-byte name, hard links; a GPT disk without an ESP.
const RICH_RECIPE: &str = r#"epoch = 1700000000

[image]
name = "rich"
version = "1.0.0"

[[layer]]
name = "special"
tarballs = [{ src = "special.tar", dest = "/", devices = true }]

[[layer]]
name = "tree"
trees = [{ src = "tree", dest = "/srv" }]

[disk]
size = "64MiB"
root = "ROOT"
verity = true
formats = ["raw", "initramfs"]
"#;

/// The pins of [`RICH_RECIPE`] for one root filesystem.
struct RichGolden {
    root: &'static str,
    /// Each partition of `disk.raw`, by name, with its sha256.
    partitions: [(&'static str, &'static str); 2],
    /// Each exported file with its sha256.
    files: [(&'static str, &'static str); 2],
}

const RICH_DISKS: [RichGolden; 3] = [
    RichGolden {
        root: "erofs",
        partitions: [
            ("root-x86-64", "cf1221f62c8be98f13226e84c033453c0fe8e2001bf5bedfac495d55318e03d7"),
            (
                "root-x86-64-verity",
                "bfb69a3d91e8ebb7a95b05f6c5ba247848ed92d3dad9931094dc89860786c0b8",
            ),
        ],
        files: [
            ("disk.raw", "7752eb4dc63c0f56a466ed8776e4584addb875aba992819f691af7a671039c69"),
            (
                "initramfs.cpio.gz",
                "eea9eefab1f12988caa3c3fa831ca8524cdd87da5d9051897c51f9cd7370d59a",
            ),
        ],
    },
    RichGolden {
        root: "squashfs",
        partitions: [
            ("root-x86-64", "d799add29857ff4048f507e6c1dada2387bcf8bc7c7eb352c02de87725f18709"),
            (
                "root-x86-64-verity",
                "751fdf884ccd5fe64644bfd53687d2a83f71be3ad43c6688a996335b23ced7b6",
            ),
        ],
        files: [
            ("disk.raw", "6be3155f4228dd9ef1cee03b0a83e349166af402b93ef6af5f8fff61746308b5"),
            (
                "initramfs.cpio.gz",
                "eea9eefab1f12988caa3c3fa831ca8524cdd87da5d9051897c51f9cd7370d59a",
            ),
        ],
    },
    RichGolden {
        root: "ext4",
        partitions: [
            ("root-x86-64", "9fa745aedb753a0df7dfccd06e5c2819c7d0219e5c77f7810273209355e4db0a"),
            (
                "root-x86-64-verity",
                "82c7d70a0ba45707bed49169e63082aff16e1c291d26b4ac7d51fdeca3e57958",
            ),
        ],
        files: [
            ("disk.raw", "0fc66b7668978ca3a09253a8ff7f1c14a268c9c6c5ac1b7b1cfcb51fe029c067"),
            (
                "initramfs.cpio.gz",
                "eea9eefab1f12988caa3c3fa831ca8524cdd87da5d9051897c51f9cd7370d59a",
            ),
        ],
    },
];

/// Deterministic text of `len` bytes that compresses like prose.
fn text(len: usize, seed: u64) -> Vec<u8> {
    const WORDS: [&str; 8] =
        ["kiln ", "oven ", "bake ", "layer ", "digest ", "tar ", "\n", "disk "];
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        out.extend_from_slice(WORDS[(state >> 61) as usize].as_bytes());
    }
    out.truncate(len);
    out
}

/// A ustar header for a device node or FIFO (`typeflag` 3, 4 or 6).
fn special_member(name: &str, typeflag: u8, mode: u64, gid: u64, dev: (u64, u64)) -> Vec<u8> {
    support::tarball::header_with(name, typeflag, mode, 0, "", |h| {
        h[116..124].copy_from_slice(format!("{gid:07o}\0").as_bytes());
        h[329..337].copy_from_slice(format!("{:07o}\0", dev.0).as_bytes());
        h[337..345].copy_from_slice(format!("{:07o}\0", dev.1).as_bytes());
    })
    .to_vec()
}

/// Writes [`RICH_RECIPE`] for `root` and its inputs into `dir`, returning the recipe.
fn rich_recipe(dir: &Path, root: &str) -> PathBuf {
    use support::tarball::{header_with, tar, Member};
    let setuid = header_with("usr/bin/su", b'0', 0o4755, 0, "", |_| {}).to_vec();
    let sticky = header_with("tmp/", b'5', 0o1777, 0, "", |_| {}).to_vec();
    let special = tar(&[
        Member::Dir { name: "dev/" },
        Member::Raw(special_member("dev/null", b'3', 0o666, 0, (1, 3))),
        Member::Raw(special_member("dev/loop300", b'4', 0o660, 6, (7, 300))),
        Member::Dir { name: "run/" },
        Member::Raw(special_member("run/initctl", b'6', 0o600, 0, (0, 0))),
        Member::Raw(sticky),
        Member::Dir { name: "usr/" },
        Member::Dir { name: "usr/bin/" },
        Member::Raw(setuid),
    ]);
    fs::create_dir_all(dir).expect("recipe folder");
    fs::write(dir.join("special.tar"), special).expect("special.tar");
    let tree = dir.join("tree");
    let write = |rel: &str, content: &[u8]| {
        let path = tree.join(rel);
        fs::create_dir_all(path.parent().expect("a parent")).expect("tree folders");
        fs::write(&path, content).expect("a tree file");
        path
    };
    write("big.txt", &text(300 * 1024 + 77, 1));
    write("tail.txt", &text(5000, 2));
    write("empty", b"");
    let tool = write("bin/tool", b"#!/bin/sh\nexit 0\n");
    fs::set_permissions(&tool, fs::Permissions::from_mode(0o755)).expect("chmod");
    for i in 0..300 {
        write(&format!("many/entry-{i:03}"), &text(i * 13, i as u64 + 10));
    }
    write("a/b/c/d/e/f/g/h/deep.txt", b"deep\n");
    write(&"n".repeat(255), b"a name of 255 bytes\n");
    write("docs/café-naïve-日本語.txt", "unicode\n".as_bytes());
    fs::hard_link(tree.join("tail.txt"), tree.join("tail-link.txt")).expect("hard link");
    std::os::unix::fs::symlink("big.txt", tree.join("short-link")).expect("symlink");
    let long_target = format!("a/b/c/d/e/f/g/h/{}/../deep.txt", "x".repeat(80));
    std::os::unix::fs::symlink(long_target, tree.join("long-link")).expect("symlink");
    let recipe = dir.join("rich.toml");
    fs::write(&recipe, RICH_RECIPE.replace("ROOT", root)).expect("rich.toml");
    recipe
}

#[test]
fn golden_disk_digests_of_a_richer_tree_are_pinned() {
    for RichGolden { root, partitions, files } in RICH_DISKS {
        if root == "ext4" {
            // Device nodes reach an ext4 root through files staged on the host.
            if !support::is_root() {
                assert!(!support::in_ci(), "the ext4 pins of the rich tree need root");
                eprintln!("SKIP: the ext4 pins of the rich tree need root");
                continue;
            }
            if !ext4_ready() {
                continue;
            }
        }
        let ws = Workspace::new();
        let recipe = rich_recipe(&ws.path("rich"), root);
        let kiln = Kiln::new(&ws.store("store"));
        kiln.build(&recipe, &[]);
        let out = ws.path("disks");
        kiln.run(&["export", "rich:1.0.0", "--disk", out.to_str().expect("utf-8")]).ok();
        let found = partition_digests(&out.join("disk.raw"));
        let pinned: Vec<(String, String)> =
            partitions.iter().map(|(n, d)| (n.to_string(), d.to_string())).collect();
        let mut exported: Vec<(String, String)> = fs::read_dir(&out)
            .expect("exported disks")
            .map(|entry| {
                let path = entry.expect("disk entry").path();
                let name = path.file_name().expect("name").to_string_lossy().into_owned();
                (name, kiln_oci::Digest::of(&fs::read(&path).expect("a disk file")).hex())
            })
            .collect();
        exported.sort();
        assert_eq!(found, pinned, "the {root} root or its dm-verity tree of the rich tree changed");
        let pinned: Vec<(String, String)> =
            files.iter().map(|(n, d)| (n.to_string(), d.to_string())).collect();
        assert_eq!(exported, pinned, "the {root} disk files of the rich tree changed");
    }
}
