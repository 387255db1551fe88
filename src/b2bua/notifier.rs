//! drbridge as a presence notifier toward the PBX side (RFC 6665 notifier; the RFC 3856 `presence`
//! and RFC 4235 `dialog` packages): the Teams -> PBX half of the presence sync.
//!
//! Watchers on the PBX side (the PBX itself, MiCollab, phones' busy lamps through the PBX)
//! SUBSCRIBE to `sip:EXT@drbridge` with `Event: presence` (or `dialog`, busy lamp fields).
//! drbridge answers 200 with the granted Expires and NOTIFYs at once, then on every change, the
//! document presence gave for that key and package (a PIDF of the user's Teams presence, see
//! `presence::pidf::teams_document`, or a dialog-info, `presence::dialoginfo::teams_document`).
//! This part only speaks SIP; what the document says is presence's business
//! ([`Notifier::set_document`]). For `dialog` it writes each subscription's version counter
//! (RFC 4235 4.1) where the document has `version="0"`.
//!
//! Rules:
//! - Only keys presence named are served (404 otherwise); other event packages get 489 with
//!   `Allow-Events: presence, dialog`; Expires below 60 s gets 423 Min-Expires, above 3600 s is cut.
//! - A refresh (in-dialog SUBSCRIBE) re-arms the expiry and NOTIFYs the current document;
//!   `Expires: 0` ends the subscription with a final NOTIFY `terminated;reason=timeout`, as does
//!   the expiry itself. A NOTIFY answered 481 (or not at all) ends the subscription silently.
//! - One NOTIFY in flight per watcher: a change while one is pending is sent when it completes,
//!   with the latest document (RFC 6665 4.2.2: a notifier may hold back intermediate states).
//! - At most `max_watchers` subscriptions per shard; beyond, 503 with Retry-After.

use super::build::{add_identity, contact, new_tag, via};
use super::{Hop, Side};
use crate::sip::msg::{NameAddr, Request, Uri};
use bytes::Bytes;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

/// Shortest subscription accepted (423 below).
pub const MIN_EXPIRES: u32 = 60;
/// Longest subscription granted (a longer request is cut to this).
pub const MAX_EXPIRES: u32 = 3600;

/// A watcher's dialog: Call-ID and our tag (the To tag drbridge gave).
pub(super) type WatchKey = (String, String);

#[derive(Debug)]
pub(super) struct Watcher {
    pub extension: String,
    /// `presence` or `dialog`.
    package: &'static str,
    /// The next dialog-info `version` (RFC 4235: per subscription, from 0).
    version: u32,
    /// Our name-addr (the SUBSCRIBE's To with our tag): From of our NOTIFYs.
    local: String,
    /// Theirs (the SUBSCRIBE's From with their tag): To of our NOTIFYs.
    remote: String,
    remote_target: String,
    route_set: Vec<String>,
    cseq: u32,
    pub hop: Hop,
    pub expires_at: Instant,
    /// A NOTIFY is in flight; `dirty`: the document changed meanwhile.
    pending: bool,
    dirty: bool,
}

