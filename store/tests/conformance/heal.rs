//! Bodies for reads by descriptor, healing and repair, run on every backend by the
//! `conformance!` macro.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use kiln_oci::{media_type, to_canonical_json, Descriptor, Digest, ImageManifest};
use kiln_store::check::NoProgress;
use kiln_store::copy::copy_image;
use kiln_store::{Problem, Reference, Reuse, Store, StoreError, Wanted};
use object_store::path::Path as Key;

use super::{blob_key, pattern, Fixture};

/// Stores a one-layer image tagged `app:1`; returns (manifest, layer) descriptors.
async fn tagged_image(store: &Store) -> (Descriptor, Descriptor) {
    let config = store.put_blob(Bytes::from_static(b"{\"architecture\":\"amd64\"}")).await.unwrap();
    let layer = store.put_blob(Bytes::from(pattern(50_000))).await.unwrap();
    let layer = Descriptor::new(media_type::LAYER_TAR_GZIP, layer.digest, layer.size);
    let manifest = ImageManifest {
        schema_version: 2,
        media_type: media_type::IMAGE_MANIFEST.to_string(),
        artifact_type: None,
        config: Descriptor::new(media_type::IMAGE_CONFIG, config.digest, config.size),
        layers: vec![layer.clone()],
        subject: None,
        annotations: Default::default(),
    };
    let out = store.put_blob(Bytes::from(to_canonical_json(&manifest).unwrap())).await.unwrap();
    let manifest = Descriptor::new(media_type::IMAGE_MANIFEST, out.digest, out.size);
    let Reference::Tagged { name, tag } = "app:1".parse().unwrap() else { unreachable!() };
    store.set_ref(&name, &tag, &manifest).await.unwrap();
    (manifest, layer)
}

fn resized(desc: &Descriptor, size: u64) -> Descriptor {
    Descriptor { size, ..desc.clone() }
}

pub async fn reads_by_descriptor_check_the_size(f: Fixture) {
    let (manifest, layer) = tagged_image(&f.store).await;
    assert_eq!(f.store.get_described(&layer).await.unwrap().len() as u64, layer.size);
    for size in [1, layer.size - 1, layer.size + 1] {
        match f.store.get_described(&resized(&layer, size)).await {
            Err(StoreError::SizeMismatch { key, expected, found }) => {
                assert_eq!((key, expected, found), (blob_key(&layer.digest), size, layer.size));
            }
            other => panic!("{other:?}"),
        }
        let target = f.tmp.path().join("copy");
        let err = f.store.copy_described_to(&resized(&layer, size), &target).await.unwrap_err();
        assert!(err.is_integrity_failure(), "{err:?}");
        assert!(!target.exists(), "nothing is written for a wrongly sized descriptor");
    }
    // Walks (export, copy) refuse a wrongly sized root.
    let err = kiln_store::image_blobs(&f.store, &resized(&manifest, 1)).await.unwrap_err();
    assert!(matches!(err, StoreError::SizeMismatch { .. }), "{err:?}");
    let Reference::Tagged { name, tag } = "app:1".parse().unwrap() else { unreachable!() };
    f.store.set_ref(&name, &tag, &resized(&manifest, 1)).await.unwrap();
    let err = copy_image(&f.store, &f.sibling(), &"app:1".parse().unwrap()).await.unwrap_err();
    assert!(matches!(err, StoreError::SizeMismatch { .. }), "{err:?}");
}

pub async fn reuse_is_judged_by_size_date_and_on_demand_content(f: Fixture) {
    let (_, layer) = tagged_image(&f.store).await;
    let wanted = |size, vouched| Wanted { digest: layer.digest, size, vouched };
    let missing = Wanted { digest: Digest::of(b"absent"), size: 6, vouched: None };
    let verdicts = f
        .store
        .check_reuse(&[wanted(layer.size, None), missing, wanted(3, None)], false)
        .await
        .unwrap();
    assert_eq!(verdicts, vec![Reuse::Sound, Reuse::Missing, Reuse::WrongRecord { size: 50_000 }]);
    // A record written before the blob is not trusted on its size alone: the blob is re-hashed.
    let long_ago = Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1));
    let sound = f.store.check_reuse(&[wanted(layer.size, long_ago)], false).await.unwrap();
    assert_eq!(sound, vec![Reuse::Sound]);

    // A same-size flip passes the cheap check, and is caught and quarantined by content.
    f.corrupt(&blob_key(&layer.digest)).await;
    let cheap = f.store.check_reuse(&[wanted(layer.size, None)], false).await.unwrap();
    assert_eq!(cheap, vec![Reuse::Sound]);
    let deep = f.store.check_reuse(&[wanted(layer.size, None)], true).await.unwrap();
    let Reuse::Quarantined(q) = &deep[0] else { panic!("{deep:?}") };
    assert_eq!(q.key, blob_key(&layer.digest));
    assert_eq!(q.quarantine, format!("quarantine/sha256/{}", layer.digest.hex()));
    assert!(!f.store.has_blob(&layer.digest).await.unwrap(), "the key is free again");
    assert!(f.raw.head(&Key::from(q.quarantine.as_str())).await.is_ok());
    // So is one replaced after the record vouched for it, and one of another size.
    let bytes = Bytes::from(pattern(50_000));
    f.raw.put(&Key::from(blob_key(&layer.digest)), b"x".to_vec().into()).await.unwrap();
    let shorter = f.store.check_reuse(&[wanted(layer.size, None)], false).await.unwrap();
    assert!(matches!(shorter[0], Reuse::Quarantined(_)), "{shorter:?}");
    f.store.put_blob(bytes).await.unwrap();
    let recorded = Some(SystemTime::now() - Duration::from_secs(3600));
    f.corrupt(&blob_key(&layer.digest)).await;
    let replaced = f.store.check_reuse(&[wanted(layer.size, recorded)], false).await.unwrap();
    assert!(matches!(replaced[0], Reuse::Quarantined(_)), "{replaced:?}");
}

