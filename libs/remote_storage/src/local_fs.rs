//! Remote storage in a local directory: each object a file under the root.
//! Writes go to a temporary file that is fsynced and renamed into place.

use std::path::{Path, PathBuf};

use anyhow::Context;
use bytes::Bytes;

use crate::{RemoteError, RemotePath};

const TMP_SUFFIX: &str = ".___temp";

#[derive(Clone, Debug)]
pub struct LocalFs {
    root: PathBuf,
}

impl LocalFs {
    /// Objects under `root`, which is created if missing.
    pub fn new(root: &Path) -> anyhow::Result<LocalFs> {
        std::fs::create_dir_all(root)
            .with_context(|| format!("creating the remote storage directory {}", root.display()))?;
        Ok(LocalFs {
            root: root.to_owned(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn file(&self, path: &RemotePath) -> PathBuf {
        self.root.join(path.as_str())
    }

    pub async fn upload(&self, path: &RemotePath, data: Bytes) -> Result<(), RemoteError> {
        let file = self.file(path);
        let tmp = PathBuf::from(format!("{}{TMP_SUFFIX}", file.display()));
        let write = async {
            if let Some(dir) = file.parent() {
                tokio::fs::create_dir_all(dir).await?;
            }
            let mut f = tokio::fs::File::create(&tmp).await?;
            tokio::io::AsyncWriteExt::write_all(&mut f, &data).await?;
            f.sync_all().await?;
            tokio::fs::rename(&tmp, &file).await?;
            if let Some(dir) = file.parent() {
                tokio::fs::File::open(dir).await?.sync_all().await?;
            }
            std::io::Result::Ok(())
        };
        write
            .await
            .with_context(|| format!("writing {}", file.display()))?;
        Ok(())
    }

    pub async fn download(&self, path: &RemotePath) -> Result<Bytes, RemoteError> {
        let file = self.file(path);
        match tokio::fs::read(&file).await {
            Ok(data) => Ok(Bytes::from(data)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(RemoteError::NotFound(path.clone()))
            }
            Err(e) => Err(anyhow::anyhow!("reading {}: {e}", file.display()).into()),
        }
    }

    pub async fn list(&self, prefix: Option<&RemotePath>) -> Result<Vec<RemotePath>, RemoteError> {
        let start = prefix.map_or(self.root.clone(), |p| self.file(p));
        let mut out = Vec::new();
        let mut stack = vec![start];
        while let Some(dir) = stack.pop() {
            let mut entries = match tokio::fs::read_dir(&dir).await {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) if e.raw_os_error() == Some(20) => {
                    // ENOTDIR: the prefix names an object.
                    if let Some(p) = prefix {
                        out.push(p.clone());
                    }
                    continue;
                }
                Err(e) => return Err(anyhow::anyhow!("listing {}: {e}", dir.display()).into()),
            };
            while let Some(entry) = entries
                .next_entry()
                .await
                .with_context(|| format!("listing {}", dir.display()))?
            {
                let path = entry.path();
                let kind = entry
                    .file_type()
                    .await
                    .with_context(|| format!("inspecting {}", path.display()))?;
                if kind.is_dir() {
                    stack.push(path);
                    continue;
                }
                let Ok(relative) = path.strip_prefix(&self.root) else {
                    continue;
                };
                let Some(relative) = relative.to_str() else {
                    continue;
                };
                if relative.ends_with(TMP_SUFFIX) {
                    continue;
                }
                if let Ok(p) = RemotePath::new(relative) {
                    out.push(p);
                }
            }
        }
        Ok(out)
    }

    pub async fn delete_many(&self, paths: &[RemotePath]) -> Result<(), RemoteError> {
        for path in paths {
            let file = self.file(path);
            match tokio::fs::remove_file(&file).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(anyhow::anyhow!("removing {}: {e}", file.display()).into()),
            }
        }
        Ok(())
    }
}
