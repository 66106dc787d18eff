//! Bodies for check, gc and copy, run on every backend by the `conformance!` macro.

use std::time::Duration;

use bytes::Bytes;
use kiln_oci::{media_type, to_canonical_json, Descriptor, Digest, ImageManifest};
use kiln_store::cache::check::{BadEntry, EntryProblem};
use kiln_store::cache::{CacheRecord, Refusal};
use kiln_store::check::NoProgress;
use kiln_store::copy::copy_image;
use kiln_store::{GcOptions, Problem, Reference, Store, StoreError};
use object_store::path::Path as Key;
use object_store::ObjectStore;

use super::{blob_key, pattern, Fixture};

/// Stores a one-manifest image with a config and these layers; returns the manifest.
async fn image(store: &Store, layers: &[Vec<u8>]) -> Descriptor {
    let config = store.put_blob(Bytes::from_static(b"{\"architecture\":\"amd64\"}")).await.unwrap();
    let mut descs = Vec::new();
    for layer in layers {
        let out = store.put_blob(Bytes::from(layer.clone())).await.unwrap();
        descs.push(Descriptor::new(media_type::LAYER_TAR_GZIP, out.digest, out.size));
    }
    let manifest = ImageManifest {
        schema_version: 2,
        media_type: media_type::IMAGE_MANIFEST.to_string(),
        artifact_type: None,
        config: Descriptor::new(media_type::IMAGE_CONFIG, config.digest, config.size),
        layers: descs,
        subject: None,
        annotations: Default::default(),
    };
    let out = store.put_blob(Bytes::from(to_canonical_json(&manifest).unwrap())).await.unwrap();
    Descriptor::new(media_type::IMAGE_MANIFEST, out.digest, out.size)
}

fn tagged(reference: &str) -> Reference {
    reference.parse().unwrap()
}

pub async fn check_reports_corrupt_and_missing_blobs(f: Fixture) {
    let manifest = image(&f.store, &[b"layer one".to_vec(), b"layer two".to_vec()]).await;
    let Reference::Tagged { name, tag } = tagged("app:1") else { unreachable!() };
    f.store.set_ref(&name, &tag, &manifest).await.unwrap();
    let report = f.store.check(&NoProgress).await.unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    assert_eq!((report.blobs, report.refs), (4, 1));

    let one = Digest::of(b"layer one");
    let two = Digest::of(b"layer two");
    f.corrupt(&blob_key(&one)).await;
    f.raw.delete(&Key::from(blob_key(&two))).await.unwrap();
    let report = f.store.check(&NoProgress).await.unwrap();
    assert_eq!(report.problems.len(), 2, "{:?}", report.problems);
    assert!(report.problems.iter().any(|p| matches!(p,
        Problem::CorruptBlob { expected, .. } if *expected == one)));
    assert!(report.problems.iter().any(|p| matches!(p,
        Problem::MissingBlob { digest, referenced_by } if *digest == two
            && *referenced_by == manifest.digest.to_string())));
    // Reads refuse the corrupt blob, naming its key.
    match f.store.get_blob(&one).await {
        Err(StoreError::DigestMismatch { key, .. }) => assert_eq!(key, blob_key(&one)),
        other => panic!("{other:?}"),
    }
    assert!(matches!(f.store.verify_blob(&one).await, Err(StoreError::DigestMismatch { .. })));
}

