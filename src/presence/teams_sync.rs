//! The Teams -> PBX presence task: drives the [`TeamsWatch`] core with the Graph client (monitor
//! subscriptions, presence fetches), feeds it the webhook's change notifications and what the
//! publisher currently says for each user (echo suppression), and turns each changed Teams
//! status into the PIDF document of the user's extensions for the PBX-side watchers.
//!
//! ```text
//!  Graph --POST /graph/webhook--> admin --WebhookNote--> this task --TeamsWatch--> Fetch
//!  this task --getPresencesByUserId--> Graph ; changed status --PresenceDoc--> signalling shards
//! ```
//!
//! Monitors' refresh tokens rotate: the Graph client writes the newest back to the monitor's
//! token file at once (`GraphClient::add_monitor_with_file`). The subscriptions held are
//! recorded in the store, and those of a previous run are deleted at start.

use super::directory::{UserDirectory, UserId};
use super::graph::{GraphClient, GraphError, Secret};
use super::pidf::teams_document;
use super::teams_watch::{TeamsStatus, TeamsWatch, WatchAction, WatchConfig};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// A change notification or lifecycle event from the webhook (clientState already checked).
#[derive(Clone, Debug)]
pub struct WebhookNote {
    pub subscription_id: String,
    pub resource: Option<String>,
    pub lifecycle: Option<String>,
}

/// A document for the PBX-side watchers of one key (an extension or number): `presence` (PIDF)
/// or `dialog` (dialog-info, for busy lamp fields). `None`: nothing known any more.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PresenceDoc {
    pub package: &'static str,
    pub key: String,
    pub body: Option<Bytes>,
}

/// What drbridge currently publishes for a user (availability, activity), for echo suppression.
pub type PublishedFn = Arc<dyn Fn(&UserId) -> Option<(String, String)> + Send + Sync>;

/// Takes one request from the Graph presence budget shared with the publisher (Graph throttles
/// presence requests per application and tenant): `Err(when)` when there is none before then.
pub type ChargeFn = Arc<dyn Fn(Instant) -> Result<(), Instant> + Send + Sync>;

pub struct TeamsSyncSetup {
    pub watch: WatchConfig,
    pub graph: Arc<GraphClient>,
    pub directory: Arc<UserDirectory>,
    /// Azure object ids by user id, filled in the background (`service::resolve_object_ids`).
    pub object_ids: Arc<Mutex<HashMap<String, String>>>,
    pub notification_url: String,
    pub client_state: Secret,
    /// Host of the PIDF `entity` (`sip:EXT@host`): the PBX domain.
    pub entity_host: String,
    pub published: PublishedFn,
    pub charge: ChargeFn,
    /// `numbers.to_pbx`, for [`watch_keys`].
    pub to_pbx: crate::routing::NumberRules,
    /// Where the subscriptions held are recorded: those of a previous run are deleted at start.
    pub store: Arc<dyn super::store::PresenceStore>,
}

/// The user parts a PBX-side watcher may SUBSCRIBE to for `user`: its extensions, its numbers
/// as written in the directory, and those numbers in the PBX's form (`numbers.to_pbx`), so that
/// a busy lamp for a Teams-only user works with the number the PBX dials.
pub fn watch_keys(user: &super::directory::User, to_pbx: &crate::routing::NumberRules) -> Vec<String> {
    let mut keys: Vec<String> = Vec::new();
    let numbers = user.numbers.iter().flat_map(|n| [n.clone(), to_pbx.apply(n)]);
    for k in user.extensions.iter().cloned().chain(numbers) {
        if !k.is_empty() && !keys.contains(&k) {
            keys.push(k);
        }
    }
    keys
}

