//! What must survive a restart, per user: the state last published to Teams (and when), the
//! pending (desired, not yet confirmed) state, and the cached Azure object id.
//!
//! [`PresenceStore`] is the small trait the presence code talks to (DESIGN: "The embedded store
//! stays the default for a single box; the presence code talks to a small store trait with both
//! behind it"): [`RedbStore`] is the embedded default under the data directory, [`MemoryStore`]
//! serves tests; a Redis store for several instances can come later behind the same trait.
//!
//! On start the publisher reads [`PresenceStore::all`]: a user whose `pending` differs from
//! `published` still owes Teams a request, and `published` seeds
//! [`PresenceTable::assume_published`](super::PresenceTable::assume_published).

use super::directory::UserId;
use super::linestate::unix_ms;
use super::state::TeamsPresence;
use super::PresenceError;
use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

/// The state Teams confirmed (2xx to setPresence / clearPresence).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedState {
    /// `None`: the session was cleared.
    pub presence: Option<TeamsPresence>,
    /// Unix time of the confirmation, milliseconds.
    pub at_ms: u64,
    /// When the session expires in Teams (setPresence `expirationDuration`), Unix ms.
    pub expires_ms: Option<u64>,
}

/// The state drbridge wants Teams to show and has not had confirmed yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingState {
    pub presence: Option<TeamsPresence>,
    /// Unix time the change happened, milliseconds.
    pub at_ms: u64,
}

/// Everything kept for one user.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredUser {
    #[serde(default)]
    pub published: Option<PublishedState>,
    #[serde(default)]
    pub pending: Option<PendingState>,
    #[serde(default)]
    pub object_id: Option<String>,
}

impl StoredUser {
    /// True when Teams still needs a request for this user.
    pub fn owes_publish(&self) -> bool {
        match (&self.pending, &self.published) {
            (Some(p), Some(q)) => p.presence != q.presence,
            (Some(p), None) => p.presence.is_some(),
            (None, _) => false,
        }
    }

    fn apply_pending(&mut self, presence: Option<TeamsPresence>, at: SystemTime) {
        self.pending = Some(PendingState { presence, at_ms: unix_ms(at) });
    }

    fn apply_published(&mut self, presence: Option<TeamsPresence>, at: SystemTime, expires: Option<SystemTime>) {
        self.published = Some(PublishedState { presence, at_ms: unix_ms(at), expires_ms: expires.map(unix_ms) });
        // A confirmation of what was pending settles it; a newer pending stays.
        if self.pending.is_some_and(|p| p.presence == presence) {
            self.pending = None;
        }
    }
}

/// The presence store. Methods are synchronous and short (one small transaction); call them
/// from a blocking-friendly context (`spawn_blocking` or a dedicated task) in async code.
pub trait PresenceStore: Send + Sync {
    fn get(&self, user: &UserId) -> Result<Option<StoredUser>, PresenceError>;
    /// Every stored user.
    fn all(&self) -> Result<Vec<(UserId, StoredUser)>, PresenceError>;
    /// Records the desired state of several users in one transaction.
    fn set_pending(&self, changes: &[(UserId, Option<TeamsPresence>)], at: SystemTime) -> Result<(), PresenceError>;
    /// Records what Teams confirmed; clears `pending` when it is the same state.
    fn set_published(
        &self,
        user: &UserId,
        presence: Option<TeamsPresence>,
        at: SystemTime,
        expires: Option<SystemTime>,
    ) -> Result<(), PresenceError>;
    /// Caches (or with `None` forgets) the Azure object id.
    fn set_object_id(&self, user: &UserId, object_id: Option<&str>) -> Result<(), PresenceError>;
    /// Forgets a user (removed from the directory).
    fn remove(&self, user: &UserId) -> Result<(), PresenceError>;
    /// The Graph presence subscriptions drbridge holds (id, monitor), so that a restart deletes
    /// them instead of leaving them to send notifications for up to an hour.
    fn graph_subscriptions(&self) -> Result<Vec<(String, String)>, PresenceError>;
    /// Records a subscription (`Some(monitor)`) or forgets it (`None`).
    fn set_graph_subscription(&self, id: &str, monitor: Option<&str>) -> Result<(), PresenceError>;
}

