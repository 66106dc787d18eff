//! Backend failures in the user's terms. A cloud store is wrapped in [`Explaining`], which
//! replaces the cause of every error with a [`BackendFailure`]: which request, which server,
//! the status and error code it answered, and what to do about it, with the original error
//! still chained as its source. A missing bucket or container stops being a "not found"
//! error, so no caller mistakes it for a missing object.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, UploadPart,
};

use crate::service::Service;

/// Error codes with which servers say that the bucket or container itself is missing.
const MISSING_BUCKET_CODES: &[&str] = &["NoSuchBucket", "ContainerNotFound"];

/// Error codes (S3, Azure, GCS) for credentials that are missing, wrong or not allowed.
const DENIED_CODES: &[&str] = &[
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "AuthenticationFailed",
    "AuthorizationFailure",
    "AuthorizationPermissionMismatch",
    "InvalidAuthenticationInfo",
    "NoAuthenticationInformation",
];

/// What a failure comes down to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// The bucket or container does not exist.
    MissingBucket,
    /// The server refused the credentials, or they may not do this.
    Denied,
    /// No connection could be made (refused, unresolvable, timed out).
    Unreachable,
    /// No credentials were configured, and the cloud's metadata service, which the client
    /// asks next, did not give any.
    NoCredentials,
    /// Anything else the server answered.
    Other,
}

/// One failed request to a cloud store, explained.
#[derive(Debug)]
pub struct BackendFailure {
    pub service: Service,
    /// The bucket or container.
    pub bucket: String,
    pub cause: Cause,
    /// The HTTP method of the failed request, when known.
    pub method: Option<String>,
    /// Whether the request listed keys.
    pub listing: bool,
    /// `scheme://host:port` of the server, when known.
    pub endpoint: Option<String>,
    /// The HTTP status the server answered, e.g. `404 Not Found`.
    pub status: Option<String>,
    /// The server's error code, e.g. `NoSuchBucket`.
    pub code: Option<String>,
    /// The server's own explanation, first line only.
    pub message: Option<String>,
    source: Box<dyn std::error::Error + Send + Sync>,
}

impl BackendFailure {
    /// What the user was doing, for a message: "writing", "reading", "listing"...
    pub fn operation(&self) -> &'static str {
        if self.cause == Cause::NoCredentials {
            return "getting credentials for";
        }
        if self.listing {
            return "listing";
        }
        match self.method.as_deref() {
            Some("GET") => "reading",
            Some("HEAD") => "looking up",
            Some("PUT") => "writing",
            Some("POST") => "uploading",
            Some("DELETE") => "deleting",
            _ => "accessing",
        }
    }

    fn noun(&self) -> &'static str {
        self.service.bucket_noun()
    }

    fn hint(&self) -> String {
        let noun = self.noun();
        let bucket = &self.bucket;
        match (self.cause, self.service) {
            (Cause::MissingBucket, _) => format!(
                "create the {noun} {bucket}, or fix the store location (or the endpoint, if it \
                 names the wrong server)"
            ),
            (Cause::NoCredentials, Service::S3) => "set AWS_ACCESS_KEY_ID and \
                 AWS_SECRET_ACCESS_KEY (or --store-option aws_access_key_id=...), or run where \
                 the instance metadata service gives a role"
                .to_string(),
            (Cause::NoCredentials, Service::Azure) => "set AZURE_STORAGE_ACCOUNT_NAME with \
                 AZURE_STORAGE_ACCOUNT_KEY or a SAS token (or --store-option ...), or run where \
                 a managed identity is available"
                .to_string(),
            (Cause::NoCredentials, Service::Gcs) => "set GOOGLE_SERVICE_ACCOUNT or \
                 GOOGLE_APPLICATION_CREDENTIALS (or --store-option google_service_account=...), \
                 or run where the metadata server gives a service account"
                .to_string(),
            (Cause::Denied, Service::S3) => format!(
                "check the AWS_* credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, \
                 AWS_SESSION_TOKEN, or --store-option aws_access_key_id=...) and that they may \
                 use bucket {bucket}"
            ),
            (Cause::Denied, Service::Azure) => format!(
                "check the AZURE_* credentials (AZURE_STORAGE_ACCOUNT_NAME with \
                 AZURE_STORAGE_ACCOUNT_KEY or a SAS token, or --store-option \
                 azure_storage_account_key=...) and that they may use container {bucket}"
            ),
            (Cause::Denied, Service::Gcs) => format!(
                "check the GOOGLE_* credentials (GOOGLE_SERVICE_ACCOUNT or \
                 GOOGLE_APPLICATION_CREDENTIALS, or --store-option google_service_account=...) \
                 and that they may use bucket {bucket}"
            ),
            (Cause::Unreachable, service) => format!(
                "check that the server runs and that the endpoint is right ({})",
                match service {
                    Service::S3 => "AWS_ENDPOINT or --store-option aws_endpoint=...",
                    Service::Azure => "AZURE_ENDPOINT or --store-option azure_endpoint=...",
                    Service::Gcs => "gcs_base_url in the service account key",
                }
            ),
            (Cause::Other, _) => String::new(),
        }
    }
}