pub async fn gc_deletes_exactly_the_unreachable_past_grace(f: Fixture) {
    let kept = image(&f.store, &[b"kept layer".to_vec()]).await;
    let Reference::Tagged { name, tag } = tagged("app:1") else { unreachable!() };
    f.store.set_ref(&name, &tag, &kept).await.unwrap();
    // An old image whose tag moved away, and blobs only a channel log or a referrer names.
    let dropped = image(&f.store, &[b"dropped layer".to_vec()]).await;
    let logged = f.store.put_blob(Bytes::from_static(b"release record")).await.unwrap();
    let log_entry = format!("{{\"release\":\"{}\"}}", logged.digest);
    f.raw.put(&Key::from("log/prod/app/1"), Bytes::from(log_entry).into()).await.unwrap();
    let signature = f.store.put_blob(Bytes::from_static(b"signature")).await.unwrap();
    let referrer = format!("referrers/{}/{}", kept.digest.hex(), signature.digest.hex());
    let entry = Descriptor::new("application/octet-stream", signature.digest, signature.size);
    let entry = Bytes::from(to_canonical_json(&entry).unwrap());
    f.raw.put(&Key::from(referrer.as_str()), entry.into()).await.unwrap();
    // Cache entries: one whose blob survives, one whose blob gc removes.
    for (key, layer) in [(b"k1", &b"kept layer"[..]), (b"k2", b"dropped layer")] {
        let output =
            Descriptor::new(media_type::LAYER_TAR_GZIP, Digest::of(layer), layer.len() as u64);
        let record =
            CacheRecord { kind: "layer".into(), key: Digest::of(key), output, diff_id: None };
        f.store.put_cache_entry(record, None).await.unwrap();
    }
    f.raw.put(&Key::from("uploads/stale"), Bytes::from_static(b"partial").into()).await.unwrap();

    // Everything is younger than an hour: an in-flight build's uploads survive.
    let hour = GcOptions { grace: Duration::from_secs(3600), dry_run: false };
    let report = f.store.gc(hour).await.unwrap();
    assert_eq!((report.blobs_deleted, report.uploads_deleted), (0, 0), "{report:?}");
    assert_eq!(report.blobs_kept_young, 2, "{report:?}");
    assert_eq!(report.reachable, 5, "{report:?}");

    // Past the grace: a dry run reports, then the real run deletes, exactly the same.
    let before = f.keys().await;
    let now = GcOptions { grace: Duration::ZERO, dry_run: true };
    let dry = f.store.gc(now).await.unwrap();
    assert_eq!(f.keys().await, before);
    let report = f.store.gc(GcOptions { dry_run: false, ..now }).await.unwrap();
    let counts = |r: &kiln_store::GcReport| {
        (r.blobs_deleted, r.uploads_deleted, r.cache_entries_deleted, r.reachable)
    };
    assert_eq!(counts(&dry), (2, 1, 1, 5));
    assert_eq!(counts(&report), counts(&dry));
    // The old image's manifest and layer go; its config, shared with the kept image, stays.
    let removed = [
        blob_key(&dropped.digest),
        blob_key(&Digest::of(b"dropped layer")),
        "uploads/stale".to_string(),
        format!("cache/layer/{}", Digest::of(b"k2").hex()),
    ];
    let expected: Vec<String> = before.into_iter().filter(|k| !removed.contains(k)).collect();
    assert_eq!(f.keys().await, expected);
    assert!(f.store.check(&NoProgress).await.unwrap().is_clean());
}

pub async fn copy_sends_only_what_the_target_lacks(f: Fixture) {
    let big = pattern(9 * 1024 * 1024 + 3);
    let manifest = image(&f.store, &[b"small layer".to_vec(), big]).await;
    let Reference::Tagged { name, tag } = tagged("app:2") else { unreachable!() };
    f.store.set_ref(&name, &tag, &manifest).await.unwrap();
    // A referrer entry holds the artifact's descriptor (as `put_referrer` writes it).
    let signature = f.store.put_blob(Bytes::from_static(b"{\"mediaType\":\"x\"}")).await.unwrap();
    let referrer = format!("referrers/{}/{}", manifest.digest.hex(), signature.digest.hex());
    let entry = to_canonical_json(&Descriptor::new("x", signature.digest, signature.size)).unwrap();
    f.raw.put(&Key::from(referrer.as_str()), Bytes::from(entry).into()).await.unwrap();

    let target = f.sibling();
    let report = copy_image(&f.store, &target, &tagged("app:2")).await.unwrap();
    assert_eq!((report.blobs, report.copied, report.present, report.referrers), (5, 5, 0, 1));
    assert_eq!(target.get_ref(&name, &tag).await.unwrap(), Some(manifest.clone()));
    assert!(target.check(&NoProgress).await.unwrap().is_clean());
    let again = copy_image(&f.store, &target, &tagged("app:2")).await.unwrap();
    assert_eq!((again.copied, again.present), (0, 5));

    // Back from the copy into a store missing only one blob: only that one travels.
    let small = Digest::of(b"small layer");
    f.raw.delete(&Key::from(blob_key(&small))).await.unwrap();
    let back = copy_image(&target, &f.store, &tagged("app:2")).await.unwrap();
    assert_eq!((back.copied, back.present), (1, 4));
    // A corrupt source blob is refused, and nothing wrong lands in the target.
    f.corrupt(&blob_key(&small)).await;
    let fresh = f.sibling();
    match copy_image(&f.store, &fresh, &tagged("app:2")).await {
        Err(StoreError::DigestMismatch { key, .. }) => assert_eq!(key, blob_key(&small)),
        other => panic!("{other:?}"),
    }
    assert_eq!(fresh.get_ref(&name, &tag).await.unwrap(), None);
    let problems = fresh.check(&NoProgress).await.unwrap().problems;
    assert!(problems.is_empty(), "{problems:?}");
}

