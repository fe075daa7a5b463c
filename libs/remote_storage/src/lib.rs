//! Object storage behind one interface: [`GenericRemoteStorage`] over a
//! local directory ([`LocalFs`], the default for neon_local) or an S3
//! bucket ([`S3Bucket`], any S3-compatible server).
//!
//! Objects are named by [`RemotePath`]s: relative, `/`-separated, without
//! `.` or `..` components. Uploads replace an object whole (a reader sees
//! the old or the new object, never a part); a missing object is
//! [`RemoteError::NotFound`]; deleting a missing object succeeds.
//!
//! [`GenericRemoteStorage::with_hook`] wraps a storage so that a test can
//! see, delay or fail each operation before it reaches the backend.

mod local_fs;
mod s3;

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub use local_fs::LocalFs;
pub use s3::S3Bucket;

/// Where objects go, as daemons' configs give it (TOML):
/// `{ local_path = "..." }` or `{ bucket_name = "...", bucket_region =
/// "...", prefix_in_bucket = "...", endpoint = "http://..." }`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum RemoteStorageConfig {
    LocalFs {
        local_path: PathBuf,
    },
    S3 {
        bucket_name: String,
        bucket_region: String,
        /// Every object's key starts with this (and a `/`).
        #[serde(default)]
        prefix_in_bucket: Option<String>,
        /// An S3-compatible server's URL; AWS when unset. Credentials come
        /// from the usual AWS environment (variables, profile files).
        #[serde(default)]
        endpoint: Option<String>,
    },
}

impl RemoteStorageConfig {
    /// Parse the inline TOML table a command-line flag gives, e.g.
    /// `{ local_path = "/data/remote" }`.
    pub fn from_inline_toml(text: &str) -> Result<RemoteStorageConfig, String> {
        #[derive(Deserialize)]
        struct Wrapper {
            remote_storage: RemoteStorageConfig,
        }
        toml::from_str::<Wrapper>(&format!("remote_storage = {text}"))
            .map(|w| w.remote_storage)
            .map_err(|e| {
                format!(
                    "expected {{ local_path = \"...\" }} or {{ bucket_name = \"...\", bucket_region = \"...\", prefix_in_bucket = \"...\", endpoint = \"...\" }}: {e}"
                )
            })
    }
}

/// A relative object name.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RemotePath(String);

#[derive(Debug, thiserror::Error)]
#[error(
    "invalid remote path {0:?}: use a relative '/'-separated path without '.', '..' or empty parts"
)]
pub struct InvalidRemotePath(String);

impl RemotePath {
    pub fn new(path: &str) -> Result<RemotePath, InvalidRemotePath> {
        let ok = !path.is_empty()
            && path
                .split('/')
                .all(|part| !part.is_empty() && part != "." && part != "..")
            && !path.contains('\0')
            && !path.contains('\\');
        if ok {
            Ok(RemotePath(path.to_owned()))
        } else {
            Err(InvalidRemotePath(path.to_owned()))
        }
    }

    /// `self/name` (`name` may hold several parts).
    pub fn join(&self, name: &str) -> Result<RemotePath, InvalidRemotePath> {
        RemotePath::new(&format!("{}/{name}", self.0))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The last part.
    pub fn object_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// Whether `prefix` is this path or a directory above it.
    pub fn starts_with(&self, prefix: &RemotePath) -> bool {
        self.0 == prefix.0
            || (self.0.starts_with(&prefix.0)
                && self.0.as_bytes().get(prefix.0.len()) == Some(&b'/'))
    }
}

impl fmt::Display for RemotePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RemotePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("{0} does not exist in remote storage")]
    NotFound(RemotePath),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// A configured remote storage.
#[derive(Clone)]
pub enum GenericRemoteStorage {
    LocalFs(LocalFs),
    S3(S3Bucket),
    /// Another storage behind a hook (see [`GenericRemoteStorage::with_hook`]).
    Hooked(Arc<Hooked>),
}

/// An operation about to be sent to a storage, as a hook sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operation {
    Upload(RemotePath),
    Download(RemotePath),
    /// A listing under the prefix (everything if `None`).
    List(Option<RemotePath>),
    /// One request deleting these objects.
    Delete(Vec<RemotePath>),
}

impl Operation {
    /// Whether the operation touches an object at or below `prefix` (a
    /// listing: whether it lists inside `prefix`).
    pub fn touches(&self, prefix: &RemotePath) -> bool {
        match self {
            Operation::Upload(p) | Operation::Download(p) => p.starts_with(prefix),
            Operation::List(p) => p.as_ref().is_none_or(|p| p.starts_with(prefix)),
            Operation::Delete(paths) => paths.iter().any(|p| p.starts_with(prefix)),
        }
    }
}

/// What a hook returns: the operation goes ahead when the future yields
/// `Ok`, and fails with the error otherwise (the backend is not called).
pub type HookFuture = Pin<Box<dyn Future<Output = Result<(), RemoteError>> + Send>>;

/// A hook called before every operation of a wrapped storage.
pub type Hook = Arc<dyn Fn(Operation) -> HookFuture + Send + Sync>;

