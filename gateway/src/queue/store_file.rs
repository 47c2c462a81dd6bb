//! The embedded store's file: opening it, and opening it again after a write failed.
//!
//! After an I/O error (a full disk, say) redb refuses every further operation until the database is
//! reopened. [`StoreFile`] hands out the open database; the writer [`StoreFile::discard`]s it after
//! such an error, and the next caller reopens it (redb then repairs to the last commit), so the
//! gateway answers 503 while the disk fails and resumes by itself once it works again.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use redb::Database;

use super::QueueError;

/// The open store, or the means to open it again.
pub struct StoreFile {
    path: PathBuf,
    cache_bytes: usize,
    db: RwLock<Option<Arc<Database>>>,
}

impl StoreFile {
    /// Opens (or creates) the store at `path`, creating its directory; its page cache may grow to
    /// `cache_bytes`.
    pub fn open(path: &Path, cache_bytes: usize) -> Result<Self, QueueError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| open_error(path, format!("cannot create {}: {e}", dir.display())))?;
        }
        let db = create(path, cache_bytes).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => open_error(
                path,
                "another process has it open (the embedded backend serves one gateway; several gateways share \
                 Redis: set [queue] backend = \"redis\")"
                    .to_string(),
            ),
            e => open_error(path, e.to_string()),
        })?;
        Ok(Self { path: path.to_path_buf(), cache_bytes, db: RwLock::new(Some(Arc::new(db))) })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open database, reopened first when it was discarded.
    pub fn get(&self) -> Result<Arc<Database>, QueueError> {
        if let Some(db) = self.db.read().unwrap_or_else(|p| p.into_inner()).as_ref() {
            return Ok(db.clone());
        }
        let mut slot = self.db.write().unwrap_or_else(|p| p.into_inner());
        if let Some(db) = slot.as_ref() {
            return Ok(db.clone());
        }
        // Fails while a reader still holds the old handle (its file lock); the next call retries.
        let db = Arc::new(create(&self.path, self.cache_bytes).map_err(|e| {
            open_error(&self.path, format!("reopening after a failed write: {e}; the next request tries again"))
        })?);
        tracing::debug!(path = %self.path.display(), "Embedded store reopened after a failed write.");
        *slot = Some(db.clone());
        Ok(db)
    }

    /// Drops this handle on the database after an I/O error, so the next [`StoreFile::get`] reopens it.
    pub fn discard(&self) {
        self.db.write().unwrap_or_else(|p| p.into_inner()).take();
    }
}

fn open_error(path: &Path, reason: String) -> QueueError {
    QueueError::Open { path: path.to_path_buf(), reason }
}

fn create(path: &Path, cache_bytes: usize) -> Result<Database, redb::DatabaseError> {
    Database::builder().set_cache_size(cache_bytes).create(path)
}
