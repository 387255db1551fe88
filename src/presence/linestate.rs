//! The [`PresenceTable`]: the sans-IO core that turns line-state sources into one aggregated
//! presence per user.
//!
//! Sources, each a producer of per-device entries for a user:
//! - calls through drbridge ([`CallEvent`]s from `b2bua`): each call a user is a party of is a
//!   device `call-<id>` of source `drbridge`;
//! - the PBX's `dialog` and `presence` event packages per monitored extension ([`LineUpdate`]s
//!   from the [`SubscriptionSet`](super::SubscriptionSet)): devices `<ext>` of sources
//!   `pbx-dialog` and `pbx-presence`;
//! - other adapters (CSTA, MiTAI) through the admin ingest endpoint ([`IngestEvent`], JSON).
//!
//! When what drbridge should say in Teams for a user changes, the table queues the user;
//! [`PresenceTable::poll_change`] yields one [`PresenceChange`] per queued user with the latest
//! state (coalesced: a user that went Busy and back before the poll yields nothing).

use super::aggregate::{aggregate, Aggregate, Mapping, Signal};
use super::dialoginfo::{self, DialogEntry, DialogInfo, DialogState};
use super::directory::{UserDirectory, UserId};
use super::pidf::{self, Pidf};
use super::state::{LineState, PbxUserPresence, PresenceLevel, TeamsPresence};
use super::subscription::EventPackage;
use super::PresenceError;
use crate::b2bua::CallEvent;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Source name of call legs through drbridge.
pub const SOURCE_CALLS: &str = "drbridge";
/// Source name of the PBX `dialog` event package.
pub const SOURCE_PBX_DIALOG: &str = "pbx-dialog";
/// Source name of the PBX `presence` event package.
pub const SOURCE_PBX_PRESENCE: &str = "pbx-presence";

/// A device of a user, within a source.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct DeviceKey {
    pub source: String,
    pub device: String,
}

impl DeviceKey {
    fn new(source: &str, device: &str) -> DeviceKey {
        DeviceKey { source: source.to_string(), device: device.to_string() }
    }
}

/// What one device says.
#[derive(Clone, Debug, PartialEq, Eq)]
struct DeviceEntry {
    line: Option<LineState>,
    user: Option<PbxUserPresence>,
    since: SystemTime,
    expires: Option<SystemTime>,
}

/// Out: what drbridge's application session should say for `user` from now on. `new: None`
/// means nothing (clearPresence).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PresenceChange {
    pub user: UserId,
    pub new: Option<TeamsPresence>,
    /// The combined CloudLink-style level behind `new`.
    pub level: PresenceLevel,
    /// When the input that caused it arrived.
    pub at: SystemTime,
}

/// In, from the PBX subscriptions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LineUpdate {
    /// A `dialog` package NOTIFY body for a monitored extension.
    Dialog { extension: String, info: DialogInfo },
    /// A `presence` package NOTIFY body for a monitored extension.
    Presence { extension: String, doc: Pidf },
    /// The subscription lapsed (no longer known to be valid): what it said is forgotten.
    Lapsed { extension: String, package: EventPackage },
}

/// The state an adapter reports in an [`IngestEvent`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IngestState {
    /// The device is idle (level Available).
    #[serde(alias = "idle")]
    Available,
    Ringing,
    Dialing,
    /// The device is in a call.
    #[serde(alias = "in-call", alias = "incall")]
    Busy,
    Held,
    #[serde(alias = "do-not-disturb")]
    Dnd,
    Offline,
    Unknown,
    /// User presence statuses.
    #[serde(alias = "away")]
    Absent,
    Meeting,
    UserBusy,
    NotAvailable,
    /// Forget this device.
    Clear,
}

/// In, from other adapters through the admin ingest endpoint:
/// `{"user": "anna@example.com" | "4711" | "+4681234711", "source": "csta", "device": "4711",
/// "state": "busy", "ttl_secs": 3600}`. `device` defaults to the source name; `ttl_secs`
/// (optional, at most a day) forgets the entry after that long without a new event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestEvent {
    pub user: String,
    pub source: String,
    #[serde(default)]
    pub device: Option<String>,
    pub state: IngestState,
    #[serde(default)]
    pub ttl_secs: Option<u64>,
}

const MAX_NAME: usize = 64;
const MAX_TTL: u64 = 86_400;