pub async fn copy_from_a_folder_refuses_bytes_that_are_not_their_digest(f: Fixture) {
    // Local blobs are read once, hashed while their parts go up: bytes changed after they were
    // stored (past the first parts, so some are sent before the change is seen) make the copy
    // fail with nothing visible under the digest and no upload left in progress.
    for (i, big_changes) in [true, false].into_iter().enumerate() {
        // Other blobs each time, so what the first round copied whole is not found there.
        let big = pattern(3 * 8 * 1024 * 1024 + i);
        let small = format!("small layer {i}").into_bytes();
        let (changed, at) = match big_changes {
            true => (Digest::of(&big), 2 * 8 * 1024 * 1024 + 5),
            false => (Digest::of(&small), 3),
        };
        let root = f.tmp.path().join(format!("local-{i}"));
        let local = Store::open(root.to_str().unwrap()).unwrap();
        let manifest = image(&local, &[big, small]).await;
        let path = root.join("blobs/sha256").join(changed.hex());
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[at] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        match copy_image(&local, &f.store, &Reference::Digest(manifest.digest)).await {
            Err(StoreError::DigestMismatch { key, expected, .. }) => {
                assert_eq!((key, expected), (blob_key(&changed), changed));
            }
            other => panic!("{other:?}"),
        }
        assert!(!f.store.has_blob(&changed).await.unwrap());
        let files = f.files().await;
        assert!(!files.iter().any(|k| k.contains(&changed.hex())), "{files:?}");
        assert!(!files.iter().any(|k| k.starts_with("uploads/")), "{files:?}");
        let now = GcOptions { grace: Duration::ZERO, dry_run: true };
        let report = f.store.gc(now).await.unwrap();
        assert_eq!(
            (report.uploads_deleted, report.multipart_uploads_aborted),
            (0, 0),
            "{report:?}"
        );
    }
}

pub async fn check_reports_bad_cache_entries(f: Fixture) {
    let layer = b"a layer".to_vec();
    let manifest = image(&f.store, std::slice::from_ref(&layer)).await;
    let Reference::Tagged { name, tag } = tagged("app:3") else { unreachable!() };
    f.store.set_ref(&name, &tag, &manifest).await.unwrap();
    let m: ImageManifest = f.store.get_json(&manifest.digest).await.unwrap();
    let output = m.layers[0].clone();
    let entry = |key: &[u8], output: &Descriptor, diff_id| CacheRecord {
        kind: "layer".into(),
        key: Digest::of(key),
        output: output.clone(),
        diff_id: Some(diff_id),
    };
    // The config `image` writes records no diff_ids, so give it one for this layer.
    let good_diff = Digest::of(b"tar of a layer");
    let config = format!(
        "{{\"architecture\":\"amd64\",\"rootfs\":{{\"type\":\"layers\",\"diff_ids\":[\"{good_diff}\"]}}}}"
    );
    let config = f.store.put_blob(Bytes::from(config)).await.unwrap();
    let with_diff = ImageManifest {
        config: Descriptor::new(media_type::IMAGE_CONFIG, config.digest, config.size),
        ..m.clone()
    };
    let bytes = to_canonical_json(&with_diff).unwrap();
    let root = f.store.put_blob(Bytes::from(bytes)).await.unwrap();
    let root = Descriptor::new(media_type::IMAGE_MANIFEST, root.digest, root.size);
    f.store.set_ref(&name, &tag, &root).await.unwrap();

    f.store.put_cache_entry(entry(b"good", &output, good_diff), None).await.unwrap();
    f.store.put_cache_entry(entry(b"diff", &output, Digest::of(b"x")), None).await.unwrap();
    let mut sized = output.clone();
    sized.size += 7;
    f.store.put_cache_entry(entry(b"size", &sized, good_diff), None).await.unwrap();
    f.raw.put(&Key::from("cache/layer/nothex"), Bytes::from_static(b"{}").into()).await.unwrap();
    assert!(f
        .store
        .check(&NoProgress)
        .await
        .unwrap()
        .problems
        .iter()
        .all(|p| matches!(p, Problem::BadCacheEntry { .. })));

    let bad = f.store.check_cache().await.unwrap();
    let key = |k: &[u8]| format!("cache/layer/{}", Digest::of(k).hex());
    let mut want = vec![
        BadEntry {
            key: key(b"diff"),
            problem: EntryProblem::WrongDiffId {
                layer: output.digest,
                recorded: Digest::of(b"x"),
                config: config.digest,
                found: good_diff,
            },
        },
        BadEntry {
            key: key(b"size"),
            problem: EntryProblem::Refused(Refusal::WrongSize {
                digest: output.digest,
                recorded: output.size + 7,
                stored: output.size,
            }),
        },
        BadEntry { key: "cache/layer/nothex".into(), problem: EntryProblem::StrayKey },
    ];
    want.sort_by(|a, b| a.key.cmp(&b.key));
    assert_eq!(bad, want);
    assert_eq!(f.store.check(&NoProgress).await.unwrap().problems.len(), 3);
    f.store.remove_cache_entries(&bad).await.unwrap();
    assert!(f.store.check_cache().await.unwrap().is_empty());
    assert!(f.store.check(&NoProgress).await.unwrap().is_clean());
}