/// A storage whose operations first go through a hook.
pub struct Hooked {
    inner: GenericRemoteStorage,
    hook: Hook,
}

impl fmt::Debug for GenericRemoteStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GenericRemoteStorage::LocalFs(l) => write!(f, "local directory {}", l.root().display()),
            GenericRemoteStorage::S3(s) => write!(f, "{s}"),
            GenericRemoteStorage::Hooked(h) => write!(f, "{:?} (with a hook)", h.inner),
        }
    }
}

impl GenericRemoteStorage {
    pub async fn from_config(config: &RemoteStorageConfig) -> anyhow::Result<GenericRemoteStorage> {
        Ok(match config {
            RemoteStorageConfig::LocalFs { local_path } => {
                GenericRemoteStorage::LocalFs(LocalFs::new(local_path)?)
            }
            RemoteStorageConfig::S3 {
                bucket_name,
                bucket_region,
                prefix_in_bucket,
                endpoint,
            } => GenericRemoteStorage::S3(
                S3Bucket::new(
                    bucket_name,
                    bucket_region,
                    prefix_in_bucket.as_deref(),
                    endpoint.as_deref(),
                )
                .await?,
            ),
        })
    }

    /// This storage with `hook` called before each of its operations:
    /// for tests, which use it to watch, delay or fail operations (a crash
    /// between two operations is every operation after it failing).
    pub fn with_hook(self, hook: Hook) -> GenericRemoteStorage {
        GenericRemoteStorage::Hooked(Arc::new(Hooked { inner: self, hook }))
    }

    /// Store `data` as `path`, replacing any object there.
    pub async fn upload(&self, path: &RemotePath, data: Bytes) -> Result<(), RemoteError> {
        match self {
            GenericRemoteStorage::LocalFs(l) => l.upload(path, data).await,
            GenericRemoteStorage::S3(s) => s.upload(path, data).await,
            GenericRemoteStorage::Hooked(h) => {
                (h.hook)(Operation::Upload(path.clone())).await?;
                Box::pin(h.inner.upload(path, data)).await
            }
        }
    }

    /// Store the local file `from` as `path`.
    pub async fn upload_file(&self, path: &RemotePath, from: &Path) -> Result<(), RemoteError> {
        let data = tokio::fs::read(from)
            .await
            .map_err(|e| anyhow::anyhow!("reading {} to upload it: {e}", from.display()))?;
        self.upload(path, Bytes::from(data)).await
    }

    pub async fn download(&self, path: &RemotePath) -> Result<Bytes, RemoteError> {
        match self {
            GenericRemoteStorage::LocalFs(l) => l.download(path).await,
            GenericRemoteStorage::S3(s) => s.download(path).await,
            GenericRemoteStorage::Hooked(h) => {
                (h.hook)(Operation::Download(path.clone())).await?;
                Box::pin(h.inner.download(path)).await
            }
        }
    }

    /// Download `path` into the local file `to`: a temporary file, fsync,
    /// then a rename, so `to` is whole or absent.
    pub async fn download_to_file(&self, path: &RemotePath, to: &Path) -> Result<u64, RemoteError> {
        let data = self.download(path).await?;
        let tmp = to.with_extension("download.tmp");
        let write = async {
            let mut f = tokio::fs::File::create(&tmp).await?;
            tokio::io::AsyncWriteExt::write_all(&mut f, &data).await?;
            f.sync_all().await?;
            tokio::fs::rename(&tmp, to).await
        };
        write
            .await
            .map_err(|e| anyhow::anyhow!("writing {} downloaded to {}: {e}", path, to.display()))?;
        Ok(data.len() as u64)
    }

    /// Every object at or below `prefix` (all objects if `None`), sorted.
    pub async fn list(&self, prefix: Option<&RemotePath>) -> Result<Vec<RemotePath>, RemoteError> {
        let mut out = match self {
            GenericRemoteStorage::LocalFs(l) => l.list(prefix).await?,
            GenericRemoteStorage::S3(s) => s.list(prefix).await?,
            GenericRemoteStorage::Hooked(h) => {
                (h.hook)(Operation::List(prefix.cloned())).await?;
                Box::pin(h.inner.list(prefix)).await?
            }
        };
        out.sort();
        Ok(out)
    }

    /// Delete `path`; a missing object is not an error.
    pub async fn delete(&self, path: &RemotePath) -> Result<(), RemoteError> {
        self.delete_many(std::slice::from_ref(path)).await
    }