impl IngestEvent {
    /// Parses and checks one event.
    pub fn from_json(body: &[u8]) -> Result<IngestEvent, PresenceError> {
        let e: IngestEvent =
            serde_json::from_slice(body).map_err(|e| PresenceError::Body { what: "ingest", reason: e.to_string() })?;
        let bad = |r: String| PresenceError::Body { what: "ingest", reason: r };
        let name_ok = |s: &str| {
            !s.is_empty() && s.len() <= MAX_NAME && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:+@#*".contains(c))
        };
        if !name_ok(&e.source) {
            return Err(bad(format!("source {:?}: 1..{MAX_NAME} characters of [A-Za-z0-9-_.:+@#*]", e.source)));
        }
        if [SOURCE_CALLS, SOURCE_PBX_DIALOG, SOURCE_PBX_PRESENCE].contains(&e.source.as_str()) {
            return Err(bad(format!("source {:?} is drbridge's own", e.source)));
        }
        if let Some(d) = &e.device {
            if !name_ok(d) {
                return Err(bad(format!("device {d:?}: 1..{MAX_NAME} characters of [A-Za-z0-9-_.:+@#*]")));
            }
        }
        if e.user.is_empty() || e.user.len() > 256 {
            return Err(bad("user: 1..256 characters".into()));
        }
        if e.ttl_secs.is_some_and(|t| t == 0 || t > MAX_TTL) {
            return Err(bad(format!("ttl_secs: 1..={MAX_TTL}")));
        }
        Ok(e)
    }
}

/// Bounds of the table.
#[derive(Clone, Copy, Debug)]
pub struct TableLimits {
    /// Calls through drbridge tracked at once; more are not tracked (and counted).
    pub max_calls: usize,
    /// Devices per user; more are refused (and counted).
    pub max_devices_per_user: usize,
    /// Dialogs kept per PBX extension.
    pub max_dialogs_per_extension: usize,
    /// A call leg without any event for this long is forgotten (a lost `Ended`).
    pub call_max_age: Duration,
}

impl Default for TableLimits {
    fn default() -> Self {
        TableLimits {
            max_calls: 20_000,
            max_devices_per_user: 64,
            max_dialogs_per_extension: 32,
            call_max_age: Duration::from_secs(12 * 3600),
        }
    }
}

/// Counters for metrics and the admin page.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TableStats {
    pub call_events: u64,
    pub call_parties_unknown: u64,
    pub calls_untracked: u64,
    pub devices_refused: u64,
    pub notifies_stale: u64,
    pub notifies_unknown_extension: u64,
    pub ingest_events: u64,
    pub entries_expired: u64,
    pub changes: u64,
}

/// One device in a [`UserView`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeviceView {
    pub source: String,
    pub device: String,
    pub line: Option<LineState>,
    pub user_presence: Option<PbxUserPresence>,
    /// Unix time, milliseconds.
    pub since_ms: u64,
    pub expires_ms: Option<u64>,
}

/// A user as the admin page shows it: sources/devices, the combined level and what drbridge
/// says in Teams.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UserView {
    pub user: UserId,
    pub upn: String,
    pub name: Option<String>,
    pub level: PresenceLevel,
    pub teams: Option<TeamsPresence>,
    /// The last value handed out by `poll_change` (or assumed at start).
    pub emitted: Option<TeamsPresence>,
    pub devices: Vec<DeviceView>,
}

pub(crate) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

struct UserState {
    devices: BTreeMap<DeviceKey, DeviceEntry>,
    current: Aggregate,
    emitted: Option<TeamsPresence>,
    changed_at: SystemTime,
    queued: bool,
}

impl UserState {
    fn new(now: SystemTime) -> UserState {
        UserState {
            devices: BTreeMap::new(),
            current: Aggregate { level: PresenceLevel::Unknown, teams: None },
            emitted: None,
            changed_at: now,
            queued: false,
        }
    }
}

struct CallParties {
    /// The directory users that are parties of this call.
    parties: Vec<UserId>,
}

#[derive(Default)]
struct ExtDialogs {
    version: Option<u32>,
    dialogs: BTreeMap<String, DialogEntry>,
}

/// The presence core. See the module documentation.
pub struct PresenceTable {
    dir: Arc<UserDirectory>,
    mapping: Mapping,
    limits: TableLimits,
    users: HashMap<UserId, UserState>,
    calls: HashMap<u64, CallParties>,
    dialogs: HashMap<String, ExtDialogs>,
    expiries: BTreeSet<(SystemTime, UserId, DeviceKey)>,
    queue: VecDeque<UserId>,
    stats: TableStats,
}

impl PresenceTable {
    pub fn new(dir: Arc<UserDirectory>, mapping: Mapping, limits: TableLimits) -> PresenceTable {
        PresenceTable {
            dir,
            mapping,
            limits,
            users: HashMap::new(),
            calls: HashMap::new(),
            dialogs: HashMap::new(),
            expiries: BTreeSet::new(),
            queue: VecDeque::new(),
            stats: TableStats::default(),
        }
    }

    pub fn directory(&self) -> &Arc<UserDirectory> {
        &self.dir
    }

    pub fn stats(&self) -> TableStats {
        self.stats
    }

    /// Tells the table what Teams last got for a user (from the store at start), so that a
    /// change is emitted only when the aggregate differs from it.
    pub fn assume_published(&mut self, user: &UserId, presence: Option<TeamsPresence>, now: SystemTime) {
        if self.dir.get(user).is_none() {
            return;
        }
        let st = self.users.entry(user.clone()).or_insert_with(|| UserState::new(now));
        st.emitted = presence;
        if st.current.teams != presence {
            Self::enqueue(&mut self.queue, user, st);
        }
    }

