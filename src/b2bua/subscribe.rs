//! SUBSCRIBE dialogs drbridge keeps toward the PBX (RFC 6665) for the presence line-state
//! sources: the `dialog` package (RFC 4235) and `presence` (RFC 3856) per monitored extension.
//! Presence decides what to subscribe to and when (`presence::SubscriptionSet`); this part only
//! speaks SIP: it builds SUBSCRIBE requests in the right dialog, answers the PBX's NOTIFYs and
//! hands their state and body back as [`SubscriptionEvent`]s. It never reaches into presence.

use super::build::{add_identity, contact, new_tag, via};
use super::Side;
use crate::sip::msg::{Method, NameAddr, Request, Response};
use bytes::Bytes;

/// What happened to a subscription, for the presence core.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubscriptionEvent {
    /// Final response to a SUBSCRIBE (408 for a transaction timeout); `expires` from a 2xx
    /// Expires or a 423 Min-Expires.
    Response { id: u64, status: u16, expires: Option<u32> },
    /// A NOTIFY in the subscription's dialog (already answered 200).
    Notify { id: u64, state: String, content_type: String, body: Bytes },
}

/// One subscription dialog (UAC side).
#[derive(Clone, Debug)]
pub(super) struct SubscriptionDialog {
    pub call_id: String,
    pub local_tag: String,
    pub local: String,
    pub remote: String,
    pub remote_target: String,
    pub route_set: Vec<String>,
    pub cseq: u32,
    pub event: String,
    pub accept: String,
    pub established: bool,
}

impl SubscriptionDialog {
    /// `call_id`: a fresh one of this core's shard.
    pub fn new(user: &str, cfg: &super::CoreConfig, call_id: String, event: &str, accept: &str) -> SubscriptionDialog {
        let tag = new_tag();
        let local = format!("<sip:drbridge@{}>;tag={tag}", cfg.pbx_local);
        let remote = format!("<sip:{user}@{}>", cfg.pbx_domain);
        SubscriptionDialog {
            call_id,
            local_tag: tag,
            local,
            remote: remote.clone(),
            remote_target: format!("sip:{user}@{}", cfg.pbx_domain),
            route_set: Vec::new(),
            cseq: 0,
            event: event.to_string(),
            accept: accept.to_string(),
            established: false,
        }
    }

    /// The next SUBSCRIBE of this dialog (initial, refresh, or Expires: 0 to end it).
    pub fn request(&mut self, cfg: &super::CoreConfig, expires: u32) -> Request {
        self.cseq += 1;
        let mut r = Request::new(Method::Subscribe, self.remote_target.clone());
        r.headers.push("Via", via(cfg, Side::Pbx, &crate::sip::txn::new_branch()));
        r.headers.push("Max-Forwards", "70");
        for rr in &self.route_set {
            r.headers.push("Route", rr.clone());
        }
        r.headers.push("From", self.local.clone());
        r.headers.push("To", self.remote.clone());
        r.headers.push("Call-ID", self.call_id.clone());
        r.headers.push("CSeq", format!("{} SUBSCRIBE", self.cseq));
        r.headers.push("Contact", contact(cfg, Side::Pbx, Some("drbridge")));
        r.headers.push("Event", self.event.clone());
        r.headers.push("Accept", self.accept.clone());
        r.headers.push("Expires", expires.to_string());
        add_identity(cfg, Side::Pbx, &mut r.headers, true);
        r
    }

    /// Dialog state from a 2xx to a SUBSCRIBE or from a NOTIFY (the first one may come first).
    pub fn learn(&mut self, to: Option<&str>, contact: Option<&str>, record_route: Vec<String>) {
        if let Some(to) = to {
            if NameAddr::parse(to).ok().and_then(|n| n.tag().map(str::to_string)).is_some() {
                self.remote = to.to_string();
            }
        }
        if let Some(c) = contact.and_then(|c| NameAddr::parse(c).ok()) {
            self.remote_target = c.uri.to_string();
        }
        if !self.established && !record_route.is_empty() {
            self.route_set = record_route;
        }
        self.established = true;
    }
}

/// Expires of a 2xx (Expires header) or a 423 (Min-Expires).
pub(super) fn response_expires(resp: &Response) -> Option<u32> {
    let name = if resp.status == 423 { "Min-Expires" } else { "Expires" };
    resp.headers.get(name).and_then(|v| v.trim().parse().ok())
}