/// What the core is to do with a SUBSCRIBE.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum SubscribeOutcome {
    /// Answer with this status (and these extra headers); nothing else.
    Refuse(u16, Vec<(&'static str, String)>),
    /// Answer 200 with `Expires: expires` and the To tag, then send the NOTIFY.
    Accept { key: WatchKey, expires: u32 },
    /// Answer 200 `Expires: 0`, then the final NOTIFY (terminated).
    Ended { key: WatchKey },
}

/// The per-shard notifier state.
#[derive(Debug)]
pub(super) struct Notifier {
    extensions: HashSet<String>,
    /// Documents by (package, key).
    docs: HashMap<(&'static str, String), Bytes>,
    watchers: HashMap<WatchKey, Watcher>,
    by_extension: HashMap<(&'static str, String), Vec<WatchKey>>,
    /// (expiry, key), for the earliest expiry.
    expiries: BTreeSet<(Instant, WatchKey)>,
    max_watchers: usize,
}

/// The Expires a SUBSCRIBE asks for (RFC 6665: default of the package, 3600 for presence).
fn requested_expires(req: &Request) -> Option<u32> {
    match req.headers.get("Expires") {
        None => Some(MAX_EXPIRES),
        Some(v) => v.trim().parse::<u64>().ok().map(|n| n.min(u64::from(u32::MAX)) as u32),
    }
}

/// The event packages served.
pub const PACKAGES: [&str; 2] = ["presence", "dialog"];

/// The package of a SUBSCRIBE's `Event`, if served.
fn event_package(req: &Request) -> Option<&'static str> {
    let e = req.headers.get("Event")?.split(';').next().unwrap_or("").trim();
    PACKAGES.into_iter().find(|p| e.eq_ignore_ascii_case(p))
}

fn bad_event() -> SubscribeOutcome {
    SubscribeOutcome::Refuse(489, vec![("Allow-Events", PACKAGES.join(", "))])
}

fn content_type(package: &str) -> &'static str {
    if package == "dialog" {
        "application/dialog-info+xml"
    } else {
        "application/pidf+xml"
    }
}

impl Notifier {
    pub fn new(extensions: impl IntoIterator<Item = String>, max_watchers: usize) -> Notifier {
        Notifier {
            extensions: extensions.into_iter().collect(),
            docs: HashMap::new(),
            watchers: HashMap::new(),
            by_extension: HashMap::new(),
            expiries: BTreeSet::new(),
            max_watchers,
        }
    }

    pub fn owns(&self, key: &WatchKey) -> bool {
        self.watchers.contains_key(key)
    }

    pub fn len(&self) -> usize {
        self.watchers.len()
    }

    /// An out-of-dialog SUBSCRIBE for `extension` (the Request-URI user).
    pub fn subscribe(&mut self, req: &Request, hop: Hop, now: Instant) -> SubscribeOutcome {
        let Some(package) = event_package(req) else { return bad_event() };
        let Some(ext) = Uri::parse(&req.uri).ok().and_then(|u| u.user) else {
            return SubscribeOutcome::Refuse(404, vec![]);
        };
        if !self.extensions.contains(&ext) {
            return SubscribeOutcome::Refuse(404, vec![]);
        }
        let Some(expires) = requested_expires(req) else { return SubscribeOutcome::Refuse(400, vec![]) };
        if expires != 0 && expires < MIN_EXPIRES {
            return SubscribeOutcome::Refuse(423, vec![("Min-Expires", MIN_EXPIRES.to_string())]);
        }
        let (Some(call_id), Some(from), Some(to)) = (req.call_id(), req.headers.get("From"), req.headers.get("To")) else {
            return SubscribeOutcome::Refuse(400, vec![]);
        };
        if NameAddr::parse(from).ok().and_then(|n| n.tag().map(str::to_string)).is_none() {
            return SubscribeOutcome::Refuse(400, vec![]);
        }
        let Some(target) = req.headers.values("Contact").first().and_then(|c| NameAddr::parse(c).ok()).map(|c| c.uri.to_string()) else {
            return SubscribeOutcome::Refuse(400, vec![]);
        };
        if expires > 0 && self.watchers.len() >= self.max_watchers {
            return SubscribeOutcome::Refuse(503, vec![("Retry-After", "30".into())]);
        }
        let tag = new_tag();
        let key = (call_id.to_string(), tag.clone());
        let granted = expires.min(MAX_EXPIRES);
        let w = Watcher {
            extension: ext.clone(),
            package,
            version: 0,
            local: format!("{to};tag={tag}"),
            remote: from.to_string(),
            remote_target: target,
            // Record-Route in order for the UAS side (RFC 3261 12.1.1).
            route_set: req.headers.values("Record-Route").iter().map(|s| s.to_string()).collect(),
            cseq: 0,
            hop,
            expires_at: now + Duration::from_secs(u64::from(granted)),
            pending: false,
            dirty: false,
        };
        self.expiries.insert((w.expires_at, key.clone()));
        self.by_extension.entry((package, ext)).or_default().push(key.clone());
        self.watchers.insert(key.clone(), w);
        if granted == 0 {
            // A fetch (RFC 6665 4.4.3): one NOTIFY, then the subscription is over.
            SubscribeOutcome::Ended { key }
        } else {
            SubscribeOutcome::Accept { key, expires: granted }
        }
    }

    /// A SUBSCRIBE in an existing watcher dialog (refresh or `Expires: 0`).
    pub fn refresh(&mut self, key: &WatchKey, req: &Request, now: Instant) -> SubscribeOutcome {
        let Some(w) = self.watchers.get_mut(key) else { return SubscribeOutcome::Refuse(481, vec![]) };
        if event_package(req) != Some(w.package) {
            // RFC 6665 4.1.2.2: a refresh names the subscription's own package.
            return bad_event();
        }
        let Some(expires) = requested_expires(req) else { return SubscribeOutcome::Refuse(400, vec![]) };
        if expires != 0 && expires < MIN_EXPIRES {
            return SubscribeOutcome::Refuse(423, vec![("Min-Expires", MIN_EXPIRES.to_string())]);
        }
        let granted = expires.min(MAX_EXPIRES);
        self.expiries.remove(&(w.expires_at, key.clone()));
        w.expires_at = now + Duration::from_secs(u64::from(granted));
        self.expiries.insert((w.expires_at, key.clone()));
        if let Some(c) = req.headers.values("Contact").first().and_then(|c| NameAddr::parse(c).ok()) {
            w.remote_target = c.uri.to_string();
        }
        if granted == 0 {
            SubscribeOutcome::Ended { key: key.clone() }
        } else {
            SubscribeOutcome::Accept { key: key.clone(), expires: granted }
        }
    }

    /// The NOTIFY a watcher is due, with the current document; `None` when one is in flight
    /// (then it is sent when that one completes) or the watcher is gone. `terminated`: the
    /// final NOTIFY, after which the watcher is forgotten.
    pub fn notify(&mut self, cfg: &super::CoreConfig, key: &WatchKey, terminated: Option<&str>, now: Instant) -> Option<(Request, Hop)> {
        let w = self.watchers.get_mut(key)?;
        if w.pending && terminated.is_none() {
            w.dirty = true;
            return None;
        }
        w.pending = true;
        w.dirty = false;
        w.cseq += 1;
        let mut r = Request::new(crate::sip::msg::Method::Notify, w.remote_target.clone());
        r.headers.push("Via", via(cfg, Side::Pbx, &crate::sip::txn::new_branch()));
        r.headers.push("Max-Forwards", "70");
        for rr in &w.route_set {
            r.headers.push("Route", rr.clone());
        }
        r.headers.push("From", w.local.clone());
        r.headers.push("To", w.remote.clone());
        r.headers.push("Call-ID", key.0.clone());
        r.headers.push("CSeq", format!("{} NOTIFY", w.cseq));
        r.headers.push("Contact", contact(cfg, Side::Pbx, Some(&w.extension)));
        r.headers.push("Event", w.package);
        let state = match terminated {
            Some(reason) => format!("terminated;reason={reason}"),
            None => format!("active;expires={}", w.expires_at.saturating_duration_since(now).as_secs().max(1)),
        };
        r.headers.push("Subscription-State", state);
        add_identity(cfg, Side::Pbx, &mut r.headers, true);
        if let Some(doc) = self.docs.get(&(w.package, w.extension.clone())) {
            r.headers.push("Content-Type", content_type(w.package));
            r.body = if w.package == "dialog" {
                let v = w.version;
                w.version = w.version.wrapping_add(1);
                match std::str::from_utf8(doc) {
                    Ok(text) => Bytes::from(text.replacen("version=\"0\"", &format!("version=\"{v}\""), 1)),
                    Err(_) => doc.clone(),
                }
            } else {
                doc.clone()
            };
        }
        let hop = w.hop.clone();
        if terminated.is_some() {
            self.forget(key);
        }
        Some((r, hop))
    }

    /// The final response to a NOTIFY: true when another one is due now (the document changed
    /// while it was in flight). Failures (481, timeouts, other errors) end the subscription.
    pub fn notify_done(&mut self, key: &WatchKey, status: u16) -> bool {
        let Some(w) = self.watchers.get_mut(key) else { return false };
        w.pending = false;
        if !(200..300).contains(&status) {
            self.forget(key);
            return false;
        }
        w.dirty
    }

    /// A new document of `package` for `key` (`None`: presence has nothing to say any more,
    /// the watchers get an empty NOTIFY). Returns the watchers to NOTIFY. Unknown packages are
    /// ignored.
    pub fn set_document(&mut self, package: &str, key: &str, doc: Option<Bytes>) -> Vec<WatchKey> {
        let Some(package) = PACKAGES.into_iter().find(|p| *p == package) else { return Vec::new() };
        let k = (package, key.to_string());
        match doc {
            Some(d) => {
                if self.docs.get(&k) == Some(&d) {
                    return Vec::new();
                }
                self.docs.insert(k.clone(), d);
            }
            None => {
                if self.docs.remove(&k).is_none() {
                    return Vec::new();
                }
            }
        }
        self.by_extension.get(&k).cloned().unwrap_or_default()
    }

    /// Watchers whose subscription ran out by `now`.
    pub fn expired(&self, now: Instant) -> Vec<WatchKey> {
        self.expiries.iter().take_while(|(at, _)| *at <= now).map(|(_, k)| k.clone()).collect()
    }

    pub fn next_expiry(&self) -> Option<Instant> {
        self.expiries.first().map(|(at, _)| *at)
    }

    fn forget(&mut self, key: &WatchKey) {
        if let Some(w) = self.watchers.remove(key) {
            self.expiries.remove(&(w.expires_at, key.clone()));
            let k = (w.package, w.extension);
            if let Some(v) = self.by_extension.get_mut(&k) {
                v.retain(|x| x != key);
                if v.is_empty() {
                    self.by_extension.remove(&k);
                }
            }
        }
    }
}