    /// Replaces the directory (reload). Users no longer listed lose every entry, and PBX
    /// entries of an extension that moved to another user are dropped (the next NOTIFY
    /// restores them under the new owner); their changes are queued as usual.
    pub fn set_directory(&mut self, dir: Arc<UserDirectory>, now: SystemTime) {
        self.dir = dir;
        let mut stale: Vec<(UserId, DeviceKey)> = Vec::new();
        for (u, st) in &self.users {
            let listed = self.dir.get(u).is_some();
            for k in st.devices.keys() {
                let pbx = k.source == SOURCE_PBX_DIALOG || k.source == SOURCE_PBX_PRESENCE;
                if !listed || (pbx && self.dir.by_extension(&k.device).map(|o| &o.id) != Some(u)) {
                    stale.push((u.clone(), k.clone()));
                }
            }
        }
        for (u, k) in stale {
            self.remove_device(&u, &k, now);
        }
        let dir = self.dir.clone();
        self.dialogs.retain(|ext, _| dir.by_extension(ext).is_some());
        for c in self.calls.values_mut() {
            c.parties.retain(|p| dir.get(p).is_some());
        }
        self.calls.retain(|_, c| !c.parties.is_empty());
    }

    // ---- sources ----------------------------------------------------------------------------

    /// Calls through drbridge.
    pub fn on_call_event(&mut self, ev: &CallEvent, now: SystemTime) {
        self.stats.call_events += 1;
        match ev {
            CallEvent::Ringing { call, caller, callee } => {
                self.call_party(*call, caller, LineState::Dialing, now);
                self.call_party(*call, callee, LineState::Ringing, now);
            }
            CallEvent::Answered { call, caller, callee } => {
                self.call_party(*call, caller, LineState::InCall, now);
                self.call_party(*call, callee, LineState::InCall, now);
            }
            CallEvent::Held { call, .. } => self.call_all(*call, LineState::Held, now),
            CallEvent::Resumed { call, .. } => self.call_all(*call, LineState::InCall, now),
            CallEvent::Transferred { call, target, transferor } => {
                // The target answered and is now a party; the transferor has left the call.
                if self.calls.contains_key(call) {
                    self.call_party(*call, target, LineState::InCall, now);
                    if let Some(user) = self.dir.by_party(transferor).map(|u| u.id.clone()) {
                        if Some(&user) != self.dir.by_party(target).map(|u| &u.id) {
                            if let Some(c) = self.calls.get_mut(call) {
                                c.parties.retain(|p| *p != user);
                            }
                            let key = DeviceKey::new(SOURCE_CALLS, &format!("call-{call}"));
                            self.remove_device(&user, &key, now);
                        }
                    }
                }
            }
            CallEvent::Ended { call, .. } => {
                if let Some(c) = self.calls.remove(call) {
                    let key = DeviceKey::new(SOURCE_CALLS, &format!("call-{call}"));
                    for u in c.parties {
                        self.remove_device(&u, &key, now);
                    }
                }
            }
        }
    }

    fn call_party(&mut self, call: u64, party: &str, state: LineState, now: SystemTime) {
        let Some(user) = self.dir.by_party(party).map(|u| u.id.clone()) else {
            if !party.is_empty() {
                self.stats.call_parties_unknown += 1;
            }
            return;
        };
        if !self.calls.contains_key(&call) && self.calls.len() >= self.limits.max_calls {
            self.stats.calls_untracked += 1;
            return;
        }
        let parties = &mut self.calls.entry(call).or_insert_with(|| CallParties { parties: Vec::new() }).parties;
        if !parties.contains(&user) {
            parties.push(user.clone());
        }
        let key = DeviceKey::new(SOURCE_CALLS, &format!("call-{call}"));
        let expires = Some(now + self.limits.call_max_age);
        self.set_device(&user, key, Some(state), None, expires, now);
    }

    fn call_all(&mut self, call: u64, state: LineState, now: SystemTime) {
        let Some(c) = self.calls.get(&call) else { return };
        let parties = c.parties.clone();
        let key = DeviceKey::new(SOURCE_CALLS, &format!("call-{call}"));
        let expires = Some(now + self.limits.call_max_age);
        for u in parties {
            self.set_device(&u, key.clone(), Some(state), None, expires, now);
        }
    }