pub async fn gc_keeps_what_a_live_lease_names(f: Fixture) {
    let leased = f.store.put_blob(Bytes::from_static(b"fresh layer")).await.unwrap();
    let loose = f.store.put_blob(Bytes::from_static(b"loose blob")).await.unwrap();
    let lease = f.store.lease().await.unwrap();
    lease.add(&[leased.digest]).await.unwrap();
    let now = GcOptions { grace: Duration::ZERO, dry_run: false };
    let report = f.store.gc(now).await.unwrap();
    assert_eq!((report.blobs_deleted, report.reachable, report.leases_live), (1, 1, 1));
    assert!(f.store.has_blob(&leased.digest).await.unwrap());
    assert!(!f.store.has_blob(&loose.digest).await.unwrap());

    // Released, the lease leaves nothing behind and protects nothing.
    lease.release().await.unwrap();
    let report = f.store.gc(now).await.unwrap();
    assert_eq!((report.blobs_deleted, report.leases_live), (1, 0));
    assert_eq!(f.keys().await, Vec::<String>::new());

    // A lease whose holder died on this machine, and an expired one, are dropped at once.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    let me = kiln_store::holder::Holder::current().unwrap();
    let dead = kiln_store::holder::Holder { pid, start: me.start + 1, ..me };
    let kept = f.store.put_blob(Bytes::from_static(b"named by dead leases")).await.unwrap();
    let far = 4_000_000_000u64;
    let records = [
        (
            "leases/dead/0",
            serde_json::json!({"expires": far, "holder": dead, "blobs": [kept.digest]}),
        ),
        ("leases/old/0", serde_json::json!({"expires": 1, "blobs": [kept.digest]})),
    ];
    for (key, record) in records {
        f.raw.put(&Key::from(key), serde_json::to_vec(&record).unwrap().into()).await.unwrap();
    }
    let report = f.store.gc(now).await.unwrap();
    assert_eq!((report.blobs_deleted, report.lease_records_deleted), (1, 2), "{report:?}");
    assert_eq!(f.keys().await, Vec::<String>::new());
}

pub async fn a_leased_handle_names_every_blob_it_writes(f: Fixture) {
    // Attaching signatures, SBOMs and provenance writes blobs nothing refers to until the
    // referrer entry is written; through a leased handle, gc keeps them meanwhile.
    let lease = f.store.lease().await.unwrap();
    let leased = f.store.leased(&lease);
    let payload = leased.put_blob(Bytes::from_static(b"signature payload")).await.unwrap();
    let sbom = leased.put_blob_checked(Bytes::from_static(b"{\"sbom\":1}")).await.unwrap();
    let loose = f.store.put_blob(Bytes::from_static(b"loose blob")).await.unwrap();
    let now = GcOptions { grace: Duration::ZERO, dry_run: false };
    let report = f.store.gc(now).await.unwrap();
    assert_eq!((report.blobs_deleted, report.leases_live), (1, 1), "{report:?}");
    assert!(f.store.has_blob(&payload.digest).await.unwrap());
    assert!(f.store.has_blob(&sbom.outcome.digest).await.unwrap());
    assert!(!f.store.has_blob(&loose.digest).await.unwrap());
    lease.release().await.unwrap();

    // Sweep records of a gc that died or expired are dropped with what they protected.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    let me = kiln_store::holder::Holder::current().unwrap();
    let dead = kiln_store::holder::Holder { pid, start: me.start + 1, ..me };
    let records = [
        ("sweeps/dead", serde_json::json!({"expires": 4_000_000_000u64, "holder": dead})),
        ("sweeps/old", serde_json::json!({"expires": 1})),
    ];
    for (key, record) in records {
        f.raw.put(&Key::from(key), serde_json::to_vec(&record).unwrap().into()).await.unwrap();
    }
    assert_eq!(f.store.sweeps_in_progress().await.unwrap(), Vec::new());
    let report = f.store.gc(now).await.unwrap();
    assert_eq!(report.blobs_deleted, 2, "{report:?}");
    assert_eq!(f.keys().await, Vec::<String>::new());
}

