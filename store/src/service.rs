//! The object storage services a store can live in.

/// The object storage services kiln can open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    /// Amazon S3 and S3-compatible servers (`s3://`).
    S3,
    /// Google Cloud Storage (`gs://`).
    Gcs,
    /// Azure Blob Storage (`az://`).
    Azure,
}

impl Service {
    /// The service's name, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Service::S3 => "S3",
            Service::Gcs => "GCS",
            Service::Azure => "Azure",
        }
    }

    /// What the service calls the top-level folder of a store: a bucket or a container.
    pub fn bucket_noun(self) -> &'static str {
        match self {
            Service::Azure => "container",
            Service::S3 | Service::Gcs => "bucket",
        }
    }

    /// The URL scheme that names it.
    pub fn scheme(self) -> &'static str {
        match self {
            Service::S3 => "s3",
            Service::Gcs => "gs",
            Service::Azure => "az",
        }
    }
}