    /// The PBX's dialog / presence NOTIFY bodies (and lapsed subscriptions).
    pub fn on_line_update(&mut self, up: &LineUpdate, now: SystemTime) {
        let ext = match up {
            LineUpdate::Dialog { extension, .. } | LineUpdate::Presence { extension, .. } | LineUpdate::Lapsed { extension, .. } => {
                extension
            }
        };
        let Some(user) = self.dir.by_extension(ext).map(|u| u.id.clone()) else {
            self.stats.notifies_unknown_extension += 1;
            return;
        };
        match up {
            LineUpdate::Dialog { extension, info } => {
                let max = self.limits.max_dialogs_per_extension;
                let ed = self.dialogs.entry(extension.clone()).or_default();
                if !info.full && ed.version.is_some_and(|v| info.version <= v) {
                    self.stats.notifies_stale += 1;
                    return;
                }
                if info.full {
                    ed.dialogs.clear();
                }
                ed.version = Some(info.version);
                for d in &info.dialogs {
                    if d.state == DialogState::Terminated {
                        ed.dialogs.remove(&d.id);
                    } else if ed.dialogs.len() < max || ed.dialogs.contains_key(&d.id) {
                        ed.dialogs.insert(d.id.clone(), d.clone());
                    }
                }
                let line = dialoginfo::line_state(ed.dialogs.values());
                self.set_device(&user, DeviceKey::new(SOURCE_PBX_DIALOG, extension), Some(line), None, None, now);
            }
            LineUpdate::Presence { extension, doc } => {
                let r = pidf::interpret(doc);
                let key = DeviceKey::new(SOURCE_PBX_PRESENCE, extension);
                if r.line == LineState::Unknown && r.user.is_none() {
                    self.remove_device(&user, &key, now);
                } else {
                    let line = (r.line != LineState::Unknown).then_some(r.line);
                    self.set_device(&user, key, line, r.user, None, now);
                }
            }
            LineUpdate::Lapsed { extension, package } => {
                let source = match package {
                    EventPackage::Dialog => {
                        self.dialogs.remove(extension);
                        SOURCE_PBX_DIALOG
                    }
                    EventPackage::Presence => SOURCE_PBX_PRESENCE,
                };
                self.remove_device(&user, &DeviceKey::new(source, extension), now);
            }
        }
    }

    /// An event from another adapter (admin ingest endpoint).
    pub fn on_ingest(&mut self, ev: &IngestEvent, now: SystemTime) -> Result<(), PresenceError> {
        let user = self.dir.resolve(&ev.user).map(|u| u.id.clone()).ok_or_else(|| PresenceError::UnknownUser(ev.user.clone()))?;
        self.stats.ingest_events += 1;
        let key = DeviceKey::new(&ev.source, ev.device.as_deref().unwrap_or(&ev.source));
        let expires = ev.ttl_secs.map(|t| now + Duration::from_secs(t.min(MAX_TTL)));
        let (line, up) = match ev.state {
            IngestState::Available => (Some(LineState::Idle), None),
            IngestState::Ringing => (Some(LineState::Ringing), None),
            IngestState::Dialing => (Some(LineState::Dialing), None),
            IngestState::Busy => (Some(LineState::InCall), None),
            IngestState::Held => (Some(LineState::Held), None),
            IngestState::Dnd => (Some(LineState::Dnd), None),
            IngestState::Offline => (Some(LineState::Offline), None),
            IngestState::Unknown => (Some(LineState::Unknown), None),
            IngestState::Absent => (None, Some(PbxUserPresence::Absent)),
            IngestState::Meeting => (None, Some(PbxUserPresence::Meeting)),
            IngestState::UserBusy => (None, Some(PbxUserPresence::Busy)),
            IngestState::NotAvailable => (None, Some(PbxUserPresence::NotAvailable)),
            IngestState::Clear => {
                self.remove_device(&user, &key, now);
                return Ok(());
            }
        };
        self.set_device(&user, key, line, up, expires, now);
        Ok(())
    }

    // ---- time -------------------------------------------------------------------------------

    /// The next instant an entry expires.
    pub fn poll_timeout(&self) -> Option<SystemTime> {
        self.expiries.first().map(|(t, _, _)| *t)
    }

    /// Forgets entries whose time is up.
    pub fn handle_timeout(&mut self, now: SystemTime) {
        while let Some((t, u, k)) = self.expiries.first().cloned() {
            if t > now {
                break;
            }
            self.expiries.pop_first();
            let expired = self.users.get(&u).and_then(|s| s.devices.get(&k)).is_some_and(|e| e.expires == Some(t));
            if expired {
                self.stats.entries_expired += 1;
                if k.source == SOURCE_CALLS {
                    if let Some(id) = k.device.strip_prefix("call-").and_then(|s| s.parse::<u64>().ok()) {
                        if let Some(c) = self.calls.get_mut(&id) {
                            c.parties.retain(|p| p != &u);
                            if c.parties.is_empty() {
                                self.calls.remove(&id);
                            }
                        }
                    }
                }
                self.remove_device(&u, &k, now);
            }
        }
    }

    // ---- out --------------------------------------------------------------------------------

    /// The next user whose Teams state changed, with its latest state.
    pub fn poll_change(&mut self) -> Option<PresenceChange> {
        while let Some(u) = self.queue.pop_front() {
            let Some(st) = self.users.get_mut(&u) else { continue };
            st.queued = false;
            if st.current.teams == st.emitted {
                continue;
            }
            st.emitted = st.current.teams;
            self.stats.changes += 1;
            let ch = PresenceChange { user: u.clone(), new: st.current.teams, level: st.current.level, at: st.changed_at };
            if st.devices.is_empty() && st.emitted.is_none() {
                self.users.remove(&u);
            }
            return Some(ch);
        }
        None
    }

