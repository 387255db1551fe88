//! Presence: line state from calls, the PBX and other adapters becomes one aggregated presence per
//! user, published to Teams as drbridge's application presence session (see ../shared/DESIGN.md,
//! module `presence`, and the seeds `cloudlink-to-teams-presence.txt` and
//! `ms-teams-solution-guide.txt`, chapter "Sync Presence via CloudLink to Microsoft Teams").
//!
//! Everything here except [`store`] is sans-IO: the cores take events and the current time and
//! return changes / actions; tokio tasks at the edges own sockets, files and the clock.
//!
//! - [`state`]: the vocabulary (Teams availability/activity pairs Graph accepts, PBX user
//!   presence, line states, the CloudLink precedence levels).
//! - [`aggregate`]: combining line states and user presence into one level, and the level into
//!   what drbridge says in its Teams application session (or nothing: clearPresence).
//! - [`directory`]: users (PBX extensions, E.164 numbers, Teams UPN, cached Azure object id).
//! - [`linestate`]: the [`PresenceTable`] core: call events, PBX NOTIFY bodies and ingest events
//!   in, [`PresenceChange`]s and per-user views out.
//! - [`pidf`], [`dialoginfo`]: parsers for RFC 3863 PIDF (+RPID) and RFC 4235 dialog-info bodies.
//! - [`subscription`]: the [`SubscriptionSet`] core for the PBX SUBSCRIBEs (dialog, presence).
//! - [`store`]: the [`PresenceStore`] trait, a `redb` store and an in-memory store.
//!
//! - [`graph`]: the Microsoft Graph client (client-credentials token, setPresence,
//!   clearPresence, `$batch`, user lookup).
//! - [`publish`]: the publisher (per-user coalescing, session refresh, rate limit, Retry-After,
//!   backoff, latency histogram) and its tokio driver.
//!
//! Teams -> PBX:
//! - [`teams_watch`]: the [`teams_watch::TeamsWatch`] core: Graph presence subscriptions held by
//!   monitor accounts, change notifications coalesced into fetches, echo suppression.
//! - [`graph_watch`]: the Graph calls it needs (monitor tokens by refresh grant, subscriptions,
//!   `getPresencesByUserId`).
//! - [`teams_sync`]: the tokio task driving them; its output is a PIDF document per extension
//!   ([`pidf::teams_document`]) for the SIP core's PBX-side notifier (`b2bua::notifier`).

pub mod aggregate;
pub mod dialoginfo;
pub mod directory;
pub mod graph;
pub mod graph_watch;
pub mod linestate;
pub mod pidf;
pub mod publish;
pub mod state;
pub mod store;
pub mod service;
pub mod subscription;
pub mod teams_sync;
pub mod teams_watch;

pub use aggregate::{Aggregate, Mapping};
pub use directory::{User, UserDirectory, UserId};
pub use linestate::{IngestEvent, LineUpdate, PresenceChange, PresenceTable, UserView};
pub use state::{LineState, PbxUserPresence, PresenceLevel, TeamsActivity, TeamsAvailability, TeamsPresence};
pub use store::{MemoryStore, PresenceStore, RedbStore, StoredUser};
pub use subscription::{EventPackage, SubscribeAction, SubscriptionSet};

/// The presence module's error type.
#[derive(Debug, thiserror::Error)]
pub enum PresenceError {
    /// The user directory file could not be read or is invalid: `FILE: KEY: REASON`.
    #[error("{file}: {key}: {reason}")]
    Directory { file: String, key: String, reason: String },
    /// A NOTIFY / ingest body that could not be understood.
    #[error("bad {what} body: {reason}")]
    Body { what: &'static str, reason: String },
    /// An ingest event naming a user the directory does not know.
    #[error("unknown user {0:?}")]
    UnknownUser(String),
    /// A NOTIFY or response for a subscription drbridge does not hold (answer 481).
    #[error("no such subscription")]
    UnknownSubscription,
    /// The presence store failed.
    #[error("presence store {path}: {reason}")]
    Store { path: String, reason: String },
}

#[cfg(test)]
mod tests {
    //! The cores together, as the edges will drive them.
    use super::*;
    use crate::b2bua::{CallEvent, EndReason, Side};
    use std::sync::Arc;
    use std::time::{Duration, Instant, UNIX_EPOCH};