impl fmt::Display for BackendFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let server = match &self.endpoint {
            Some(endpoint) => format!("the {} server at {endpoint}", self.service.name()),
            None => format!("the {} server", self.service.name()),
        };
        match (self.cause, &self.status) {
            (Cause::MissingBucket, _) => {
                write!(f, "the {} {} does not exist on {server}", self.noun(), self.bucket)?
            }
            (Cause::Unreachable, _) => write!(f, "cannot connect to {server}")?,
            (Cause::NoCredentials, status) => {
                let service = self.service.name();
                write!(f, "no {service} credentials are configured, and the metadata service")?;
                if let Some(endpoint) = &self.endpoint {
                    write!(f, " at {endpoint}")?;
                }
                match status {
                    Some(status) => write!(f, " answered {status}")?,
                    None => write!(f, " gave none")?,
                }
            }
            (_, Some(status)) => write!(f, "{server} answered {status}")?,
            (_, None) => write!(f, "{server} failed")?,
        }
        match (&self.code, &self.message) {
            (Some(code), Some(message)) => write!(f, " ({code}: {message})")?,
            (Some(code), None) => write!(f, " ({code})")?,
            (None, Some(message)) => write!(f, " ({message})")?,
            (None, None) => {}
        }
        let hint = self.hint();
        if !hint.is_empty() {
            write!(f, "; {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for BackendFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.source.as_ref())
    }
}

/// The bucket a store lives in, as [`Explaining`] describes failures.
#[derive(Clone, Debug)]
struct Context {
    service: Service,
    bucket: String,
}

impl Context {
    /// Replaces the cause of `err` with a [`BackendFailure`]. The variant is kept (callers
    /// rely on `NotFound`, `AlreadyExists`...), except that a missing bucket becomes
    /// `Generic`: it is a failure of the store, never an absent object.
    fn explain(&self, err: object_store::Error) -> object_store::Error {
        use object_store::Error as E;
        let failure = |source| Box::new(self.failure(source));
        match err {
            E::NotFound { path, source } => {
                let failure = failure(source);
                if failure.cause == Cause::MissingBucket {
                    E::Generic { store: self.service.name(), source: failure }
                } else {
                    E::NotFound { path, source: failure }
                }
            }
            E::Generic { store, source } => E::Generic { store, source: failure(source) },
            E::AlreadyExists { path, source } => E::AlreadyExists { path, source: failure(source) },
            E::Precondition { path, source } => E::Precondition { path, source: failure(source) },
            E::NotModified { path, source } => E::NotModified { path, source: failure(source) },
            E::PermissionDenied { path, source } => {
                E::PermissionDenied { path, source: failure(source) }
            }
            E::Unauthenticated { path, source } => {
                E::Unauthenticated { path, source: failure(source) }
            }
            other => other,
        }
    }

    fn failure(&self, source: Box<dyn std::error::Error + Send + Sync>) -> BackendFailure {
        let facts = Facts::of(source.as_ref());
        let status_code = facts.status.as_deref().and_then(|s| s.get(..3)).unwrap_or_default();
        let code = facts.code.as_deref().unwrap_or_default();
        let writing = matches!(facts.method.as_deref(), Some("PUT" | "POST"));
        let cause = if facts.metadata_service {
            Cause::NoCredentials
        } else if MISSING_BUCKET_CODES.contains(&code)
            // A create-only write cannot miss its object: a bare 404 means no bucket.
            || (status_code == "404" && writing && facts.code.is_none())
        {
            Cause::MissingBucket
        } else if DENIED_CODES.contains(&code) || matches!(status_code, "401" | "403") {
            Cause::Denied
        } else if facts.unreachable {
            Cause::Unreachable
        } else {
            Cause::Other
        };
        BackendFailure {
            service: self.service,
            bucket: self.bucket.clone(),
            cause,
            method: facts.method,
            listing: facts.listing,
            endpoint: facts.endpoint,
            status: facts.status,
            code: facts.code,
            message: facts.message,
            source,
        }
    }
}

