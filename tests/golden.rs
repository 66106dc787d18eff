//! Golden digests: the fixture recipes in `recipes/` build to pinned digests.
//!
//! A failure here means kiln's output bytes changed (tar layout, compressor backend or
//! version, JSON serialisation, a default). That must be a deliberate, versioned decision:
//! bump the output-format version, note it in CHANGELOG.md, and only then update the pins.

mod support;

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

/// Each disk file `kiln export --disk` writes for recipes/golden.toml with a `[disk]` table
/// (dm-verity, a FAT ESP holding a file of the image, every format), per root filesystem:
/// (root, ESP size, [(file, sha256)]). The ESP sizes give FAT12 and FAT32; the initramfs is the root
/// filesystem alone, the same for every root. The raw disk pins
/// the GPT, the ESP, the root and the verity partition; each other format pins its writer.
/// ext4 roots are made by the host's mke2fs: their pins hold for e2fsprogs 1.47.0.
/// (root filesystem, ESP size, each exported file with its sha256).
type DiskPins = (&'static str, &'static str, [(&'static str, &'static str); 5]);

const GOLDEN_DISKS: [DiskPins; 3] = [
    (
        "erofs",
        "4MiB",
        [
            ("disk.qcow2", "5e55b91be5a5567b49f591d4acbf468e60cc7a451b23d608b3942008b44a7ba7"),
            ("disk.raw", "50543d56e99858a7f5f24317556c262e5c73ba5655e3fd27a8c2ecb9a8e4c9c9"),
            ("disk.tar.gz", "de80b35c7bfd09d54f634a1cb3aa06d1c697ea835bd4adaf7c8717721a94d0b7"),
            ("disk.vhd", "81988e490e479c6da8847f2bf79f5d93933c70c3db4ed87ad27d7f16ef4124d6"),
            (
                "initramfs.cpio.gz",
                "1b80be84f1cecc6dc29fb5ce2e37c6bd9284556503289c2b6d625712d615091d",
            ),
        ],
    ),
    (
        "squashfs",
        "34MiB",
        [
            ("disk.qcow2", "28bea4997ce6bc9f628968089767976c8356ca263dbb563a9ab38099b6f1e28d"),
            ("disk.raw", "3067d07bca47fb100c387b81364f039928f436d1eecbe9e026f95a6474e60e9c"),
            ("disk.tar.gz", "e73a99861d80a84e642ff09c7e283144bc53aacdd7769c9d3eb41a18124370b9"),
            ("disk.vhd", "aa6ab8edd35c0e189d534f8e67a8ec1f386f8faa09dad84347a7cf9ed1ada76d"),
            (
                "initramfs.cpio.gz",
                "1b80be84f1cecc6dc29fb5ce2e37c6bd9284556503289c2b6d625712d615091d",
            ),
        ],
    ),
    (
        "ext4",
        "4MiB",
        [
            ("disk.qcow2", "7c19ddb68e28911a5503a6de8f3b7b0523038793e9fb57c0f816ef6de585369c"),
            ("disk.raw", "fc91fa25205b89a3bd699bfccc21065052a94afa369badb250e6545db76502cb"),
            ("disk.tar.gz", "3a4185694081ea2dcbeeb0cc66e516d9a34ec4c09c584b0aeff9fcf6176fa0b1"),
            ("disk.vhd", "d2d2f2c3a36add606c144aa5b509ea6031e09000c8cee0508648408837008203"),
            (
                "initramfs.cpio.gz",
                "1b80be84f1cecc6dc29fb5ce2e37c6bd9284556503289c2b6d625712d615091d",
            ),
        ],
    ),
];

/// The e2fsprogs version the ext4 pins were made with.
const GOLDEN_E2FSPROGS: &str = "1.47.0";

#[test]
fn golden_disk_digests_are_pinned() {
    if !support::require_tool("mke2fs") || !support::require_tool("debugfs") {
        return;
    }
    // mke2fs prints its version on stderr.
    let e2fsprogs = std::process::Command::new("mke2fs").arg("-V").output().expect("mke2fs runs");
    let e2fsprogs = String::from_utf8_lossy(&e2fsprogs.stderr).into_owned();
    for (root, esp_size, pinned) in GOLDEN_DISKS {
        if root == "ext4" && !e2fsprogs.contains(GOLDEN_E2FSPROGS) {
            panic!(
                "the ext4 pins hold for e2fsprogs {GOLDEN_E2FSPROGS}; this host has {e2fsprogs}"
            );
        }
        let ws = Workspace::new();
        let recipes = copy_recipes(ws.root());
        let recipe = recipes.join(format!("golden-disk-{root}.toml"));
        let base = std::fs::read_to_string(recipes.join("golden.toml")).expect("golden.toml");
        let disk = format!(
            "\n[disk]\nsize = \"96MiB\"\nroot = \"{root}\"\nverity = true\n\
             formats = [\"raw\", \"qcow2\", \"vhd\", \"gce\", \"initramfs\"]\n\
             [disk.esp]\nsize = \"{esp_size}\"\n\
             files = {{ \"EFI/BOOT/BOOTX64.EFI\" = \"/usr/local/bin/app\" }}\n"
        );
        std::fs::write(&recipe, base + &disk).expect("writing the disk recipe");
        let kiln = Kiln::new(&ws.store("store"));
        let report = kiln.build(&recipe, &[]);
        assert_eq!(digest_of(&report), GOLDEN_GZIP, "[disk] changed the image itself");
        let out = ws.path("disks");
        kiln.run(&["export", "golden:1.0.0", "--disk", out.to_str().expect("utf-8")]).ok();
        let mut found: Vec<(String, String)> = std::fs::read_dir(&out)
            .expect("exported disks")
            .map(|entry| {
                let path = entry.expect("disk entry").path();
                let name = path.file_name().expect("name").to_string_lossy().into_owned();
                let bytes = std::fs::read(&path).expect("reading a disk file");
                (name, kiln_oci::Digest::of(&bytes).hex())
            })
            .collect();
        found.sort();
        let expected: Vec<(String, String)> =
            pinned.iter().map(|(n, d)| (n.to_string(), d.to_string())).collect();
        assert_eq!(found, expected, "the {root} disk files' bytes changed");
    }
}
