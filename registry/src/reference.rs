//! Registry references: `HOST[:PORT]/REPO[:TAG][@sha256:HEX]`.

use std::fmt;
use std::str::FromStr;

use kiln_oci::{Digest, RepoName, Tag};

use crate::error::RegistryError;

/// An image in a registry: host, repository, and a tag, a digest or both.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryRef {
    /// `registry.example.com`, `127.0.0.1:5000`, `localhost:5000`.
    pub host: String,
    /// The repository within the registry, e.g. `team/app`.
    pub repository: RepoName,
    pub tag: Option<Tag>,
    pub digest: Option<Digest>,
}

impl FromStr for RegistryRef {
    type Err = RegistryError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid =
            |reason: String| RegistryError::InvalidReference { reference: s.to_string(), reason };
        let rest = s.strip_prefix("docker://").unwrap_or(s);
        let (host, path) = rest.split_once('/').ok_or_else(|| {
            invalid("expected HOST[:PORT]/REPO[:TAG] or HOST/REPO@sha256:HEX".into())
        })?;
        // As Docker tells a registry host from a repository's first component: it has a dot
        // or a port, or is localhost. kiln has no default registry, so one must be named.
        if !(host.contains('.') || host.contains(':') || host == "localhost") {
            return Err(invalid(format!(
                "{host:?} is not a registry host (it needs a dot or a port, or be localhost)"
            )));
        }
        if !host.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b)) {
            return Err(invalid(format!("{host:?} is not a host name")));
        }
        let (path, digest) = match path.split_once('@') {
            Some((path, digest)) => {
                (path, Some(digest.parse::<Digest>().map_err(|e| invalid(e.to_string()))?))
            }
            None => (path, None),
        };
        // A tag follows the last ':' after the last '/'.
        let last = path.rfind('/').map_or(0, |i| i + 1);
        let (repository, tag) = match path[last..].find(':') {
            Some(i) => (&path[..last + i], Some(&path[last + i + 1..])),
            None => (path, None),
        };
        let repository: RepoName =
            repository.parse().map_err(|e: kiln_oci::NameError| invalid(e.to_string()))?;
        let tag = tag.map(|t| t.parse::<Tag>()).transpose().map_err(|e| invalid(e.to_string()))?;
        Ok(RegistryRef { host: host.to_string(), repository, tag, digest })
    }
}

impl fmt::Display for RegistryRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.host, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl RegistryRef {
    /// `HOST/REPO`, the name a signature's `docker-reference` gives.
    pub fn repository_name(&self) -> String {
        format!("{}/{}", self.host, self.repository)
    }
}

#[cfg(test)]
mod tests {
    use super::RegistryRef;

    #[test]
    fn parses_host_port_repository_tag_and_digest() {
        let r: RegistryRef = "127.0.0.1:5000/team/app:1.0".parse().unwrap();
        assert_eq!((r.host.as_str(), r.repository.as_str()), ("127.0.0.1:5000", "team/app"));
        assert_eq!(r.tag.unwrap().as_str(), "1.0");
        let hex = "a".repeat(64);
        let r: RegistryRef = format!("docker://reg.example/app@sha256:{hex}").parse().unwrap();
        assert_eq!(r.digest.unwrap().hex(), hex);
        assert!(r.tag.is_none());
        assert_eq!(r.to_string(), format!("reg.example/app@sha256:{hex}"));
    }

    #[test]
    fn refuses_what_names_no_registry() {
        for bad in ["app:1.0", "team/app", "reg.example/App", "reg.example/app@sha256:12"] {
            assert!(bad.parse::<RegistryRef>().is_err(), "{bad}");
        }
    }
}