/// What the error chain of one failed request says. object_store keeps the request's method,
/// URL, status and response body only in its messages, so they are read from there.
#[derive(Default)]
struct Facts {
    method: Option<String>,
    listing: bool,
    endpoint: Option<String>,
    status: Option<String>,
    code: Option<String>,
    message: Option<String>,
    unreachable: bool,
    /// The request went to a cloud metadata service, which a client asks for credentials only
    /// when none were configured.
    metadata_service: bool,
}

/// Hosts of the cloud metadata services credential providers fall back to (AWS EC2 and ECS,
/// Azure IMDS, GCE).
const METADATA_HOSTS: &[&str] =
    &["169.254.169.254", "169.254.170.2", "[fd00:ec2::254]", "metadata.google.internal"];

impl Facts {
    fn of(error: &(dyn std::error::Error + 'static)) -> Facts {
        let mut facts = Facts::default();
        let mut next = Some(error);
        while let Some(err) = next {
            facts.read(&err.to_string());
            next = err.source();
        }
        facts
    }

    fn read(&mut self, text: &str) {
        self.listing |= text.contains("list request");
        // The HTTP client's own error sits behind a transparent wrapper, so only its text is
        // seen: "client error (Connect): tcp connect error: Connection refused", "dns error".
        self.unreachable |= ["client error (Connect)", "tcp connect error", "dns error"]
            .iter()
            .any(|needle| text.contains(needle));
        if let Some(rest) = text.split("Error performing ").nth(1) {
            let mut words = rest.split_whitespace();
            if let (Some(method), Some(url), None) = (words.next(), words.next(), &self.method) {
                if method.chars().all(|c| c.is_ascii_uppercase()) {
                    self.method = Some(method.to_string());
                    self.listing |= url.contains("list-type=") || url.contains("comp=list");
                    let parsed = url::Url::parse(url).ok();
                    self.metadata_service = parsed
                        .as_ref()
                        .and_then(|u| u.host_str())
                        .is_some_and(|host| METADATA_HOSTS.contains(&host));
                    self.endpoint = parsed.map(|u| u.origin().ascii_serialization());
                }
            }
        }
        if self.status.is_none() {
            if let Some(rest) = text.split("status code: ").nth(1) {
                let status = rest.split(':').next().unwrap_or_default().trim();
                if status.len() >= 3 && status[..3].chars().all(|c| c.is_ascii_digit()) {
                    self.status = Some(status.to_string());
                }
            }
        }
        if self.code.is_none() {
            self.code = between(text, "<Code>", "</Code>");
        }
        if self.message.is_none() {
            self.message = between(text, "<Message>", "</Message>")
                .or_else(|| between(text, "\"message\":\"", "\""));
        }
    }
}

/// The first line of the text between `open` and `close`, if any.
fn between(text: &str, open: &str, close: &str) -> Option<String> {
    let start = text.find(open)? + open.len();
    let len = text[start..].find(close)?;
    let inner = text[start..start + len].lines().next()?.trim();
    (!inner.is_empty()).then(|| inner.to_string())
}

/// A cloud store whose errors are explained (see the module docs).
#[derive(Debug)]
pub(crate) struct Explaining {
    inner: Arc<dyn ObjectStore>,
    context: Context,
}

impl Explaining {
    pub(crate) fn new(inner: Arc<dyn ObjectStore>, service: Service, bucket: &str) -> Explaining {
        Explaining { inner, context: Context { service, bucket: bucket.to_string() } }
    }

    fn explain<T>(&self, result: object_store::Result<T>) -> object_store::Result<T> {
        result.map_err(|e| self.context.explain(e))
    }

    fn explain_stream<T: Send + 'static>(
        &self,
        stream: BoxStream<'static, object_store::Result<T>>,
    ) -> BoxStream<'static, object_store::Result<T>> {
        let context = self.context.clone();
        stream.map_err(move |e| context.explain(e)).boxed()
    }
}

impl fmt::Display for Explaining {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.inner)
    }
}

