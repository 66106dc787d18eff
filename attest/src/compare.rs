//! Where a rebuilt image first differs from the original: which platform, which layer, and
//! the first path inside that layer whose entry differs.

use kiln_oci::{Descriptor, Digest, ImageManifest};
use kiln_store::Store;
use serde::Serialize;

use crate::contents::LayerEntry;
use crate::{publish, AttestError};

/// The first difference found.
#[derive(Clone, Debug, Serialize)]
pub struct Difference {
    /// Position of the platform manifest in the index.
    pub manifest: usize,
    /// Position of the first differing layer, when a layer differs.
    pub layer: Option<usize>,
    /// The original's digest of what differs.
    pub original: Digest,
    /// The rebuild's digest of what differs.
    pub rebuilt: Digest,
    /// The first path whose entry differs inside the layer.
    pub path: Option<String>,
    /// A sentence saying what differs.
    pub detail: String,
}

/// Compares the image `a` in `store_a` with `b` in `store_b`; `None` when they are identical.
pub async fn first_difference(
    store_a: &Store,
    a: &Descriptor,
    store_b: &Store,
    b: &Descriptor,
) -> Result<Option<Difference>, AttestError> {
    if a.digest == b.digest {
        return Ok(None);
    }
    let (ma, mb) = (publish::manifests(store_a, a).await?, publish::manifests(store_b, b).await?);
    for (i, (da, db)) in ma.iter().zip(&mb).enumerate() {
        if da.digest == db.digest {
            continue;
        }
        let xa: ImageManifest = store_a.get_described_json(da).await?;
        let xb: ImageManifest = store_b.get_described_json(db).await?;
        for (l, (la, lb)) in xa.layers.iter().zip(&xb.layers).enumerate() {
            if la.digest == lb.digest {
                continue;
            }
            let ca = publish::read_layers(
                store_a,
                &ImageManifest { layers: vec![la.clone()], ..xa.clone() },
            )
            .await?;
            let cb = publish::read_layers(
                store_b,
                &ImageManifest { layers: vec![lb.clone()], ..xb.clone() },
            )
            .await?;
            let ea = ca.first().map(|c| c.entries.as_slice()).unwrap_or_default();
            let eb = cb.first().map(|c| c.entries.as_slice()).unwrap_or_default();
            let (path, detail) = match first_entry_difference(ea, eb) {
                Some((path, detail)) => (Some(path), detail),
                None => {
                    (None, "the entries are equal; the tar or compression bytes differ".to_string())
                }
            };
            return Ok(Some(Difference {
                manifest: i,
                layer: Some(l),
                original: la.digest,
                rebuilt: lb.digest,
                path,
                detail,
            }));
        }
        let detail = if xa.layers.len() != xb.layers.len() {
            format!("the original has {} layers, the rebuild {}", xa.layers.len(), xb.layers.len())
        } else if xa.config.digest != xb.config.digest {
            format!("the image config differs ({} vs {})", xa.config.digest, xb.config.digest)
        } else {
            "the manifest differs (annotations or media types)".to_string()
        };
        return Ok(Some(Difference {
            manifest: i,
            layer: None,
            original: da.digest,
            rebuilt: db.digest,
            path: None,
            detail,
        }));
    }
    Ok(Some(Difference {
        manifest: 0,
        layer: None,
        original: a.digest,
        rebuilt: b.digest,
        path: None,
        detail: if ma.len() == mb.len() {
            "the index differs (annotations or platforms)".to_string()
        } else {
            format!("the original has {} manifests, the rebuild {}", ma.len(), mb.len())
        },
    }))
}

/// The first path, in path order, whose entry is missing on one side or differs.
fn first_entry_difference(a: &[LayerEntry], b: &[LayerEntry]) -> Option<(String, String)> {
    let mut a: Vec<&LayerEntry> = a.iter().collect();
    let mut b: Vec<&LayerEntry> = b.iter().collect();
    a.sort_by(|x, y| x.path.cmp(&y.path));
    b.sort_by(|x, y| x.path.cmp(&y.path));
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) if x.path == y.path => {
                if x != y {
                    return Some((x.path.clone(), describe(x, y)));
                }
                i += 1;
                j += 1;
            }
            (Some(x), Some(y)) if x.path < y.path => {
                return Some((x.path.clone(), "only in the original".into()))
            }
            (Some(x), None) => return Some((x.path.clone(), "only in the original".into())),
            (_, Some(y)) => return Some((y.path.clone(), "only in the rebuild".into())),
            (None, None) => break,
        }
    }
    None
}

fn describe(x: &LayerEntry, y: &LayerEntry) -> String {
    if x.kind != y.kind {
        return format!("a {} in the original, a {} in the rebuild", x.kind, y.kind);
    }
    if x.digest != y.digest {
        let show = |d: &Option<Digest>| d.map_or("-".to_string(), |d| d.to_string());
        return format!(
            "content {} ({} bytes) became {} ({} bytes)",
            show(&x.digest),
            x.size,
            show(&y.digest),
            y.size
        );
    }
    format!(
        "metadata mode {:o} uid {} gid {} link {:?} became mode {:o} uid {} gid {} link {:?}",
        x.mode, x.uid, x.gid, x.link, y.mode, y.uid, y.gid, y.link
    )
}
