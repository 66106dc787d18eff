//! A Debian package as a build installed it: what an SBOM says of it.

use kiln_oci::Digest;

/// A Debian package installed in an image, as the lock pins it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Installed {
    pub name: String,
    pub version: String,
    pub architecture: String,
    /// The source package and its version (the package's own when its control names none).
    pub source: String,
    pub source_version: String,
    /// Where the package file came from: its repository URL and path, or the recipe's file.
    pub download_location: String,
    pub sha256: Digest,
    /// Every path it installed, as `/usr/bin/x`; regular files among them are listed as
    /// CONTAINS in the SBOM.
    pub files: Vec<String>,
}

impl Installed {
    /// Its package URL: the version percent-encoded (an epoch's `:`, a `+`).
    pub fn purl(&self) -> String {
        let mut version = String::new();
        for b in self.version.bytes() {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                version.push(char::from(b));
            } else {
                version.push_str(&format!("%{b:02X}"));
            }
        }
        format!("pkg:deb/debian/{}@{version}?arch={}", self.name, self.architecture)
    }
}
