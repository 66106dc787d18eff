//! Debian packages for kiln, with no knowledge of images: reading `.deb` files as streams
//! of checked members, verifying a repository's signed `InRelease` and the indexes it
//! lists, comparing versions and resolving a dependency closure per architecture.

pub mod ar;
pub mod date;
pub mod deb822;
pub mod deb_file;
pub mod decompress;
pub mod installed;
pub mod member;
pub mod packages;
pub mod relation;
pub mod release;
pub mod repository;
pub mod resolve;
pub mod signature;
pub mod source;
pub mod version;

pub use deb_file::{read_deb, Control, DebError, Limits};
pub use installed::Installed;
pub use member::{Member, MemberKind, MemberPath};
pub use packages::{PackageRecord, Sha256};
pub use release::Release;
pub use resolve::{resolve, ResolveError};
pub use signature::Keyring;
pub use version::Version;
