//! Per-key async locks (one per upload id) with automatic cleanup.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;

use tokio::sync::OwnedMutexGuard;

type Entry = Arc<tokio::sync::Mutex<()>>;

/// A set of async mutexes keyed by string. Entries exist only while someone
/// holds or waits for the lock.
#[derive(Default)]
pub(crate) struct KeyedLocks {
    map: Mutex<HashMap<String, Entry>>,
}

/// Holds the lock for one key; releases it (and drops the map entry if no one
/// else is waiting) on drop. `'static`, so it can be moved into cleanup tasks.
pub(crate) struct KeyedGuard {
    locks: Arc<KeyedLocks>,
    key: String,
    guard: Option<OwnedMutexGuard<()>>,
}

impl KeyedLocks {
    fn entry(&self, key: &str) -> Entry {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(key.to_owned()).or_default().clone()
    }

    pub(crate) async fn lock(self: &Arc<Self>, key: &str) -> KeyedGuard {
        let entry = self.entry(key);
        let guard = entry.lock_owned().await;
        KeyedGuard {
            locks: Arc::clone(self),
            key: key.to_owned(),
            guard: Some(guard),
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl Drop for KeyedGuard {
    fn drop(&mut self) {
        // Release the mutex first so our clone of the entry is gone.
        drop(self.guard.take());
        let mut map = self.locks.map.lock().unwrap_or_else(|e| e.into_inner());
        // Clones are only made under the map lock, so a count of 1 (the map's
        // own) means nobody holds or waits for this key.
        if map.get(&self.key).is_some_and(|e| Arc::strong_count(e) == 1) {
            map.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn entries_are_cleaned_up() {
        let locks = Arc::new(KeyedLocks::default());
        {
            let _a = locks.lock("a").await;
            let _b = locks.lock("b").await;
            assert_eq!(locks.len(), 2);
        }
        assert_eq!(locks.len(), 0);
    }

    #[tokio::test]
    async fn lock_is_exclusive() {
        let locks = Arc::new(KeyedLocks::default());
        let g = locks.lock("a").await;
        let l2 = Arc::clone(&locks);
        let waiter = tokio::spawn(async move {
            let _g = l2.lock("a").await;
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "second locker must wait");
        drop(g);
        waiter.await.expect("waiter");
        assert_eq!(locks.len(), 0);
    }
}
