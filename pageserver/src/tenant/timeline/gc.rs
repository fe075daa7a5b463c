//! Garbage collection: removing the layer files that no read at or above
//! the GC horizon (or at a retained branch point) needs.

use std::sync::Arc;

use utils::Lsn;

use crate::tenant::layer::map::PersistentLayer;
use crate::tenant::layer::LayerName;
use crate::tenant::metadata::fsync_dir;

use super::{lock, StorageError, Timeline};

impl Timeline {
    /// Remove the layer files that no read at or above `horizon`, nor at any
    /// of `retain_lsns` (the branch points of child timelines), needs: those
    /// entirely below the horizon whose whole key range is covered by a
    /// newer image layer at or below each such read. Records the horizon
    /// (persistently) first, so branching below it is refused. Returns the
    /// layers removed.
    pub fn gc(&self, horizon: Lsn, retain_lsns: &[Lsn]) -> Result<Vec<LayerName>, StorageError> {
        let dir = self.dir_or_err()?;
        let _compaction = lock(&self.compaction_lock);
        let _guard = lock(&self.flush_lock);
        {
            let mut h = self.gc_horizon.write().unwrap_or_else(|p| p.into_inner());
            if horizon > *h {
                *h = horizon;
            }
        }
        self.metadata().save(dir)?;
        let removed: Vec<Arc<PersistentLayer>> = {
            let mut layers = self.layers.write().unwrap_or_else(|p| p.into_inner());
            let victims = layers.files.gc_candidates(horizon, retain_lsns);
            for v in &victims {
                layers.files.remove(v.name());
            }
            victims
        };
        for layer in &removed {
            std::fs::remove_file(layer.path()).map_err(|source| StorageError::Io {
                context: format!("removing {}", layer.path().display()),
                source,
            })?;
        }
        if !removed.is_empty() {
            fsync_dir(dir).map_err(|source| StorageError::Io {
                context: format!("fsync of {}", dir.display()),
                source,
            })?;
        }
        Ok(removed.iter().map(|l| l.name().clone()).collect())
    }
}
