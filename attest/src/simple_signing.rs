//! cosign's "simple signing" payload: the JSON document a cosign image signature signs,
//! naming the image by repository and manifest digest.

use kiln_oci::Digest;
use serde::{Deserialize, Serialize};

/// The `critical.type` value cosign writes and checks.
pub const SIGNATURE_TYPE: &str = "cosign container image signature";

/// The whole payload: `{"critical": {...}, "optional": null}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    /// What the signature is about.
    pub critical: Critical,
    /// Free-form claims; kiln writes `null`, as cosign does without annotations.
    pub optional: Option<serde_json::Value>,
}

/// The signed claims.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Critical {
    /// The repository the image was signed under.
    pub identity: Identity,
    /// The signed manifest or index.
    pub image: Image,
    /// Always [`SIGNATURE_TYPE`].
    #[serde(rename = "type")]
    pub kind: String,
}

/// `critical.identity`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// A repository reference such as `hello`.
    #[serde(rename = "docker-reference")]
    pub docker_reference: String,
}

/// `critical.image`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// The signed digest.
    #[serde(rename = "docker-manifest-digest")]
    pub docker_manifest_digest: Digest,
}

impl Payload {
    /// The payload for `digest` pushed as `reference`.
    pub fn new(reference: &str, digest: Digest) -> Payload {
        Payload {
            critical: Critical {
                identity: Identity { docker_reference: reference.to_string() },
                image: Image { docker_manifest_digest: digest },
                kind: SIGNATURE_TYPE.to_string(),
            },
            optional: None,
        }
    }

    /// The canonical bytes that are stored and signed.
    pub fn to_bytes(&self) -> Result<Vec<u8>, serde_json::Error> {
        kiln_oci::to_canonical_json(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_has_cosigns_shape() {
        let d = Digest::of(b"x");
        let text = String::from_utf8(Payload::new("hello", d).to_bytes().unwrap()).unwrap();
        assert_eq!(
            text,
            format!(
                "{{\"critical\":{{\"identity\":{{\"docker-reference\":\"hello\"}},\"image\":\
                 {{\"docker-manifest-digest\":\"{d}\"}},\"type\":\"cosign container image \
                 signature\"}},\"optional\":null}}"
            )
        );
    }
}