pub async fn gc_empties_the_quarantine_after_the_grace(f: Fixture) {
    let bytes = Bytes::from_static(b"a layer that will rot");
    let put = f.store.put_blob(bytes.clone()).await.unwrap();
    f.corrupt(&blob_key(&put.digest)).await;
    if let Some(root) = &f.root {
        // Long stored before it was found corrupt: the quarantine's age starts at the move.
        let path = root.join(blob_key(&put.digest));
        let file = std::fs::File::options().write(true).open(path).unwrap();
        file.set_modified(std::time::SystemTime::now() - Duration::from_secs(7200)).unwrap();
    }
    let wanted = kiln_store::Wanted { digest: put.digest, size: put.size, vouched: None };
    let verdict = f.store.check_reuse(&[wanted], true).await.unwrap();
    assert!(matches!(verdict[..], [kiln_store::Reuse::Quarantined(_)]), "{verdict:?}");
    let quarantined = format!("quarantine/sha256/{}", put.digest.hex());
    assert_eq!(f.keys().await, vec![quarantined.clone()]);

    let hour = GcOptions { grace: Duration::from_secs(3600), dry_run: false };
    let report = f.store.gc(hour).await.unwrap();
    assert_eq!(report.quarantined_deleted, 0, "{report:?}");
    assert_eq!(f.keys().await, vec![quarantined]);
    let dry = GcOptions { grace: Duration::ZERO, dry_run: true };
    let report = f.store.gc(dry).await.unwrap();
    assert_eq!((report.quarantined_deleted, report.quarantined_bytes_deleted), (1, put.size));
    let now = GcOptions { grace: Duration::ZERO, dry_run: false };
    let report = f.store.gc(now).await.unwrap();
    assert_eq!((report.quarantined_deleted, report.quarantined_bytes_deleted), (1, put.size));
    assert_eq!(f.keys().await, Vec::<String>::new());
}

pub async fn copy_sends_again_what_a_gc_it_raced_took(f: Fixture) {
    // The target holds one layer already, unreferenced; a sweep record stands for a gc that
    // read the leases before the copy's lease and deletes that layer after the copy saw it.
    let source = f.sibling();
    let manifest = image(&source, &[b"kept layer".to_vec()]).await;
    let Reference::Tagged { name, tag } = tagged("app:3") else { unreachable!() };
    source.set_ref(&name, &tag, &manifest).await.unwrap();
    let layer = f.store.put_blob(Bytes::from_static(b"kept layer")).await.unwrap();
    let sweep = Key::from("sweeps/a-gc-in-progress");
    let record = serde_json::json!({"expires": 4_000_000_000u64});
    f.raw.put(&sweep, serde_json::to_vec(&record).unwrap().into()).await.unwrap();
    let reference = tagged("app:3");
    let copying = copy_image(&source, &f.store, &reference);
    let gc = async {
        // The manifest is sent after the copy found the layer there.
        while !f.store.has_blob(&manifest.digest).await.unwrap() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        f.raw.delete(&Key::from(blob_key(&layer.digest))).await.unwrap();
        f.raw.delete(&sweep).await.unwrap();
    };
    let (report, ()) = futures::join!(copying, gc);
    let report = report.unwrap();
    assert_eq!((report.blobs, report.copied, report.present), (3, 3, 0), "{report:?}");
    assert!(f.store.has_blob(&layer.digest).await.unwrap());
    assert!(f.store.check(&NoProgress).await.unwrap().is_clean());
}