    pub async fn delete_many(&self, paths: &[RemotePath]) -> Result<(), RemoteError> {
        if paths.is_empty() {
            return Ok(());
        }
        match self {
            GenericRemoteStorage::LocalFs(l) => l.delete_many(paths).await,
            GenericRemoteStorage::S3(s) => s.delete_many(paths).await,
            GenericRemoteStorage::Hooked(h) => {
                (h.hook)(Operation::Delete(paths.to_vec())).await?;
                Box::pin(h.inner.delete_many(paths)).await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_paths() {
        for bad in ["", "/a", "a/", "a//b", "a/../b", ".", "a/./b", "a\\b"] {
            assert!(RemotePath::new(bad).is_err(), "{bad}");
        }
        let p = RemotePath::new("tenants/t1/timelines/l1/index_part.json").unwrap();
        assert_eq!(p.object_name(), "index_part.json");
        assert!(p.starts_with(&RemotePath::new("tenants/t1").unwrap()));
        assert!(!p.starts_with(&RemotePath::new("tenants/t").unwrap()));
    }

    #[test]
    fn config_forms() {
        let local: RemoteStorageConfig = serde_json::from_str(r#"{"local_path": "/x"}"#).unwrap();
        assert_eq!(
            local,
            RemoteStorageConfig::LocalFs {
                local_path: "/x".into()
            }
        );
        let s3: RemoteStorageConfig = serde_json::from_str(
            r#"{"bucket_name": "b", "bucket_region": "us-east-1", "endpoint": "http://127.0.0.1:9000"}"#,
        )
        .unwrap();
        assert!(matches!(s3, RemoteStorageConfig::S3 { .. }));
        assert!(serde_json::from_str::<RemoteStorageConfig>(r#"{"bucket": "b"}"#).is_err());
        assert_eq!(
            RemoteStorageConfig::from_inline_toml(r#"{ local_path = "/x" }"#).unwrap(),
            local
        );
        assert!(matches!(
            RemoteStorageConfig::from_inline_toml(
                r#"{ bucket_name = "b", bucket_region = "r", endpoint = "http://h:1" }"#
            ),
            Ok(RemoteStorageConfig::S3 { .. })
        ));
        assert!(RemoteStorageConfig::from_inline_toml("{ nope = 1 }").is_err());
        assert!(RemoteStorageConfig::from_inline_toml("garbage").is_err());
    }

    #[tokio::test]
    async fn local_fs_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let storage = GenericRemoteStorage::from_config(&RemoteStorageConfig::LocalFs {
            local_path: dir.path().join("remote"),
        })
        .await
        .unwrap();
        let a = RemotePath::new("tenants/t/a").unwrap();
        let b = RemotePath::new("tenants/t/sub/b").unwrap();
        let c = RemotePath::new("other/c").unwrap();
        assert!(matches!(
            storage.download(&a).await,
            Err(RemoteError::NotFound(_))
        ));
        storage
            .upload(&a, Bytes::from_static(b"one"))
            .await
            .unwrap();
        storage
            .upload(&a, Bytes::from_static(b"two"))
            .await
            .unwrap();
        storage
            .upload(&b, Bytes::from_static(b"bee"))
            .await
            .unwrap();
        storage
            .upload(&c, Bytes::from_static(b"sea"))
            .await
            .unwrap();
        assert_eq!(&storage.download(&a).await.unwrap()[..], b"two");
        let tenants = RemotePath::new("tenants").unwrap();
        assert_eq!(
            storage.list(Some(&tenants)).await.unwrap(),
            vec![a.clone(), b.clone()]
        );
        assert_eq!(storage.list(None).await.unwrap().len(), 3);
        let local = dir.path().join("b.copy");
        assert_eq!(storage.download_to_file(&b, &local).await.unwrap(), 3);
        assert_eq!(std::fs::read(&local).unwrap(), b"bee");
        storage.delete_many(&[a.clone(), b.clone()]).await.unwrap();
        storage.delete(&a).await.unwrap();
        assert!(storage.list(Some(&tenants)).await.unwrap().is_empty());
        assert_eq!(storage.list(None).await.unwrap(), vec![c]);
    }

    #[tokio::test]
    async fn a_hook_sees_every_operation_and_can_fail_it() {
        let dir = tempfile::tempdir().unwrap();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        let storage = GenericRemoteStorage::LocalFs(LocalFs::new(dir.path()).unwrap()).with_hook(
            Arc::new(move |op: Operation| {
                let fail = matches!(&op, Operation::Delete(_));
                log.lock().unwrap().push(op);
                Box::pin(async move {
                    if fail {
                        Err(RemoteError::Other(anyhow::anyhow!("injected")))
                    } else {
                        Ok(())
                    }
                })
            }),
        );
        let a = RemotePath::new("t/a").unwrap();
        let t = RemotePath::new("t").unwrap();
        storage.upload(&a, Bytes::from_static(b"x")).await.unwrap();
        assert_eq!(&storage.download(&a).await.unwrap()[..], b"x");
        assert_eq!(storage.list(Some(&t)).await.unwrap(), vec![a.clone()]);
        // A failed operation never reaches the backend.
        assert!(storage.delete(&a).await.is_err());
        assert_eq!(storage.list(None).await.unwrap(), vec![a.clone()]);
        let seen = seen.lock().unwrap().clone();
        assert_eq!(
            seen,
            vec![
                Operation::Upload(a.clone()),
                Operation::Download(a.clone()),
                Operation::List(Some(t.clone())),
                Operation::Delete(vec![a.clone()]),
                Operation::List(None),
            ]
        );
        assert!(seen.iter().all(|op| op.touches(&t)));
        assert!(!Operation::Upload(a).touches(&RemotePath::new("u").unwrap()));
    }
}