/// A store in memory, for tests and for running without a data directory.
#[derive(Debug, Default)]
pub struct MemoryStore {
    users: Mutex<BTreeMap<UserId, StoredUser>>,
    subscriptions: Mutex<BTreeMap<String, String>>,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn with<R>(&self, f: impl FnOnce(&mut BTreeMap<UserId, StoredUser>) -> R) -> R {
        let mut g = self.users.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut g)
    }
}

impl PresenceStore for MemoryStore {
    fn get(&self, user: &UserId) -> Result<Option<StoredUser>, PresenceError> {
        Ok(self.with(|m| m.get(user).cloned()))
    }

    fn all(&self) -> Result<Vec<(UserId, StoredUser)>, PresenceError> {
        Ok(self.with(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()))
    }

    fn set_pending(&self, changes: &[(UserId, Option<TeamsPresence>)], at: SystemTime) -> Result<(), PresenceError> {
        self.with(|m| {
            for (u, p) in changes {
                m.entry(u.clone()).or_default().apply_pending(*p, at);
            }
        });
        Ok(())
    }

    fn set_published(
        &self,
        user: &UserId,
        presence: Option<TeamsPresence>,
        at: SystemTime,
        expires: Option<SystemTime>,
    ) -> Result<(), PresenceError> {
        self.with(|m| m.entry(user.clone()).or_default().apply_published(presence, at, expires));
        Ok(())
    }

    fn set_object_id(&self, user: &UserId, object_id: Option<&str>) -> Result<(), PresenceError> {
        self.with(|m| m.entry(user.clone()).or_default().object_id = object_id.map(str::to_string));
        Ok(())
    }

    fn remove(&self, user: &UserId) -> Result<(), PresenceError> {
        self.with(|m| m.remove(user));
        Ok(())
    }

    fn graph_subscriptions(&self) -> Result<Vec<(String, String)>, PresenceError> {
        let g = self.subscriptions.lock().unwrap_or_else(|e| e.into_inner());
        Ok(g.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
    }

    fn set_graph_subscription(&self, id: &str, monitor: Option<&str>) -> Result<(), PresenceError> {
        let mut g = self.subscriptions.lock().unwrap_or_else(|e| e.into_inner());
        match monitor {
            Some(m) => g.insert(id.to_string(), m.to_string()),
            None => g.remove(id),
        };
        Ok(())
    }
}

const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("presence_users_v1");
const SUBSCRIPTIONS: TableDefinition<&str, &str> = TableDefinition::new("graph_subscriptions_v1");
/// File name of the database under the data directory.
pub const DB_FILE: &str = "presence.redb";

/// The embedded store: one `redb` file `presence.redb` under the data directory; each user a
/// JSON value keyed by its UPN. Every write is one durable transaction.
pub struct RedbStore {
    db: Database,
    path: PathBuf,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore").field("path", &self.path).finish()
    }
}

impl RedbStore {
    /// Opens (creating the directory and file if absent) the store under `data_dir`.
    pub fn open(data_dir: &Path) -> Result<RedbStore, PresenceError> {
        let path = data_dir.join(DB_FILE);
        let e = |r: String| PresenceError::Store { path: path.display().to_string(), reason: r };
        std::fs::create_dir_all(data_dir).map_err(|x| e(format!("cannot create directory: {x}")))?;
        let db = Database::create(&path).map_err(|x| e(x.to_string()))?;
        let s = RedbStore { db, path };
        // Create the tables so that reads of an empty store work.
        s.write(|_| Ok(()))?;
        s.write_subscriptions(|_| Ok(()))?;
        Ok(s)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, r: impl std::fmt::Display) -> PresenceError {
        PresenceError::Store { path: self.path.display().to_string(), reason: r.to_string() }
    }

    fn decode(&self, key: &str, v: &[u8]) -> Result<StoredUser, PresenceError> {
        serde_json::from_slice(v).map_err(|x| self.err(format!("record {key:?}: {x}")))
    }

    /// One write transaction; `f` edits the users table.
    fn write(&self, f: impl FnOnce(&mut redb::Table<&str, &[u8]>) -> Result<(), PresenceError>) -> Result<(), PresenceError> {
        let tx = self.db.begin_write().map_err(|x| self.err(x))?;
        {
            let mut t = tx.open_table(USERS).map_err(|x| self.err(x))?;
            f(&mut t)?;
        }
        tx.commit().map_err(|x| self.err(x))
    }

