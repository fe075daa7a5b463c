//! Remote storage in an S3 bucket, through `aws-sdk-s3`. Works with AWS and
//! with S3-compatible servers (path-style addressing when an endpoint is
//! given). Credentials come from the usual AWS environment.

use std::fmt;

use anyhow::Context;
use aws_sdk_s3::error::{DisplayErrorContext, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{Delete, ObjectIdentifier};
use bytes::Bytes;

use crate::{RemoteError, RemotePath};

/// S3's limit on the keys of one DeleteObjects request.
const MAX_KEYS_PER_DELETE: usize = 1000;

#[derive(Clone)]
pub struct S3Bucket {
    client: aws_sdk_s3::Client,
    bucket: String,
    /// Empty, or ends with `/`.
    prefix: String,
    endpoint: Option<String>,
}

impl fmt::Display for S3Bucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.prefix)?;
        if let Some(e) = &self.endpoint {
            write!(f, " at {e}")?;
        }
        Ok(())
    }
}

fn sdk_error<E: std::error::Error + 'static, R: fmt::Debug>(
    what: String,
    e: SdkError<E, R>,
) -> RemoteError {
    RemoteError::Other(anyhow::anyhow!("{what}: {}", DisplayErrorContext(e)))
}

impl S3Bucket {
    pub async fn new(
        bucket: &str,
        region: &str,
        prefix: Option<&str>,
        endpoint: Option<&str>,
    ) -> anyhow::Result<S3Bucket> {
        let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(region.to_owned()))
            .load()
            .await;
        let mut builder = aws_sdk_s3::config::Builder::from(&shared);
        if let Some(endpoint) = endpoint {
            builder = builder.endpoint_url(endpoint).force_path_style(true);
        }
        let prefix = match prefix.map(|p| p.trim_matches('/')) {
            None | Some("") => String::new(),
            Some(p) => format!("{p}/"),
        };
        Ok(S3Bucket {
            client: aws_sdk_s3::Client::from_conf(builder.build()),
            bucket: bucket.to_owned(),
            prefix,
            endpoint: endpoint.map(str::to_owned),
        })
    }

    fn key(&self, path: &RemotePath) -> String {
        format!("{}{}", self.prefix, path.as_str())
    }

    pub async fn upload(&self, path: &RemotePath, data: Bytes) -> Result<(), RemoteError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(self.key(path))
            .body(ByteStream::from(data))
            .send()
            .await
            .map_err(|e| sdk_error(format!("uploading {path} to {self}"), e))?;
        Ok(())
    }

    pub async fn download(&self, path: &RemotePath) -> Result<Bytes, RemoteError> {
        let response = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.key(path))
            .send()
            .await;
        let response = match response {
            Ok(r) => r,
            Err(e) => {
                if e.as_service_error().is_some_and(|s| s.is_no_such_key()) {
                    return Err(RemoteError::NotFound(path.clone()));
                }
                return Err(sdk_error(format!("downloading {path} from {self}"), e));
            }
        };
        let data = response
            .body
            .collect()
            .await
            .with_context(|| format!("reading {path} from {self}"))?;
        Ok(data.into_bytes())
    }

    pub async fn list(&self, prefix: Option<&RemotePath>) -> Result<Vec<RemotePath>, RemoteError> {
        let key_prefix = match prefix {
            Some(p) => self.key(p),
            None => self.prefix.clone(),
        };
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&key_prefix)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| sdk_error(format!("listing {key_prefix} in {self}"), e))?;
            for object in page.contents() {
                let Some(key) = object.key() else { continue };
                let Some(relative) = key.strip_prefix(&self.prefix) else {
                    continue;
                };
                if let Ok(p) = RemotePath::new(relative) {
                    if prefix.is_none_or(|prefix| p.starts_with(prefix)) {
                        out.push(p);
                    }
                }
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_owned()),
                _ => break,
            }
        }
        Ok(out)
    }

    pub async fn delete_many(&self, paths: &[RemotePath]) -> Result<(), RemoteError> {
        for chunk in paths.chunks(MAX_KEYS_PER_DELETE) {
            let objects = chunk
                .iter()
                .map(|p| ObjectIdentifier::builder().key(self.key(p)).build())
                .collect::<Result<Vec<_>, _>>()
                .context("building a delete request")?;
            let delete = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .context("building a delete request")?;
            let response = self
                .client
                .delete_objects()
                .bucket(&self.bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|e| sdk_error(format!("deleting {} objects in {self}", chunk.len()), e))?;
            if let Some(error) = response.errors().first() {
                return Err(anyhow::anyhow!(
                    "deleting {:?} in {self}: {}",
                    error.key().unwrap_or("?"),
                    error.message().unwrap_or("unknown error")
                )
                .into());
            }
        }
        Ok(())
    }
}