/// The running task's handles.
pub struct TeamsSync {
    pub notes: mpsc::Sender<WebhookNote>,
    pub docs: mpsc::Receiver<PresenceDoc>,
    /// Last Teams-originated status per user, for the admin view.
    pub statuses: Arc<Mutex<HashMap<String, TeamsStatus>>>,
    pub task: tokio::task::JoinHandle<()>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The outcome of one Graph call, back into the task's loop.
enum Done {
    Created(u64, Result<(String, Duration), GraphError>),
    Renewed(u64, Result<Duration, GraphError>),
    Reauthorized(u64, Result<(), GraphError>),
    Fetched(Vec<String>, Result<Vec<(String, String, String)>, GraphError>),
}

fn failure(e: &GraphError) -> (u16, Option<Duration>) {
    match e {
        GraphError::Status { status, retry_after, .. } => (*status, *retry_after),
        _ => (0, None),
    }
}

pub fn spawn(setup: TeamsSyncSetup, queue: usize) -> TeamsSync {
    let (notes_tx, mut notes) = mpsc::channel::<WebhookNote>(queue.max(16));
    let (docs_tx, docs) = mpsc::channel::<PresenceDoc>(queue.max(16));
    let statuses = Arc::new(Mutex::new(HashMap::new()));
    let view = statuses.clone();
    let task = tokio::spawn(async move {
        let s = setup;
        let (done_tx, mut done) = mpsc::channel::<Done>(256);
        // Subscriptions of a previous run still notify for up to an hour: delete them.
        for (id, monitor) in s.store.graph_subscriptions().unwrap_or_default() {
            let (g, store) = (s.graph.clone(), s.store.clone());
            tokio::spawn(async move {
                match g.delete_subscription(&monitor, &id).await {
                    Ok(()) => tracing::info!(monitor = %monitor, "Graph subscription of a previous run deleted"),
                    Err(e) => tracing::info!(monitor = %monitor, error = %e, "Graph subscription of a previous run not deleted (it expires by itself)"),
                }
                let _ = store.set_graph_subscription(&id, None);
            });
        }
        let mut monitor_of: HashMap<u64, String> = HashMap::new();
        let now = Instant::now();
        let mut watch = TeamsWatch::new(s.watch.clone(), now);
        let mut watched: usize = 0;
        let mut by_object: HashMap<String, UserId> = HashMap::new();
        let mut resync = tokio::time::interval(Duration::from_secs(5));
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // The watched set grows as object ids resolve.
            let ids: Vec<(String, UserId)> = {
                let known = lock(&s.object_ids);
                s.directory.users().iter().filter_map(|u| known.get(u.id.as_str()).map(|id| (id.to_ascii_lowercase(), u.id.clone()))).collect()
            };
            if ids.len() != watched {
                watched = ids.len();
                by_object = ids.iter().cloned().collect();
                watch.set_users(ids, Instant::now());
                if watch.unwatched() > 0 {
                    tracing::warn!(unwatched = watch.unwatched(), "Teams -> PBX presence: more users than the monitors can watch (650 each): add monitors");
                }
            }
            while let Some(a) = watch.poll_action() {
                let g = s.graph.clone();
                let tx = done_tx.clone();
                match a {
                    WatchAction::Create { key, monitor, ids, lifetime } => {
                        monitor_of.insert(key, monitor.clone());
                        let (url, state) = (s.notification_url.clone(), s.client_state.clone());
                        tokio::spawn(async move {
                            let r = g.create_subscription(&monitor, &ids, &url, &state, lifetime).await;
                            let _ = tx.send(Done::Created(key, r)).await;
                        });
                    }
                    WatchAction::Renew { key, monitor, subscription_id, lifetime } => {
                        tokio::spawn(async move {
                            let r = g.renew_subscription(&monitor, &subscription_id, lifetime).await;
                            let _ = tx.send(Done::Renewed(key, r)).await;
                        });
                    }
                    WatchAction::Reauthorize { key, monitor, subscription_id } => {
                        tokio::spawn(async move {
                            let r = g.reauthorize_subscription(&monitor, &subscription_id).await;
                            let _ = tx.send(Done::Reauthorized(key, r)).await;
                        });
                    }
                    WatchAction::Delete { monitor, subscription_id } => {
                        let store = s.store.clone();
                        tokio::spawn(async move {
                            if let Err(e) = g.delete_subscription(&monitor, &subscription_id).await {
                                tracing::info!(error = %e, "Graph subscription not deleted (it expires by itself)");
                            }
                            let _ = store.set_graph_subscription(&subscription_id, None);
                        });
                    }
                    WatchAction::Fetch { ids } => {
                        let charge = s.charge.clone();
                        tokio::spawn(async move {
                            // One getPresencesByUserId is one request of the shared budget.
                            while let Err(at) = charge(Instant::now()) {
                                tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
                            }
                            let r = g.get_presences(&ids).await;
                            let _ = tx.send(Done::Fetched(ids, r)).await;
                        });
                    }
                }
            }
            while let Some(u) = watch.poll_update() {
                tracing::debug!(user = %u.user.as_str(), availability = %u.status.availability, activity = %u.status.activity, "Teams presence for the PBX side");
                lock(&view).insert(u.user.as_str().to_string(), u.status.clone());
                if let Some(user) = s.directory.get(&u.user) {
                    for key in watch_keys(user, &s.to_pbx) {
                        let entity = format!("sip:{key}@{}", s.entity_host);
                        let pidf = teams_document(&entity, &u.status.availability, &u.status.activity);
                        let dialog = super::dialoginfo::teams_document(&entity, &u.status.activity);
                        let _ = docs_tx.send(PresenceDoc { package: "presence", key: key.clone(), body: Some(Bytes::from(pidf)) }).await;
                        let _ = docs_tx.send(PresenceDoc { package: "dialog", key, body: Some(Bytes::from(dialog)) }).await;
                    }
                }
            }
            let wake = watch.poll_timeout().unwrap_or_else(|| Instant::now() + Duration::from_secs(60));
            tokio::select! {
                n = notes.recv() => {
                    let Some(n) = n else { break };
                    watch.on_notification(&n.subscription_id, n.resource.as_deref(), n.lifecycle.as_deref(), Instant::now());
                }
                Some(d) = done.recv() => {
                    let now = Instant::now();
                    match d {
                        Done::Created(key, Ok((id, granted))) => {
                            if let Some(m) = monitor_of.remove(&key) {
                                if let Err(e) = s.store.set_graph_subscription(&id, Some(&m)) {
                                    tracing::warn!(error = %e, "cannot record a Graph subscription");
                                }
                            }
                            watch.on_created(key, &id, granted, now);
                        }
                        Done::Renewed(key, Ok(granted)) => watch.on_renewed(key, granted, now),
                        Done::Reauthorized(key, Ok(())) => watch.on_renewed(key, s.watch.lifetime, now),
                        Done::Created(key, Err(e)) | Done::Renewed(key, Err(e)) | Done::Reauthorized(key, Err(e)) => {
                            tracing::info!(error = %e, "Graph presence subscription request failed");
                            monitor_of.remove(&key);
                            let (status, retry) = failure(&e);
                            watch.on_failed(key, status, retry, now);
                        }
                        Done::Fetched(_, Ok(list)) => {
                            for (id, _, _) in &list {
                                if let Some(user) = by_object.get(&id.to_ascii_lowercase()) {
                                    watch.set_published(user, (s.published)(user));
                                }
                            }
                            watch.on_fetched(list, now);
                        }
                        Done::Fetched(ids, Err(e)) => {
                            tracing::info!(error = %e, users = ids.len(), "Teams presence fetch failed");
                            let (status, retry) = failure(&e);
                            watch.on_fetch_failed(ids, status, retry, now);
                        }
                    }
                }
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => watch.handle_timeout(Instant::now()),
                _ = resync.tick() => {}
            }
        }
    });
    TeamsSync { notes: notes_tx, docs, statuses, task }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_keys_are_extensions_numbers_and_pbx_forms() {
        let dir = UserDirectory::parse(
            "[[user]]\nupn = \"anna@x\"\nextensions = [\"4711\"]\nnumbers = [\"+4681234711\"]\n[[user]]\nupn = \"carl@x\"\nnumbers = [\"+4681234801\", \"+4681230000\"]\n",
            "users.toml",
        )
        .unwrap();
        let rules: Vec<crate::config::NumberRule> = toml::from_str::<crate::config::Numbers>("[[to_pbx]]\nmatch = '^\\+468123(\\d{4})$'\nreplace = '$1'\n").unwrap().to_pbx;
        let to_pbx = crate::routing::NumberRules::new(&rules);
        let anna = dir.by_upn("anna@x").unwrap();
        assert_eq!(watch_keys(anna, &to_pbx), ["4711", "+4681234711"], "the PBX form of anna's number is her extension: once");
        let carl = dir.by_upn("carl@x").unwrap();
        assert_eq!(watch_keys(carl, &to_pbx), ["+4681234801", "4801", "+4681230000", "0000"]);
        assert_eq!(watch_keys(carl, &crate::routing::NumberRules::default()), ["+4681234801", "+4681230000"]);
    }
}