    /// One write transaction on the subscriptions table.
    fn write_subscriptions(&self, f: impl FnOnce(&mut redb::Table<&str, &str>) -> Result<(), PresenceError>) -> Result<(), PresenceError> {
        let tx = self.db.begin_write().map_err(|x| self.err(x))?;
        {
            let mut t = tx.open_table(SUBSCRIPTIONS).map_err(|x| self.err(x))?;
            f(&mut t)?;
        }
        tx.commit().map_err(|x| self.err(x))
    }

    fn update(&self, t: &mut redb::Table<&str, &[u8]>, user: &UserId, f: impl FnOnce(&mut StoredUser)) -> Result<(), PresenceError> {
        let key = user.as_str();
        let mut rec = match t.get(key).map_err(|x| self.err(x))? {
            Some(v) => self.decode(key, v.value())?,
            None => StoredUser::default(),
        };
        f(&mut rec);
        let bytes = serde_json::to_vec(&rec).map_err(|x| self.err(x))?;
        t.insert(key, bytes.as_slice()).map_err(|x| self.err(x))?;
        Ok(())
    }
}

impl PresenceStore for RedbStore {
    fn get(&self, user: &UserId) -> Result<Option<StoredUser>, PresenceError> {
        let tx = self.db.begin_read().map_err(|x| self.err(x))?;
        let t = tx.open_table(USERS).map_err(|x| self.err(x))?;
        match t.get(user.as_str()).map_err(|x| self.err(x))? {
            Some(v) => Ok(Some(self.decode(user.as_str(), v.value())?)),
            None => Ok(None),
        }
    }

    fn all(&self) -> Result<Vec<(UserId, StoredUser)>, PresenceError> {
        let tx = self.db.begin_read().map_err(|x| self.err(x))?;
        let t = tx.open_table(USERS).map_err(|x| self.err(x))?;
        let mut out = Vec::new();
        for item in t.iter().map_err(|x| self.err(x))? {
            let (k, v) = item.map_err(|x| self.err(x))?;
            out.push((UserId::new(k.value()), self.decode(k.value(), v.value())?));
        }
        Ok(out)
    }

    fn set_pending(&self, changes: &[(UserId, Option<TeamsPresence>)], at: SystemTime) -> Result<(), PresenceError> {
        self.write(|t| {
            for (u, p) in changes {
                self.update(t, u, |r| r.apply_pending(*p, at))?;
            }
            Ok(())
        })
    }

    fn set_published(
        &self,
        user: &UserId,
        presence: Option<TeamsPresence>,
        at: SystemTime,
        expires: Option<SystemTime>,
    ) -> Result<(), PresenceError> {
        self.write(|t| self.update(t, user, |r| r.apply_published(presence, at, expires)))
    }

    fn set_object_id(&self, user: &UserId, object_id: Option<&str>) -> Result<(), PresenceError> {
        self.write(|t| self.update(t, user, |r| r.object_id = object_id.map(str::to_string)))
    }

    fn remove(&self, user: &UserId) -> Result<(), PresenceError> {
        self.write(|t| {
            t.remove(user.as_str()).map_err(|x| self.err(x))?;
            Ok(())
        })
    }

    fn graph_subscriptions(&self) -> Result<Vec<(String, String)>, PresenceError> {
        let tx = self.db.begin_read().map_err(|x| self.err(x))?;
        let t = tx.open_table(SUBSCRIPTIONS).map_err(|x| self.err(x))?;
        let mut out = Vec::new();
        for item in t.iter().map_err(|x| self.err(x))? {
            let (k, v) = item.map_err(|x| self.err(x))?;
            out.push((k.value().to_string(), v.value().to_string()));
        }
        Ok(out)
    }

