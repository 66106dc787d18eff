//! SPDX 2.3 JSON SBOMs. Everything in one derives from the image digest and the build's
//! epoch (namespace, timestamp, identifiers), so the same image always gets the same SBOM.

use std::collections::BTreeMap;

use kiln_deb::Installed;
use kiln_oci::Digest;
use serde::{Deserialize, Serialize};

/// Where kiln's document namespaces live; the image digest makes each one unique.
const NAMESPACE_BASE: &str = "https://kiln.invalid/spdx";

/// An SPDX 2.3 document (the fields kiln writes and reads).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Document {
    /// `SPDX-2.3`.
    pub spdx_version: String,
    /// `CC0-1.0`, as the specification requires.
    pub data_license: String,
    /// `SPDXRef-DOCUMENT`.
    #[serde(rename = "SPDXID")]
    pub spdx_id: String,
    /// The image's name and version.
    pub name: String,
    /// A URI unique to this image.
    pub document_namespace: String,
    /// Who made the document and when.
    pub creation_info: CreationInfo,
    /// The image as a package, plus packages found in its inputs.
    pub packages: Vec<Package>,
    /// Every regular file of the image.
    pub files: Vec<File>,
    /// DESCRIBES and CONTAINS relationships.
    pub relationships: Vec<Relationship>,
}

/// `creationInfo`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreationInfo {
    /// RFC 3339 time: the build's epoch, never the clock.
    pub created: String,
    /// `Tool: kiln-<version>`.
    pub creators: Vec<String>,
}

/// A package.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Package {
    /// Its identifier in this document.
    #[serde(rename = "SPDXID")]
    pub spdx_id: String,
    /// Its name.
    pub name: String,
    /// Its version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_info: Option<String>,
    /// `NOASSERTION` for the image (it is not downloaded from a location SPDX can name);
    /// where a Debian package was fetched from.
    pub download_location: String,
    /// False: files are listed separately and tied by CONTAINS relationships.
    pub files_analyzed: bool,
    /// A Debian package's source package and version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_info: Option<String>,
    /// A Debian package file's sha256.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checksums: Vec<Checksum>,
    /// A Debian package's purl.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub external_refs: Vec<ExternalRef>,
}

/// A reference to the package elsewhere (its purl).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExternalRef {
    /// `PACKAGE-MANAGER`.
    pub reference_category: String,
    /// `purl`.
    pub reference_type: String,
    /// `pkg:deb/debian/NAME@VERSION?arch=ARCH`.
    pub reference_locator: String,
}

/// A file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct File {
    /// Its identifier in this document.
    #[serde(rename = "SPDXID")]
    pub spdx_id: String,
    /// Its path inside the image, as `./usr/bin/x`.
    pub file_name: String,
    /// Its sha256.
    pub checksums: Vec<Checksum>,
}

/// A checksum.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Checksum {
    /// `SHA256`.
    pub algorithm: String,
    /// Lowercase hex.
    pub checksum_value: String,
}

/// A relationship between two elements.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Relationship {
    /// The element the relationship starts at.
    pub spdx_element_id: String,
    /// `DESCRIBES` or `CONTAINS`.
    pub relationship_type: String,
    /// The element it points at.
    pub related_spdx_element: String,
}

/// Everything the SBOM of one image says.
pub struct SbomInput<'a> {
    /// The image's name.
    pub name: &'a str,
    /// The image's version, when known.
    pub version: Option<&'a str>,
    /// The manifest the SBOM describes.
    pub image: Digest,
    /// The build's epoch as RFC 3339.
    pub created: &'a str,
    /// Regular files, `path → sha256`.
    pub files: &'a BTreeMap<String, Digest>,
    /// The Debian packages installed.
    pub packages: &'a [Installed],
}

/// The SPDX document for an image.
pub fn document(input: &SbomInput<'_>) -> Document {
    let image_id = "SPDXRef-Image".to_string();
    let mut relationships = vec![Relationship {
        spdx_element_id: "SPDXRef-DOCUMENT".into(),
        relationship_type: "DESCRIBES".into(),
        related_spdx_element: image_id.clone(),
    }];
    let mut files = Vec::with_capacity(input.files.len());
    let mut file_ids = BTreeMap::new();
    for (n, (path, digest)) in input.files.iter().enumerate() {
        let spdx_id = format!("SPDXRef-File-{n}");
        file_ids.insert(path.as_str(), spdx_id.clone());
        relationships.push(Relationship {
            spdx_element_id: image_id.clone(),
            relationship_type: "CONTAINS".into(),
            related_spdx_element: spdx_id.clone(),
        });
        files.push(File {
            spdx_id,
            file_name: format!(".{path}"),
            checksums: vec![Checksum { algorithm: "SHA256".into(), checksum_value: digest.hex() }],
        });
    }
    let mut packages = vec![Package {
        spdx_id: image_id.clone(),
        name: input.name.to_string(),
        version_info: input.version.map(str::to_string),
        download_location: "NOASSERTION".into(),
        files_analyzed: false,
        source_info: None,
        checksums: Vec::new(),
        external_refs: Vec::new(),
    }];
    for (n, p) in input.packages.iter().enumerate() {
        let spdx_id = format!("SPDXRef-Package-deb-{n}");
        relationships.push(Relationship {
            spdx_element_id: image_id.clone(),
            relationship_type: "CONTAINS".into(),
            related_spdx_element: spdx_id.clone(),
        });
        for path in &p.files {
            if let Some(file) = file_ids.get(path.as_str()) {
                relationships.push(Relationship {
                    spdx_element_id: spdx_id.clone(),
                    relationship_type: "CONTAINS".into(),
                    related_spdx_element: file.clone(),
                });
            }
        }
        packages.push(Package {
            name: p.name.clone(),
            version_info: Some(p.version.clone()),
            download_location: p.download_location.clone(),
            files_analyzed: false,
            source_info: Some(format!(
                "built from Debian source package {} {}",
                p.source, p.source_version
            )),
            checksums: vec![Checksum {
                algorithm: "SHA256".into(),
                checksum_value: p.sha256.hex(),
            }],
            external_refs: vec![ExternalRef {
                reference_category: "PACKAGE-MANAGER".into(),
                reference_type: "purl".into(),
                reference_locator: p.purl(),
            }],
            spdx_id,
        });
    }
    Document {
        spdx_version: "SPDX-2.3".into(),
        data_license: "CC0-1.0".into(),
        spdx_id: "SPDXRef-DOCUMENT".into(),
        name: match input.version {
            Some(v) => format!("{}-{v}", input.name),
            None => input.name.to_string(),
        },
        document_namespace: format!("{NAMESPACE_BASE}/{}/{}", input.name, input.image.hex()),
        creation_info: CreationInfo {
            created: input.created.to_string(),
            creators: vec![format!("Tool: kiln-{}", env!("CARGO_PKG_VERSION"))],
        },
        packages,
        files,
        relationships,
    }
}

impl Document {
    /// The files the document lists, `path → sha256`; entries it cannot parse are skipped
    /// (and so show up as missing when compared with the image).
    pub fn file_digests(&self) -> BTreeMap<String, Option<Digest>> {
        self.files
            .iter()
            .map(|f| {
                let path =
                    format!("/{}", f.file_name.trim_start_matches("./").trim_start_matches('/'));
                let digest = f
                    .checksums
                    .iter()
                    .find(|c| c.algorithm == "SHA256")
                    .and_then(|c| Digest::from_hex(&c.checksum_value).ok());
                (path, digest)
            })
            .collect()
    }
}