pub async fn unfinished_multipart_uploads_are_reported_and_aborted(f: Fixture) {
    // A copy whose large source blob turns out corrupt sends parts, then aborts: nothing of it
    // stays in the target, not even a record.
    let big = pattern(9 * 1024 * 1024 + 5);
    let manifest = image(&f.store, std::slice::from_ref(&big)).await;
    f.corrupt(&blob_key(&Digest::of(&big))).await;
    let target = f.sibling();
    assert!(copy_image(&f.store, &target, &Reference::Digest(manifest.digest)).await.is_err());
    let now = GcOptions { grace: Duration::ZERO, dry_run: false };
    let report = target.gc(now).await.unwrap();
    assert_eq!((report.uploads_deleted, report.multipart_uploads_aborted), (0, 0), "{report:?}");

    // The record a killed writer leaves: reported by check, aborted by gc, and gone.
    let marker = format!("uploads/{}-1-2-3.multipart", Digest::of(b"x").hex());
    let record =
        serde_json::json!({"key": marker.trim_end_matches(".multipart"), "uploadId": "gone"});
    f.raw
        .put(&Key::from(marker.as_str()), serde_json::to_vec(&record).unwrap().into())
        .await
        .unwrap();
    let problems = f.store.check(&NoProgress).await.unwrap().problems;
    let want = Problem::UnfinishedUpload { marker: marker.clone(), upload_id: "gone".into() };
    assert!(problems.contains(&want), "{problems:?}");
    let report = f.store.gc(now).await.unwrap();
    assert_eq!(report.multipart_uploads_aborted, 1, "{report:?}");
    assert!(!f.keys().await.contains(&marker));
}

pub async fn multipart_uploads_no_record_names_are_aborted(f: Fixture) {
    // Only S3 lists uploads in progress; elsewhere they are part files (folder, see gc) or
    // uncommitted blocks the service drops itself (Azure).
    let Some(server) = f.server.filter(|s| s.service == kiln_test_servers::Service::S3) else {
        return;
    };
    let location = f.store.describe();
    // Left as a writer killed before recording its upload, or while publishing, leaves them;
    // one of a blob a live lease names, and one outside kiln's keys.
    let leased = Digest::of(b"in flight");
    let keys = [
        format!("uploads/{}-1-2-3", Digest::of(b"staged").hex()),
        blob_key(&Digest::of(b"publishing")).to_string(),
        format!("uploads/{}-4-5-6", leased.hex()),
        "elsewhere/x".to_string(),
    ];
    let mut uploads = Vec::new();
    for key in &keys {
        let mut upload = f.raw.put_multipart(&Key::from(key.as_str())).await.unwrap();
        upload.put_part(Bytes::from(vec![7u8; 64]).into()).await.unwrap();
        uploads.push(upload);
    }
    let listed = |mut keys: Vec<String>| {
        keys.sort();
        keys
    };
    let prefixed = |key: &str| format!("{}/{key}", location.split('/').next_back().unwrap());
    let all = listed(keys.iter().map(|k| prefixed(k)).collect());
    assert_eq!(listed(server.multipart_uploads(location).unwrap()), all);
    // check reports kiln's three, leased or not, as gc would judge them.
    let reported = |report: kiln_store::CheckReport| {
        let keys = report.problems.iter().filter_map(|p| match p {
            Problem::UnrecordedUpload { key, .. } => Some(key.clone()),
            _ => None,
        });
        listed(keys.collect())
    };
    let check = f.store.check(&NoProgress).await.unwrap();
    assert_eq!(check.problems.len(), 3, "{check:?}");
    assert_eq!(reported(check), listed(keys[..3].to_vec()));

    let lease = f.store.lease().await.unwrap();
    lease.add(&[leased]).await.unwrap();
    let young = GcOptions { grace: Duration::from_secs(3600), dry_run: false };
    assert_eq!(f.store.gc(young).await.unwrap().multipart_uploads_aborted, 0);
    let dry = GcOptions { grace: Duration::ZERO, dry_run: true };
    assert_eq!(f.store.gc(dry).await.unwrap().multipart_uploads_aborted, 2);
    assert_eq!(listed(server.multipart_uploads(location).unwrap()), all);

    let now = GcOptions { grace: Duration::ZERO, dry_run: false };
    assert_eq!(f.store.gc(now).await.unwrap().multipart_uploads_aborted, 2);
    let left = listed(vec![prefixed(&keys[2]), prefixed(&keys[3])]);
    assert_eq!(listed(server.multipart_uploads(location).unwrap()), left);
    lease.release().await.unwrap();
    assert_eq!(f.store.gc(now).await.unwrap().multipart_uploads_aborted, 1);
    assert_eq!(server.multipart_uploads(location).unwrap(), vec![prefixed(&keys[3])]);
    assert!(f.store.check(&NoProgress).await.unwrap().is_clean());
    uploads[3].abort().await.unwrap();
}