#[async_trait]
impl ObjectStore for Explaining {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.explain(self.inner.put_opts(location, payload, opts).await)
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let inner = self.explain(self.inner.put_multipart_opts(location, opts).await)?;
        Ok(Box::new(ExplainingUpload { inner, context: self.context.clone() }))
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let mut got = self.explain(self.inner.get_opts(location, options).await)?;
        if let GetResultPayload::Stream(stream) = got.payload {
            got.payload = GetResultPayload::Stream(self.explain_stream(stream));
        }
        Ok(got)
    }

    async fn get_range(&self, location: &Path, range: Range<u64>) -> object_store::Result<Bytes> {
        self.explain(self.inner.get_range(location, range).await)
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        self.explain(self.inner.get_ranges(location, ranges).await)
    }

    async fn head(&self, location: &Path) -> object_store::Result<ObjectMeta> {
        self.explain(self.inner.head(location).await)
    }

    async fn delete(&self, location: &Path) -> object_store::Result<()> {
        self.explain(self.inner.delete(location).await)
    }

    fn delete_stream<'a>(
        &'a self,
        locations: BoxStream<'a, object_store::Result<Path>>,
    ) -> BoxStream<'a, object_store::Result<Path>> {
        let context = self.context.clone();
        self.inner.delete_stream(locations).map_err(move |e| context.explain(e)).boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.explain_stream(self.inner.list(prefix))
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.explain_stream(self.inner.list_with_offset(prefix, offset))
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.explain(self.inner.list_with_delimiter(prefix).await)
    }

    async fn copy(&self, from: &Path, to: &Path) -> object_store::Result<()> {
        self.explain(self.inner.copy(from, to).await)
    }

    async fn rename(&self, from: &Path, to: &Path) -> object_store::Result<()> {
        self.explain(self.inner.rename(from, to).await)
    }

    async fn copy_if_not_exists(&self, from: &Path, to: &Path) -> object_store::Result<()> {
        self.explain(self.inner.copy_if_not_exists(from, to).await)
    }

    async fn rename_if_not_exists(&self, from: &Path, to: &Path) -> object_store::Result<()> {
        self.explain(self.inner.rename_if_not_exists(from, to).await)
    }
}

/// A multipart upload whose errors are explained.
#[derive(Debug)]
struct ExplainingUpload {
    inner: Box<dyn MultipartUpload>,
    context: Context,
}

#[async_trait]
impl MultipartUpload for ExplainingUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let context = self.context.clone();
        let part = self.inner.put_part(data);
        Box::pin(async move { part.await.map_err(|e| context.explain(e)) })
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        self.inner.complete().await.map_err(|e| self.context.explain(e))
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.inner.abort().await.map_err(|e| self.context.explain(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_are_read_from_the_error_text() {
        let mut facts = Facts::default();
        facts.read(
            "Error performing PUT http://127.0.0.1:9/kiln/ci%2Fx in 2ms - Server returned \
             non-2xx status code: 404 Not Found: <?xml version=\"1.0\"?><Error>\n  \
             <Code>NoSuchBucket</Code>\n  <Message>The specified bucket does not exist\n\
             RequestId:1</Message></Error>",
        );
        assert_eq!(facts.method.as_deref(), Some("PUT"));
        assert_eq!(facts.endpoint.as_deref(), Some("http://127.0.0.1:9"));
        assert_eq!(facts.status.as_deref(), Some("404 Not Found"));
        assert_eq!(facts.code.as_deref(), Some("NoSuchBucket"));
        assert_eq!(facts.message.as_deref(), Some("The specified bucket does not exist"));
        assert!(!facts.listing);

        let mut facts = Facts::default();
        facts.read(
            "Error performing GET http://h:1/b?list-type=2&prefix=a in 1ms - Server returned \
             non-2xx status code: 400 Bad Request: {\"error\":{\"code\":400,\"message\":\"invalid \
             uploadType\"}}",
        );
        assert!(facts.listing);
        assert_eq!(facts.message.as_deref(), Some("invalid uploadType"));
        assert_eq!(facts.code, None);
    }

    #[test]
    fn a_failed_credentials_lookup_is_not_blamed_on_the_store() {
        let context = Context { service: Service::S3, bucket: "b".into() };
        // What object_store's S3 client says when no credentials are set and the EC2 metadata
        // service refuses its token request.
        let source: Box<dyn std::error::Error + Send + Sync> = "Generic S3 error: Error \
            performing PUT http://169.254.169.254/latest/api/token in 1ms - Server returned \
            non-2xx status code: 403 Forbidden: "
            .into();
        let failure = context.failure(source);
        assert_eq!(failure.cause, Cause::NoCredentials);
        assert_eq!(failure.operation(), "getting credentials for");
        let text = failure.to_string();
        assert!(text.starts_with("no S3 credentials are configured"), "{text}");
        assert!(text.contains("http://169.254.169.254 answered 403 Forbidden"), "{text}");
        assert!(text.contains("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"), "{text}");
        assert!(!text.contains("S3 server"), "{text}");
    }
}