    fn set_graph_subscription(&self, id: &str, monitor: Option<&str>) -> Result<(), PresenceError> {
        self.write_subscriptions(|t| {
            match monitor {
                Some(m) => t.insert(id, m).map(|_| ()),
                None => t.remove(id).map(|_| ()),
            }
            .map_err(|x| self.err(x))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn t(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(s)
    }

    fn exercise(s: &dyn PresenceStore) {
        let (a, b) = (UserId::new("anna@lab.test"), UserId::new("bo@lab.test"));
        assert_eq!(s.get(&a).unwrap(), None);
        s.set_pending(&[(a.clone(), Some(TeamsPresence::IN_A_CALL)), (b.clone(), Some(TeamsPresence::AWAY))], t(10)).unwrap();
        let r = s.get(&a).unwrap().unwrap();
        assert!(r.owes_publish());
        assert_eq!(r.pending, Some(PendingState { presence: Some(TeamsPresence::IN_A_CALL), at_ms: 10_000 }));
        s.set_published(&a, Some(TeamsPresence::IN_A_CALL), t(11), Some(t(11 + 3600))).unwrap();
        let r = s.get(&a).unwrap().unwrap();
        assert!(!r.owes_publish());
        assert_eq!(r.pending, None);
        assert_eq!(r.published.unwrap().expires_ms, Some(3_611_000));
        // A newer pending survives an older confirmation.
        s.set_pending(&[(a.clone(), None)], t(12)).unwrap();
        s.set_published(&a, Some(TeamsPresence::IN_A_CALL), t(13), None).unwrap();
        assert!(s.get(&a).unwrap().unwrap().owes_publish());
        s.set_object_id(&b, Some("6e7b768e-07e2-4810-8459-485f84f8f204")).unwrap();
        let all = s.all().unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[1].1.object_id.as_deref(), Some("6e7b768e-07e2-4810-8459-485f84f8f204"));
    }

    #[test]
    fn memory_store() {
        let s = MemoryStore::new();
        exercise(&s);
        s.remove(&UserId::new("anna@lab.test")).unwrap();
        assert_eq!(s.all().unwrap().len(), 1);
    }

    fn tempdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("drbridge-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn redb_store_survives_reopen() {
        let dir = tempdir("reopen");
        {
            let s = RedbStore::open(&dir.join("var")).unwrap();
            exercise(&s);
        }
        // Dropped (as at a restart): open again and read.
        let s = RedbStore::open(&dir.join("var")).unwrap();
        let a = s.get(&UserId::new("anna@lab.test")).unwrap().unwrap();
        assert_eq!(a.pending, Some(PendingState { presence: None, at_ms: 12_000 }));
        assert_eq!(a.published.unwrap().presence, Some(TeamsPresence::IN_A_CALL));
        assert!(a.owes_publish());
        let b = s.get(&UserId::new("bo@lab.test")).unwrap().unwrap();
        assert_eq!(b.pending.unwrap().presence, Some(TeamsPresence::AWAY));
        assert_eq!(b.object_id.as_deref(), Some("6e7b768e-07e2-4810-8459-485f84f8f204"));
        s.remove(&UserId::new("bo@lab.test")).unwrap();
        drop(s);
        let s = RedbStore::open(&dir.join("var")).unwrap();
        assert_eq!(s.all().unwrap().len(), 1);
        drop(s);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Graph subscriptions survive a reopen of the redb file, and forgetting one removes it.
    #[test]
    fn graph_subscriptions_are_kept_across_reopen() {
        let dir = tempdir("subs");
        {
            let s = RedbStore::open(&dir).unwrap();
            assert!(s.graph_subscriptions().unwrap().is_empty());
            s.set_graph_subscription("sub-1", Some("mon1@x")).unwrap();
            s.set_graph_subscription("sub-2", Some("mon2@x")).unwrap();
            s.set_graph_subscription("sub-1", None).unwrap();
        }
        let s = RedbStore::open(&dir).unwrap();
        assert_eq!(s.graph_subscriptions().unwrap(), vec![("sub-2".to_string(), "mon2@x".to_string())]);
        let m = MemoryStore::new();
        m.set_graph_subscription("a", Some("m")).unwrap();
        m.set_graph_subscription("b", Some("m")).unwrap();
        m.set_graph_subscription("a", None).unwrap();
        assert_eq!(m.graph_subscriptions().unwrap(), vec![("b".to_string(), "m".to_string())]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn redb_store_reports_bad_paths() {
        let dir = tempdir("bad");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("file"), b"x").unwrap();
        let e = RedbStore::open(&dir.join("file")).unwrap_err().to_string();
        assert!(e.contains("presence.redb") && e.contains("cannot create directory"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
