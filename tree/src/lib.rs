//! The file tree an image is made of, shared by every writer of it (tar layers, disk formats).
//!
//! A [`Tree`] maps [`ImagePath`]s to [`Entry`]s; a regular file's bytes are inline or in a
//! [`HostFile`] read back through [`host_file::stream`], which refuses a file that changed since
//! it was hashed (its [`FileStamp`] or its digest tells). Every timestamp is the one [`Epoch`].

pub mod epoch;
pub mod host_file;
pub mod image_path;
pub mod stamp;
pub mod tree;

pub use epoch::{Epoch, EpochError};
pub use host_file::{HostFile, HostFileError};
pub use image_path::{ImagePath, ImagePathError};
pub use stamp::FileStamp;
pub use tree::{Content, Device, Entry, EntryKind, Meta, Tree, TreeError};