    /// The current aggregate of a user (Unknown / nothing for a user without entries).
    pub fn aggregate_of(&self, user: &UserId) -> Aggregate {
        self.users.get(user).map(|s| s.current).unwrap_or(Aggregate { level: PresenceLevel::Unknown, teams: None })
    }

    /// The admin view of one user of the directory.
    pub fn view(&self, user: &UserId) -> Option<UserView> {
        let u = self.dir.get(user)?;
        let st = self.users.get(user);
        let devices = st
            .map(|s| {
                s.devices
                    .iter()
                    .map(|(k, e)| DeviceView {
                        source: k.source.clone(),
                        device: k.device.clone(),
                        line: e.line,
                        user_presence: e.user,
                        since_ms: unix_ms(e.since),
                        expires_ms: e.expires.map(unix_ms),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let cur = self.aggregate_of(user);
        Some(UserView {
            user: u.id.clone(),
            upn: u.upn.clone(),
            name: u.name.clone(),
            level: cur.level,
            teams: cur.teams,
            emitted: st.and_then(|s| s.emitted),
            devices,
        })
    }

    /// The admin view of every user of the directory, in directory order.
    pub fn views(&self) -> Vec<UserView> {
        self.dir.users().iter().filter_map(|u| self.view(&u.id)).collect()
    }

    // ---- internals --------------------------------------------------------------------------

    fn enqueue(queue: &mut VecDeque<UserId>, user: &UserId, st: &mut UserState) {
        if !st.queued {
            st.queued = true;
            queue.push_back(user.clone());
        }
    }

    fn set_device(
        &mut self,
        user: &UserId,
        key: DeviceKey,
        line: Option<LineState>,
        up: Option<PbxUserPresence>,
        expires: Option<SystemTime>,
        now: SystemTime,
    ) {
        let st = self.users.entry(user.clone()).or_insert_with(|| UserState::new(now));
        if !st.devices.contains_key(&key) && st.devices.len() >= self.limits.max_devices_per_user {
            self.stats.devices_refused += 1;
            return;
        }
        let since = match st.devices.get(&key) {
            Some(old) if old.line == line && old.user == up => old.since,
            _ => now,
        };
        if let Some(old) = st.devices.get(&key).and_then(|e| e.expires) {
            self.expiries.remove(&(old, user.clone(), key.clone()));
        }
        if let Some(t) = expires {
            self.expiries.insert((t, user.clone(), key.clone()));
        }
        st.devices.insert(key, DeviceEntry { line, user: up, since, expires });
        self.recompute(user, now);
    }

    fn remove_device(&mut self, user: &UserId, key: &DeviceKey, now: SystemTime) {
        let Some(st) = self.users.get_mut(user) else { return };
        if let Some(e) = st.devices.remove(key) {
            if let Some(t) = e.expires {
                self.expiries.remove(&(t, user.clone(), key.clone()));
            }
            self.recompute(user, now);
        }
    }

    fn recompute(&mut self, user: &UserId, now: SystemTime) {
        let Some(st) = self.users.get_mut(user) else { return };
        let signals = st.devices.values().flat_map(|e| e.line.map(Signal::Line).into_iter().chain(e.user.map(Signal::User)));
        let new = aggregate(signals, &self.mapping);
        if new != st.current {
            st.current = new;
            st.changed_at = now;
        }
        if st.current.teams != st.emitted || st.queued {
            Self::enqueue(&mut self.queue, user, st);
        } else if st.devices.is_empty() {
            // Nothing known and nothing said: forget the user.
            self.users.remove(user);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::b2bua::{EndReason, Side};

    const USERS: &str = r#"
[[user]]
upn = "anna@lab.test"
extensions = ["4711"]
numbers = ["+4681234711"]
[[user]]
upn = "bo@lab.test"
extensions = ["4712"]
numbers = ["+4681234712"]
[[user]]
upn = "carl@lab.test"
numbers = ["+4681234801"]
"#;

    fn t(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000 + s)
    }

    fn table() -> PresenceTable {
        let d = UserDirectory::parse(USERS, "users.toml").unwrap();
        PresenceTable::new(Arc::new(d), Mapping::default(), TableLimits::default())
    }

    fn id(s: &str) -> UserId {
        UserId::new(s)
    }

    fn changes(t: &mut PresenceTable) -> Vec<(String, Option<TeamsPresence>)> {
        std::iter::from_fn(|| t.poll_change()).map(|c| (c.user.to_string(), c.new)).collect()
    }

    fn ch(u: &str, p: Option<TeamsPresence>) -> (String, Option<TeamsPresence>) {
        (u.to_string(), p)
    }

    #[test]
    fn call_through_drbridge_makes_both_parties_busy_then_clears() {
        let mut tb = table();
        let (a, c) = ("+4681234711".to_string(), "+4681234801".to_string());
        tb.on_call_event(&CallEvent::Ringing { call: 7, caller: a.clone(), callee: c.clone() }, t(0));
        // The caller placed a call: Busy; the callee only rings: Available (nothing to say).
        assert_eq!(changes(&mut tb), [ch("anna@lab.test", Some(TeamsPresence::IN_A_CALL))]);
        tb.on_call_event(&CallEvent::Answered { call: 7, caller: a.clone(), callee: c.clone() }, t(1));
        assert_eq!(changes(&mut tb), [ch("carl@lab.test", Some(TeamsPresence::IN_A_CALL))]);
        tb.on_call_event(&CallEvent::Held { call: 7, by: Side::Teams }, t(2));
        assert!(changes(&mut tb).is_empty(), "held is still in a call");
        let v = tb.view(&id("anna@lab.test")).unwrap();
        assert_eq!(v.devices.len(), 1);
        assert_eq!((v.devices[0].source.as_str(), v.devices[0].device.as_str()), ("drbridge", "call-7"));
        assert_eq!(v.devices[0].line, Some(LineState::Held));
        tb.on_call_event(&CallEvent::Resumed { call: 7, by: Side::Teams }, t(3));
        tb.on_call_event(&CallEvent::Ended { call: 7, caller: a, callee: c, reason: EndReason::Bye(Side::Pbx) }, t(4));
        let mut got = changes(&mut tb);
        got.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(got, [ch("anna@lab.test", None), ch("carl@lab.test", None)]);
        assert_eq!(tb.view(&id("anna@lab.test")).unwrap().devices.len(), 0);
        assert!(tb.users.is_empty() && tb.calls.is_empty() && tb.expiries.is_empty());
    }

    #[test]
    fn changes_are_coalesced_per_user() {
        let mut tb = table();
        let (a, b) = ("4711".to_string(), "4712".to_string());
        tb.on_call_event(&CallEvent::Answered { call: 1, caller: a.clone(), callee: b.clone() }, t(0));
        tb.on_call_event(&CallEvent::Ended { call: 1, caller: a.clone(), callee: b.clone(), reason: EndReason::Cancelled }, t(1));
        // Busy and back before anyone polled: nothing to publish.
        assert!(changes(&mut tb).is_empty());
        tb.on_call_event(&CallEvent::Answered { call: 2, caller: a.clone(), callee: b.clone() }, t(2));
        tb.on_call_event(&CallEvent::Answered { call: 3, caller: a.clone(), callee: "+4681234801".into() }, t(3));
        let got = changes(&mut tb);
        assert_eq!(got.len(), 3, "{got:?}");
        // The end of one of two calls changes nothing.
        tb.on_call_event(&CallEvent::Ended { call: 2, caller: a.clone(), callee: b, reason: EndReason::Timeout }, t(4));
        assert_eq!(changes(&mut tb), [ch("bo@lab.test", None)]);
    }

    #[test]
    fn transfer_target_becomes_a_party() {
        let mut tb = table();
        tb.on_call_event(&CallEvent::Answered { call: 5, caller: "+4681234801".into(), callee: "+4681234711".into() }, t(0));
        changes(&mut tb);
        tb.on_call_event(&CallEvent::Transferred { call: 5, target: "+4681234712".into(), transferor: String::new() }, t(1));
        assert_eq!(changes(&mut tb), [ch("bo@lab.test", Some(TeamsPresence::IN_A_CALL))]);
        tb.on_call_event(&CallEvent::Ended { call: 5, caller: "+4681234801".into(), callee: "+4681234711".into(), reason: EndReason::Transferred }, t(2));
        assert_eq!(changes(&mut tb).len(), 3);
        // Unknown numbers and "replaces" are ignored.
        tb.on_call_event(&CallEvent::Transferred { call: 6, target: "replaces".into(), transferor: String::new() }, t(3));
        tb.on_call_event(&CallEvent::Answered { call: 8, caller: "+1555".into(), callee: "".into() }, t(3));
        assert!(changes(&mut tb).is_empty());
        assert_eq!(tb.stats().call_parties_unknown, 1);
    }

    #[test]
    fn transferor_leaves_the_call_when_the_target_answers() {
        let mut tb = table();
        // PBX anna (4711) calls Teams carl (+4681234801); carl transfers her to bo (4712).
        tb.on_call_event(&CallEvent::Answered { call: 7, caller: "+4681234711".into(), callee: "+4681234801".into() }, t(0));
        changes(&mut tb);
        tb.on_call_event(&CallEvent::Transferred { call: 7, target: "+4681234712".into(), transferor: "+4681234801".into() }, t(1));
        let got = changes(&mut tb);
        assert!(got.contains(&ch("bo@lab.test", Some(TeamsPresence::IN_A_CALL))), "{got:?}");
        assert!(got.iter().any(|c| c.0.starts_with("carl") && c.1.is_none()), "carl is free again: {got:?}");
    }

    #[test]
    fn lost_call_end_expires() {
        let mut tb = table();
        tb.on_call_event(&CallEvent::Answered { call: 9, caller: "4711".into(), callee: "+1555".into() }, t(0));
        changes(&mut tb);
        let due = tb.poll_timeout().unwrap();
        assert_eq!(due, t(0) + TableLimits::default().call_max_age);
        tb.handle_timeout(due - Duration::from_secs(1));
        assert!(changes(&mut tb).is_empty());
        tb.handle_timeout(due);
        assert_eq!(changes(&mut tb), [ch("anna@lab.test", None)]);
        assert!(tb.calls.is_empty() && tb.poll_timeout().is_none());
    }

    fn dialog(ext: &str, body: &str) -> LineUpdate {
        LineUpdate::Dialog { extension: ext.into(), info: dialoginfo::parse(body.as_bytes()).unwrap() }
    }

    fn presence(ext: &str, body: &str) -> LineUpdate {
        LineUpdate::Presence { extension: ext.into(), doc: pidf::parse(body.as_bytes()).unwrap() }
    }

    const D_FULL_CONFIRMED: &str = r#"<dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info" version="0" state="full" entity="sip:4711@pbx">
 <dialog id="d1" direction="initiator"><state>confirmed</state></dialog></dialog-info>"#;
    const D_PARTIAL_TERMINATED: &str = r#"<dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info" version="1" state="partial" entity="sip:4711@pbx">
 <dialog id="d1"><state>terminated</state></dialog></dialog-info>"#;
    const D_PARTIAL_STALE: &str = r#"<dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info" version="1" state="partial" entity="sip:4711@pbx">
 <dialog id="d2"><state>confirmed</state></dialog></dialog-info>"#;
    const P_DND: &str = r#"<presence xmlns="urn:ietf:params:xml:ns:pidf" xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model" entity="sip:4711@pbx">
 <tuple id="t"><status><basic>open</basic></status></tuple><dm:person id="p"><dm:note>Do Not Disturb</dm:note></dm:person></presence>"#;
    const P_ABSENT: &str = r#"<presence xmlns="urn:ietf:params:xml:ns:pidf" xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model" xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid" entity="sip:4711@pbx">
 <tuple id="t"><status><basic>open</basic></status></tuple><dm:person id="p"><rpid:activities><rpid:away/></rpid:activities></dm:person></presence>"#;
    const P_OPEN: &str = r#"<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:4711@pbx"><tuple id="t"><status><basic>open</basic></status></tuple></presence>"#;

    #[test]
    fn pbx_dialog_notifies() {
        let mut tb = table();
        tb.on_line_update(&dialog("4711", D_FULL_CONFIRMED), t(0));
        assert_eq!(changes(&mut tb), [ch("anna@lab.test", Some(TeamsPresence::IN_A_CALL))]);
        tb.on_line_update(&dialog("4711", D_PARTIAL_TERMINATED), t(1));
        assert_eq!(changes(&mut tb), [ch("anna@lab.test", None)]);
        // A partial NOTIFY with an old version is dropped.
        tb.on_line_update(&dialog("4711", D_PARTIAL_STALE), t(2));
        assert!(changes(&mut tb).is_empty());
        assert_eq!(tb.stats().notifies_stale, 1);
        // Unknown extensions are counted, not fatal.
        tb.on_line_update(&dialog("4799", D_FULL_CONFIRMED), t(2));
        assert_eq!(tb.stats().notifies_unknown_extension, 1);
        // A lapsed subscription forgets the busy line.
        tb.on_line_update(&dialog("4711", D_FULL_CONFIRMED), t(3));
        changes(&mut tb);
        tb.on_line_update(&LineUpdate::Lapsed { extension: "4711".into(), package: EventPackage::Dialog }, t(4));
        assert_eq!(changes(&mut tb), [ch("anna@lab.test", None)]);
    }

    #[test]
    fn pbx_presence_dnd_and_away_beats_busy() {
        let mut tb = table();
        // "a PIDF NOTIFY with DND from a SIPp PBX makes DoNotDisturb/Presenting"
        tb.on_line_update(&presence("4711", P_DND), t(0));
        assert_eq!(changes(&mut tb), [ch("anna@lab.test", Some(TeamsPresence::DO_NOT_DISTURB))]);
        // In a call through drbridge while DND: DND wins (DND > Busy).
        tb.on_call_event(&CallEvent::Answered { call: 1, caller: "4711".into(), callee: "+1555".into() }, t(1));
        assert!(changes(&mut tb).is_empty());
        // Absent: "Away beats Busy" (and DND).
        tb.on_line_update(&presence("4711", P_ABSENT), t(2));
        assert_eq!(changes(&mut tb), [ch("anna@lab.test", Some(TeamsPresence::AWAY))]);
        tb.on_line_update(&presence("4711", P_OPEN), t(3));
        assert_eq!(changes(&mut tb), [ch("anna@lab.test", Some(TeamsPresence::IN_A_CALL))]);
        let v = tb.view(&id("anna@lab.test")).unwrap();
        let srcs: Vec<_> = v.devices.iter().map(|d| d.source.as_str()).collect();
        assert_eq!(srcs, ["drbridge", "pbx-presence"]);
        assert_eq!(v.level, PresenceLevel::Busy);
        assert_eq!(v.emitted, Some(TeamsPresence::IN_A_CALL));
        let json = serde_json::to_string(&tb.views()).unwrap();
        assert!(json.contains(r#""source":"pbx-presence""#), "{json}");
    }

    #[test]
    fn ingest_events() {
        let mut tb = table();
        let e = IngestEvent::from_json(br#"{"user":"Bo@lab.test","source":"csta","device":"4712","state":"dnd"}"#).unwrap();
        tb.on_ingest(&e, t(0)).unwrap();
        assert_eq!(changes(&mut tb), [ch("bo@lab.test", Some(TeamsPresence::DO_NOT_DISTURB))]);
        let e = IngestEvent::from_json(br#"{"user":"4712","source":"mitai","state":"meeting","ttl_secs":60}"#).unwrap();
        tb.on_ingest(&e, t(1)).unwrap();
        let e = IngestEvent::from_json(br#"{"user":"+4681234712","source":"csta","device":"4712","state":"clear"}"#).unwrap();
        tb.on_ingest(&e, t(2)).unwrap();
        assert_eq!(changes(&mut tb), [ch("bo@lab.test", Some(TeamsPresence::IN_A_CONFERENCE_CALL))]);
        assert_eq!(tb.poll_timeout(), Some(t(61)));
        tb.handle_timeout(t(61));
        assert_eq!(changes(&mut tb), [ch("bo@lab.test", None)]);
        // Errors.
        let e = IngestEvent::from_json(br#"{"user":"nobody@lab.test","source":"csta","state":"busy"}"#).unwrap();
        assert!(matches!(tb.on_ingest(&e, t(3)), Err(PresenceError::UnknownUser(_))));
        for bad in [
            &br#"{"user":"4711","source":"drbridge","state":"busy"}"#[..],
            br#"{"user":"4711","source":"csta","state":"sleeping"}"#,
            br#"{"user":"4711","source":"cs ta","state":"busy"}"#,
            br#"{"user":"4711","source":"csta","state":"busy","ttl_secs":0}"#,
            br#"{"user":"4711","source":"csta","state":"busy","extra":1}"#,
            b"not json",
        ] {
            assert!(IngestEvent::from_json(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn assume_published_after_restart() {
        let mut tb = table();
        // The store says Teams got Busy for anna before the restart; now nothing is known.
        tb.assume_published(&id("anna@lab.test"), Some(TeamsPresence::IN_A_CALL), t(0));
        tb.assume_published(&id("bo@lab.test"), None, t(0));
        assert_eq!(changes(&mut tb), [ch("anna@lab.test", None)]);
        // And a user the store and the table agree on yields nothing.
        tb.assume_published(&id("carl@lab.test"), None, t(0));
        tb.assume_published(&id("nobody@lab.test"), Some(TeamsPresence::AWAY), t(0));
        assert!(changes(&mut tb).is_empty());
    }

    #[test]
    fn directory_reload() {
        let mut tb = table();
        tb.on_line_update(&presence("4711", P_DND), t(0));
        tb.on_call_event(&CallEvent::Answered { call: 1, caller: "4712".into(), callee: "+4681234801".into() }, t(0));
        assert_eq!(changes(&mut tb).len(), 3);
        // bo is gone, 4711 moved from anna to carl.
        let d = UserDirectory::parse(
            "[[user]]\nupn = \"anna@lab.test\"\n[[user]]\nupn = \"carl@lab.test\"\nextensions = [\"4711\"]\nnumbers = [\"+4681234801\"]\n",
            "users.toml",
        )
        .unwrap();
        tb.set_directory(Arc::new(d), t(1));
        let mut got = changes(&mut tb);
        got.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(got, [ch("anna@lab.test", None), ch("bo@lab.test", None)]);
        // carl's call through drbridge stays.
        assert_eq!(tb.aggregate_of(&id("carl@lab.test")).teams, Some(TeamsPresence::IN_A_CALL));
        tb.on_line_update(&presence("4711", P_DND), t(2));
        assert_eq!(changes(&mut tb), [ch("carl@lab.test", Some(TeamsPresence::DO_NOT_DISTURB))]);
    }

    #[test]
    fn limits_hold() {
        let d = UserDirectory::parse(USERS, "users.toml").unwrap();
        let lim = TableLimits { max_calls: 2, max_devices_per_user: 3, ..TableLimits::default() };
        let mut tb = PresenceTable::new(Arc::new(d), Mapping::default(), lim);
        for call in 0..5 {
            tb.on_call_event(&CallEvent::Answered { call, caller: "4711".into(), callee: "+1555".into() }, t(0));
        }
        assert_eq!(tb.calls.len(), 2);
        assert_eq!(tb.stats().calls_untracked, 3);
        for i in 0..3 {
            let e = IngestEvent { user: "4711".into(), source: "csta".into(), device: Some(format!("d{i}")), state: IngestState::Busy, ttl_secs: None };
            tb.on_ingest(&e, t(0)).unwrap();
        }
        assert_eq!(tb.view(&id("anna@lab.test")).unwrap().devices.len(), 3);
        assert_eq!(tb.stats().devices_refused, 2);
    }
}
