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
//! The Graph client / publisher (`graph`, `publish`) come from the `presence-graph` branch and
//! are declared there: `pub mod graph; pub mod publish;` once both branches are merged.

pub mod aggregate;
pub mod dialoginfo;
pub mod directory;
pub mod linestate;
pub mod pidf;
pub mod state;
pub mod store;
pub mod subscription;

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