pub async fn a_lease_reading_its_tag_meanwhile_names_nothing_before_it_knows_what_it_keeps(
    f: Fixture,
) {
    let kept = image(&f.store, &[b"kept layer".to_vec()]).await;
    let Reference::Tagged { name, tag } = tagged("app:1") else { unreachable!() };
    f.store.set_ref(&name, &tag, &kept).await.unwrap();
    let config = Digest::of(b"{\"architecture\":\"amd64\"}");
    let blobs = [kept.digest, config, Digest::of(b"kept layer")];

    // Named as soon as the read began: the naming waits for it, and the tag keeps them.
    let lease = f.store.lease().await.unwrap();
    lease.keep_tagged_meanwhile(name.clone(), tag.clone()).await;
    lease.add(&blobs).await.unwrap();
    assert!(!lease.recorded());
    assert!(lease.before_tagging(&name, &tag, &kept).await.unwrap());
    lease.release().await.unwrap();

    // A tag that cannot be read fails the first naming, which records nothing.
    f.raw
        .put(&Key::from("refs/app/1"), Bytes::from_static(b"not a descriptor").into())
        .await
        .unwrap();
    let lease = f.store.lease().await.unwrap();
    lease.keep_tagged_meanwhile(name.clone(), tag.clone()).await;
    let error = lease.add(&blobs).await.unwrap_err();
    assert!(matches!(error, StoreError::Json { .. }), "{error:?}");
    assert!(!lease.recorded());
}

pub async fn a_lease_records_nothing_the_tag_keeps_until_the_tag_moves(f: Fixture) {
    let kept = image(&f.store, &[b"kept layer".to_vec()]).await;
    let other = image(&f.store, &[b"other layer".to_vec()]).await;
    let Reference::Tagged { name, tag } = tagged("app:1") else { unreachable!() };
    f.store.set_ref(&name, &tag, &kept).await.unwrap();
    let config = Digest::of(b"{\"architecture\":\"amd64\"}");
    let blobs = [kept.digest, config, Digest::of(b"kept layer")];
    let now = GcOptions { grace: Duration::ZERO, dry_run: false };

    // The tag already says it: nothing is recorded, set or confirmed.
    let lease = f.store.lease().await.unwrap();
    lease.keep_tagged(&name, &tag).await.unwrap();
    lease.add(&blobs).await.unwrap();
    assert!(lease.before_tagging(&name, &tag, &kept).await.unwrap());
    assert!(!lease.recorded());
    lease.release().await.unwrap();

    // The tag moves while the lease defers: before tagging, every blob named is recorded,
    // and a gc keeps them though no tag references them any more.
    let lease = f.store.lease().await.unwrap();
    lease.keep_tagged(&name, &tag).await.unwrap();
    lease.add(&blobs).await.unwrap();
    f.store.set_ref(&name, &tag, &other).await.unwrap();
    assert!(!lease.recorded());
    assert!(!lease.before_tagging(&name, &tag, &kept).await.unwrap());
    assert!(lease.recorded());
    f.store.gc(now).await.unwrap();
    for blob in &blobs {
        assert!(f.store.has_blob(blob).await.unwrap(), "{blob}");
    }
    // From then on every blob named is recorded at once.
    let fresh = f.store.put_blob(Bytes::from_static(b"named after")).await.unwrap();
    lease.add(&[fresh.digest]).await.unwrap();
    f.store.gc(now).await.unwrap();
    assert!(f.store.has_blob(&fresh.digest).await.unwrap());
    lease.release().await.unwrap();

    // A blob the tag does not keep is recorded when named.
    let lease = f.store.lease().await.unwrap();
    lease.keep_tagged(&name, &tag).await.unwrap();
    lease.add(&[Digest::of(b"not tagged")]).await.unwrap();
    assert!(lease.recorded());
    lease.release().await.unwrap();
}
