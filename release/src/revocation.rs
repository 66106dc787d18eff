//! Revocations: a signed statement "key K revokes release R because …", written create-only at
//! `log/_revoked/<release-hex>` (`_` keeps it apart from channel names). One read tells
//! whether a release is revoked, so pins stay cheap. Anything stored there revokes: an
//! unreadable revocation is refused, never ignored.

use bytes::Bytes;
use kiln_attest::PrivateKey;
use kiln_oci::Digest;
use kiln_store::log::Created;
use kiln_store::Store;
use serde::{Deserialize, Serialize};

use crate::signed::{self, Opened};
use crate::{ReleaseError, Result};

/// payloadType of a revocation.
pub const REVOCATION_PAYLOAD_TYPE: &str = "application/vnd.kiln.revocation.v1+json";
/// The statement's `schema`.
pub const REVOCATION_SCHEMA: &str = "kiln.revocation/v1";
const REVOCATION_LIMIT: u64 = 64 * 1024;

/// The signed statement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Revocation {
    pub schema: String,
    pub release: Digest,
    pub actor: Digest,
    pub time: String,
    pub reason: String,
}

fn key_of(release: &Digest) -> String {
    format!("_revoked/{}", release.hex())
}

/// Revokes `release`. If it was already revoked, the first revocation stands and is
/// returned as [`ReleaseError::Revoked`].
pub async fn revoke(
    store: &Store,
    release: &Digest,
    key: &PrivateKey,
    reason: &str,
) -> Result<Revocation> {
    let statement = Revocation {
        schema: REVOCATION_SCHEMA.to_string(),
        release: *release,
        actor: signed::key_id(&key.public())?,
        time: signed::now(),
        reason: reason.to_string(),
    };
    let bytes = signed::seal(REVOCATION_PAYLOAD_TYPE, &statement, key)?;
    match store.log_create(&key_of(release), Bytes::from(bytes)).await? {
        Created::Written => Ok(statement),
        Created::Taken => {
            revoked(store, release).await?;
            Err(ReleaseError::Revoked {
                release: *release,
                actor: "unknown".to_string(),
                time: "unknown".to_string(),
                reason: "its revocation vanished while being read".to_string(),
            })
        }
    }
}

/// `Ok(())` when `release` is not revoked, else [`ReleaseError::Revoked`] saying by whom and
/// why (an unreadable revocation still revokes).
pub async fn revoked(store: &Store, release: &Digest) -> Result<()> {
    let bytes = match store.log_read(&key_of(release), REVOCATION_LIMIT).await {
        Ok(None) => return Ok(()),
        Ok(Some(bytes)) => bytes,
        Err(kiln_store::StoreError::TooLarge { .. }) => Bytes::new(),
        Err(e) => return Err(e.into()),
    };
    let unreadable = |why: String| ReleaseError::Revoked {
        release: *release,
        actor: "unknown".to_string(),
        time: "unknown".to_string(),
        reason: format!("its revocation entry is unreadable ({why}); treated as revoked"),
    };
    let Opened { statement, .. } =
        signed::open::<Revocation>(&bytes, REVOCATION_PAYLOAD_TYPE).map_err(unreadable)?;
    let statement: Revocation = statement;
    Err(ReleaseError::Revoked {
        release: *release,
        actor: statement.actor.to_string(),
        time: statement.time,
        reason: statement.reason,
    })
}
