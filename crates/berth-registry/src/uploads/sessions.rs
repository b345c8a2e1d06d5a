use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;

use berth_oci::DigestAlgorithm;
use berth_oci::Hasher;
use berth_oci::UploadId;

/// The in-memory side of an upload session: the running hash of the bytes stored so
/// far. It is an optimisation only: when it is missing (after a restart) or for
/// another algorithm, the stored bytes are hashed again.
pub(crate) struct Session {
    /// `None` until the stored bytes have been hashed in this process.
    pub hasher: Option<Hasher>,
    /// Bytes covered by `hasher`.
    pub offset: u64,
}

impl Session {
    pub fn fresh() -> Self {
        Session {
            hasher: Some(Hasher::new(DigestAlgorithm::Sha256)),
            offset: 0,
        }
    }

    pub fn unknown() -> Self {
        Session {
            hasher: None,
            offset: 0,
        }
    }
}

/// Sessions by id. Each has its own async lock, which serialises requests on one
/// upload (chunks must be appended in order) without blocking other uploads.
#[derive(Default)]
pub(crate) struct Sessions {
    map: Mutex<HashMap<UploadId, Arc<tokio::sync::Mutex<Session>>>>,
}

impl Sessions {
    pub fn insert(&self, id: &UploadId, session: Session) -> Arc<tokio::sync::Mutex<Session>> {
        let s = Arc::new(tokio::sync::Mutex::new(session));
        self.lock().insert(id.clone(), s.clone());
        s
    }

    /// The session's state, created empty (to be re-hashed) if this process has none.
    pub fn get_or_unknown(&self, id: &UploadId) -> Arc<tokio::sync::Mutex<Session>> {
        self.lock()
            .entry(id.clone())
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(Session::unknown())))
            .clone()
    }

    pub fn contains(&self, id: &UploadId) -> bool {
        self.lock().contains_key(id)
    }

    pub fn remove(&self, id: &UploadId) {
        self.lock().remove(id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<UploadId, Arc<tokio::sync::Mutex<Session>>>> {
        // A panic while holding this lock cannot leave the map inconsistent (every
        // operation is a single insert/remove), so a poisoned lock is still usable.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}
