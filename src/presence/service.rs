//! The presence pipeline as one tokio task: call events and PBX subscription events from the
//! SIP core, ingest events from the admin server -> [`PresenceTable`] -> the store (pending) and
//! the Graph publisher. The SUBSCRIBEs the [`SubscriptionSet`] wants go back to the SIP core as
//! [`SubscribeCommand`]s (presence never touches SIP itself).

use super::directory::UserDirectory;
use super::linestate::{IngestEvent, PresenceTable, TableLimits};
use super::publish::PublishHandle;
use super::store::PresenceStore;
use super::subscription::{SubscribeKind, SubscriptionConfig, SubscriptionSet};
use super::subscription::SubId;
use super::{Mapping, TeamsPresence};
use crate::b2bua::{CallEvent, SubscriptionEvent};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::mpsc;

/// Inputs of the presence task.
#[derive(Debug)]
pub enum PresenceInput {
    Call(CallEvent),
    Subscription(SubscriptionEvent),
    Ingest(IngestEvent),
    /// The PBX trunk came back (OPTIONS): subscribe everything again.
    PbxUp,
}

/// A SUBSCRIBE the SIP core is to send for the presence sources.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscribeCommand {
    pub id: u64,
    pub user: String,
    pub event: &'static str,
    pub accept: &'static str,
    pub expires: u32,
    pub initial: bool,
}

/// How the task is set up.
pub struct PresenceSetup {
    pub directory: Arc<UserDirectory>,
    pub mapping: Mapping,
    pub store: Arc<dyn PresenceStore>,
    /// None: nothing is published (Graph off), the table still runs for the admin view.
    pub publish: Option<PublishHandle>,
    /// Subscribe to the PBX's dialog and presence packages for every extension in the directory.
    pub subscribe_pbx: bool,
}

/// The running task: where to send inputs, where SUBSCRIBE commands come out, the table for
/// the admin view.
pub struct PresenceService {
    pub input: mpsc::Sender<PresenceInput>,
    pub commands: mpsc::Receiver<SubscribeCommand>,
    pub table: Arc<Mutex<PresenceTable>>,
    pub task: tokio::task::JoinHandle<()>,
}