pub async fn a_checked_put_replaces_corrupt_bytes(f: Fixture) {
    let doc = Bytes::from_static(br#"{"schemaVersion":2,"mediaType":"x"}"#);
    let first = f.store.put_blob_checked(doc.clone()).await.unwrap();
    assert!(first.outcome.uploaded && first.healed.is_none());
    let again = f.store.put_blob_checked(doc.clone()).await.unwrap();
    assert!(!again.outcome.uploaded && again.healed.is_none());
    let key = blob_key(&first.outcome.digest);
    for damage in [b"{\"schemaVersion\":3,\"mediaType\":\"x\"}".to_vec(), b"{}".to_vec()] {
        f.raw.put(&Key::from(key.as_str()), damage.clone().into()).await.unwrap();
        let healed = f.store.put_blob_checked(doc.clone()).await.unwrap();
        assert!(healed.outcome.uploaded);
        assert_eq!(healed.healed.unwrap().found, Digest::of(&damage));
        assert_eq!(f.store.get_blob(&first.outcome.digest).await.unwrap(), doc);
    }
}

pub async fn check_reads_descriptor_sizes_and_referrers_and_repair_settles_them(f: Fixture) {
    let (manifest, layer) = tagged_image(&f.store).await;
    // A referrer whose artifact names the image, and one whose key names another artifact.
    let signature = f.store.put_blob(Bytes::from_static(b"signature")).await.unwrap();
    let artifact = ImageManifest {
        schema_version: 2,
        media_type: media_type::IMAGE_MANIFEST.to_string(),
        artifact_type: Some("application/example".into()),
        config: Descriptor::new("application/vnd.oci.empty.v1+json", signature.digest, 9),
        layers: vec![],
        subject: Some(manifest.clone()),
        annotations: Default::default(),
    };
    let out = f.store.put_blob(Bytes::from(to_canonical_json(&artifact).unwrap())).await.unwrap();
    let good = Descriptor::new(media_type::IMAGE_MANIFEST, out.digest, out.size);
    assert!(f.store.put_referrer(&manifest.digest, &good).await.unwrap());
    let clean = f.store.check(&NoProgress).await.unwrap();
    assert!(clean.is_clean(), "{:?}", clean.problems);
    assert_eq!((clean.refs, clean.referrers), (1, 1));

    let bad_key = format!("referrers/{}/{}", manifest.digest.hex(), layer.digest.hex());
    let entry = Bytes::from(to_canonical_json(&good).unwrap());
    f.raw.put(&Key::from(bad_key.as_str()), entry.into()).await.unwrap();
    let Reference::Tagged { name, tag } = "app:1".parse().unwrap() else { unreachable!() };
    f.store.set_ref(&name, &tag, &resized(&manifest, 1)).await.unwrap();
    let report = f.store.check(&NoProgress).await.unwrap();
    assert_eq!(report.problems.len(), 2, "{:?}", report.problems);
    assert!(report.problems.iter().any(|p| matches!(p,
        Problem::SizeMismatch { digest, expected: 1, found, referenced_by }
            if *digest == manifest.digest && *found == manifest.size
                && referenced_by == "refs/app/1")));
    assert!(report.problems.iter().any(|p| matches!(p,
        Problem::BadReferrer { key, .. } if *key == bad_key)));

    // Repair drops the ref and the bad entry, quarantines a corrupt blob, and says so.
    f.corrupt(&blob_key(&signature.digest)).await;
    let repaired = f.store.repair(&NoProgress).await.unwrap();
    let repair = repaired.repair.as_ref().unwrap();
    assert_eq!(repair.refs_dropped, vec!["refs/app/1".to_string()]);
    let good_key = format!("referrers/{}/{}", manifest.digest.hex(), good.digest.hex());
    let mut dropped = repair.referrers_dropped.clone();
    dropped.sort();
    let mut want = vec![bad_key, good_key];
    want.sort();
    assert_eq!(dropped, want, "the entry whose artifact lost its config goes too");
    assert_eq!(repair.quarantined.len(), 1);
    assert_eq!(repair.quarantined[0].key, blob_key(&signature.digest));
    assert!(repair.left.is_empty() && repaired.is_settled(), "{repair:?}");
    let after = f.store.check(&NoProgress).await.unwrap();
    assert!(after.is_clean(), "{:?}", after.problems);
    assert_eq!((after.refs, after.referrers), (0, 0));
}