    #[test]
    fn notify_to_change_to_store() {
        let dir = UserDirectory::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/users.toml")).unwrap();
        let dir = Arc::new(dir);
        let mut table = PresenceTable::new(dir.clone(), Mapping::default(), linestate::TableLimits::default());
        let mut subs = SubscriptionSet::new(subscription::SubscriptionConfig::default());
        let store = MemoryStore::new();
        let (t0, w0) = (Instant::now(), UNIX_EPOCH + Duration::from_secs(1_800_000_000));
        subs.sync(dir.extensions().map(|(e, _)| e), t0);
        subs.handle_timeout(t0);
        let actions: Vec<SubscribeAction> = std::iter::from_fn(|| subs.poll_action()).collect();
        assert_eq!(actions.len(), 4, "4711 and 4712, dialog and presence");
        let pres = actions.iter().find(|a| a.extension == "4711" && a.package == EventPackage::Presence).unwrap();
        subs.on_response(pres.id, 200, Some(3600), t0);
        // A PIDF NOTIFY with DND from the PBX makes DoNotDisturb/Presenting.
        let body = br#"<?xml version="1.0"?><presence xmlns="urn:ietf:params:xml:ns:pidf" xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model" entity="sip:4711@pbx"><tuple id="t"><status><basic>open</basic></status></tuple><dm:person id="p"><dm:note>Do Not Disturb</dm:note></dm:person></presence>"#;
        let up = subs.on_notify(pres.id, "active;expires=3600", body, t0).unwrap().unwrap();
        table.on_line_update(&up, w0);
        // A call through drbridge between two other users.
        table.on_call_event(&CallEvent::Answered { call: 1, caller: "+4681234712".into(), callee: "+4681234801".into() }, w0);
        let mut pending = Vec::new();
        while let Some(c) = table.poll_change() {
            pending.push((c.user, c.new));
        }
        store.set_pending(&pending, w0).unwrap();
        let anna = UserId::new("anna.andersson@lab.drbridge.test");
        assert_eq!(store.get(&anna).unwrap().unwrap().pending.unwrap().presence, Some(TeamsPresence::DO_NOT_DISTURB));
        assert_eq!(store.all().unwrap().len(), 3);
        table.on_call_event(
            &CallEvent::Ended { call: 1, caller: "+4681234712".into(), callee: "+4681234801".into(), reason: EndReason::Bye(Side::Teams) },
            w0 + Duration::from_secs(5),
        );
        let after: Vec<_> = std::iter::from_fn(|| table.poll_change()).map(|c| (c.user.to_string(), c.new, c.at)).collect();
        assert_eq!(after.len(), 2);
        assert!(after.iter().all(|(_, new, at)| new.is_none() && *at == w0 + Duration::from_secs(5)));
    }

    proptest::proptest! {
        /// Network input never panics: NOTIFY bodies, Subscription-State values, ingest JSON.
        #[test]
        fn parsers_never_panic(body in proptest::collection::vec(proptest::num::u8::ANY, 0..512), s in ".{0,64}") {
            let _ = dialoginfo::parse(&body);
            let _ = pidf::parse(&body);
            let _ = IngestEvent::from_json(&body);
            let _ = subscription::SubscriptionState::parse(&s);
            let xml = format!(r#"<dialog-info version="1" state="partial"><dialog id="{s}"><state>{s}</state></dialog></dialog-info>"#);
            let _ = dialoginfo::parse(xml.as_bytes());
            let xml = format!(r#"<presence><tuple id="a"><status><basic>open</basic></status><note>{s}</note></tuple></presence>"#);
            if let Ok(p) = pidf::parse(xml.as_bytes()) {
                let _ = pidf::interpret(&p);
            }
        }
    }
}