pub fn spawn(setup: PresenceSetup, queue: usize) -> PresenceService {
    let (in_tx, in_rx) = mpsc::channel(queue.max(16));
    let (cmd_tx, cmd_rx) = mpsc::channel(queue.max(16));
    let table = Arc::new(Mutex::new(PresenceTable::new(setup.directory.clone(), setup.mapping, TableLimits::default())));
    // What was published or pending before a restart is owed to Teams until the table says
    // otherwise: the publisher gets it again from the store (see `restore_from_store`).
    let task = tokio::spawn(run(setup, table.clone(), in_rx, cmd_tx));
    PresenceService { input: in_tx, commands: cmd_rx, table, task }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn run(setup: PresenceSetup, table: Arc<Mutex<PresenceTable>>, mut rx: mpsc::Receiver<PresenceInput>, cmds: mpsc::Sender<SubscribeCommand>) {
    let mut subs = SubscriptionSet::new(SubscriptionConfig::default());
    let start = Instant::now();
    if setup.subscribe_pbx {
        subs.sync(setup.directory.extensions().map(|(e, _)| e), start);
    }
    loop {
        let now = Instant::now();
        let wall = SystemTime::now();
        subs.handle_timeout(now);
        lock(&table).handle_timeout(wall);
        flush(&setup, &table, &mut subs, &cmds, now, wall);
        let next_sub = subs.poll_timeout();
        let next_table = lock(&table).poll_timeout().and_then(|t| t.duration_since(wall).ok()).map(|d| now + d);
        let wake = [next_sub, next_table].into_iter().flatten().min().unwrap_or(now + Duration::from_secs(60));
        tokio::select! {
            ev = rx.recv() => {
                let Some(ev) = ev else { break };
                let (now, wall) = (Instant::now(), SystemTime::now());
                handle(&table, &mut subs, ev, now, wall);
                // Take what else is queued before flushing once.
                for _ in 0..1024 {
                    match rx.try_recv() {
                        Ok(ev) => handle(&table, &mut subs, ev, now, wall),
                        Err(_) => break,
                    }
                }
            }
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {}
        }
    }
}

fn handle(table: &Mutex<PresenceTable>, subs: &mut SubscriptionSet, ev: PresenceInput, now: Instant, wall: SystemTime) {
    match ev {
        PresenceInput::Call(c) => lock(table).on_call_event(&c, wall),
        PresenceInput::Ingest(i) => {
            if let Err(e) = lock(table).on_ingest(&i, wall) {
                tracing::info!(error = %e, "presence ingest refused");
            }
        }
        PresenceInput::Subscription(SubscriptionEvent::Response { id, status, expires }) => subs.on_response(SubId(id), status, expires, now),
        PresenceInput::Subscription(SubscriptionEvent::Notify { id, state, body, .. }) => match subs.on_notify(SubId(id), &state, &body, now) {
            Ok(Some(update)) => lock(table).on_line_update(&update, wall),
            Ok(None) => {}
            Err(e) => tracing::debug!(error = %e, "PBX NOTIFY not used"),
        },
        PresenceInput::PbxUp => subs.resubscribe_all(now),
    }
}

fn flush(setup: &PresenceSetup, table: &Mutex<PresenceTable>, subs: &mut SubscriptionSet, cmds: &mpsc::Sender<SubscribeCommand>, now: Instant, wall: SystemTime) {
    while let Some(a) = subs.poll_action() {
        let cmd = SubscribeCommand {
            id: a.id.0,
            user: a.extension.clone(),
            event: a.package.event(),
            accept: a.package.accept(),
            expires: a.expires,
            initial: a.kind == SubscribeKind::Initial,
        };
        if cmds.try_send(cmd).is_err() {
            // The SIP core is behind: the subscription retries on its own timers.
            subs.on_response(a.id, 503, None, now);
        }
    }
    while let Some(update) = subs.poll_update() {
        lock(table).on_line_update(&update, wall);
    }
    let changes: Vec<_> = std::iter::from_fn(|| lock(table).poll_change()).collect();
    if changes.is_empty() {
        return;
    }
    let pending: Vec<(super::UserId, Option<TeamsPresence>)> = changes.iter().map(|c| (c.user.clone(), c.new)).collect();
    if let Err(e) = setup.store.set_pending(&pending, wall) {
        tracing::warn!(error = %e, "presence store: pending state not saved");
    }
    if let Some(p) = &setup.publish {
        for c in changes {
            // The publisher, its log and the store know users by id (lower-case UPN); the
            // Graph sink maps ids to Azure object ids.
            let key = c.user.to_string();
            // The Graph side has its own pair type (same five pairs Graph accepts).
            let state = c.new.and_then(to_graph);
            if let Err(e) = p.try_desire(key, state) {
                tracing::warn!(error = %e, user = %c.user, "presence publisher queue full: change dropped");
            }
        }
    }
}

/// The presence pair of the aggregation as the Graph client spells it (the same five pairs).
pub fn to_graph(p: TeamsPresence) -> Option<super::graph::TeamsPresence> {
    super::graph::TeamsPresence::from_pair(p.availability().as_str(), p.activity().as_str())
}

pub fn from_graph(p: super::graph::TeamsPresence) -> Option<TeamsPresence> {
    TeamsPresence::ALL_PAIRS.iter().copied().find(|t| t.availability().as_str() == p.availability() && t.activity().as_str() == p.activity())
}

fn from_ms(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
}

/// The publisher's log kept in the presence store (keyed by the user's id = lower-case UPN):
/// what Graph accepted, and what is still owed after a restart or a Graph outage.
pub struct StoreLog {
    pub store: Arc<dyn PresenceStore>,
    pub expiration: Duration,
}

impl super::publish::PublishLog for StoreLog {
    fn published(&mut self, user: &str, state: Option<super::graph::TeamsPresence>, at: SystemTime) {
        let state = state.and_then(from_graph);
        let expires = state.map(|_| at + self.expiration);
        if let Err(e) = self.store.set_published(&super::UserId::new(user), state, at, expires) {
            tracing::warn!(error = %e, "presence store: published state not saved");
        }
    }
    fn pending(&mut self, user: &str, state: Option<super::graph::TeamsPresence>, since: SystemTime) {
        let state = state.and_then(from_graph);
        if let Err(e) = self.store.set_pending(&[(super::UserId::new(user), state)], since) {
            tracing::warn!(error = %e, "presence store: pending state not saved");
        }
    }
}

/// Gives the publisher what the store holds, so that after a restart (or a Graph outage that
/// outlived the process) Teams ends with the right state.
///
/// What Graph was last told is restored as published. What was pending is not wanted any more:
/// the calls that made it died with the process, and the PBX sources report their state again
/// (subscriptions start from scratch). So the state drbridge owes Teams after a restart is
/// "nothing" until the sources say otherwise: a user whose session Graph still shows gets a
/// clearPresence (retried until Graph takes it), a user for whom nothing reached Graph gets no
/// request at all.
pub fn restore_from_store(store: &dyn PresenceStore, publisher: &mut super::publish::Publisher, now: Instant) {
    let Ok(all) = store.all() else { return };
    for (user, st) in all {
        let published = st.published.as_ref().map(|p| (p.presence.and_then(to_graph), from_ms(p.at_ms)));
        if st.pending.is_none() && published.as_ref().is_none_or(|p| p.0.is_none()) {
            continue;
        }
        publisher.restore(user.as_str(), published, None, now);
        publisher.desire(user.as_str(), None, now);
    }
}

/// The Azure object ids already known (directory file or store cache), to seed the Graph sink
/// before the publisher sends anything.
pub fn cached_object_ids(dir: &UserDirectory, store: &dyn PresenceStore) -> HashMap<String, String> {
    let mut ids = HashMap::new();
    for u in dir.users() {
        if let Some(id) = u.object_id.clone().or_else(|| store.get(&u.id).ok().flatten().and_then(|s| s.object_id)) {
            ids.insert(u.id.to_string(), id);
        }
    }
    ids
}

/// The Graph client addressed by user id (UPN): operations go to the Azure object id once it is
/// known (Graph also takes the UPN in `/users/{id}` until then).
pub struct DirectorySink {
    pub graph: Arc<super::graph::GraphClient>,
    pub object_ids: Arc<Mutex<HashMap<String, String>>>,
}

impl super::publish::PresenceSink for DirectorySink {
    async fn execute(&self, ops: Vec<super::graph::PresenceOp>) -> Vec<super::graph::OpOutcome> {
        // Graph's presence API takes the object id: a user not resolved yet is looked up first
        // (`GET /users/{upn}`); only if Graph does not know the user does the UPN go out.
        let mut out = Vec::with_capacity(ops.len());
        for mut op in ops {
            let known = lock(&self.object_ids).get(&op.user_id).cloned();
            match known {
                Some(id) => op.user_id = id,
                None => {
                    if let Ok(Some(id)) = self.graph.resolve_user(&op.user_id).await {
                        lock(&self.object_ids).insert(op.user_id.clone(), id.clone());
                        op.user_id = id;
                    }
                }
            }
            out.push(op);
        }
        self.graph.execute(&out).await
    }
}

/// Looks up the Azure object id of every user of the directory that has none cached
/// (`GET /users/{upn}`), in the background: a user whose identity does not resolve is
/// reported, not fatal; Graph being down only delays the lookups.
pub async fn resolve_object_ids(dir: Arc<UserDirectory>, store: Arc<dyn PresenceStore>, graph: Arc<super::graph::GraphClient>, ids: Arc<Mutex<HashMap<String, String>>>) {
    for u in dir.users() {
        let cached = u.object_id.clone().or_else(|| store.get(&u.id).ok().flatten().and_then(|s| s.object_id));
        if let Some(id) = cached {
            lock(&ids).insert(u.id.to_string(), id);
            continue;
        }
        let mut delay = Duration::from_secs(1);
        for _ in 0..6 {
            match graph.resolve_user(&u.upn).await {
                Ok(Some(id)) => {
                    let _ = store.set_object_id(&u.id, Some(&id));
                    lock(&ids).insert(u.id.to_string(), id);
                    break;
                }
                Ok(None) => {
                    tracing::warn!(upn = %u.upn, "Teams identity does not resolve in Graph: published by UPN");
                    break;
                }
                Err(e) => {
                    tracing::debug!(upn = %u.upn, error = %e, "object id lookup failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(60));
                }
            }
        }
    }
}
