//! The call engine. See the module doc of `b2bua` for the shape; this file holds the state
//! (calls, legs, client transaction purposes, timers) and the event handlers.

use super::build::{self, add_identity, contact, new_tag, number_of, number_of_uri, party_uri, via};
use super::interwork::{carry_headers, normalize};
use super::notifier::{Notifier, SubscribeOutcome, WatchKey};
use super::subscribe::{response_expires, SubscriptionDialog, SubscriptionEvent};
use super::shard::Shard;
use super::{CallEvent, CoreConfig, Dialplan, EndReason, HealthNote, Hop, Side, Transmit};
use crate::config::Trunk;
use crate::media::sdp::{ice_restart_requested, offer_remote_media, rewrite_answer, rewrite_offer, CodecProfile, SdpSession};
use crate::media::{MediaControl, MediaEnd, MediaError, MediaEvent, MediaSessionId, RemoteMedia};
use crate::routing::{FailoverPlan, ProxySet, TrunkHealth};
use crate::sip::msg::sdp::{Direction, Sdp};
use crate::sip::msg::{Message, Method, NameAddr, Request, Response, SipStr, Uri};
use crate::sip::transport::{Peer, Proto};
use crate::sip::txn::{new_branch, ClientTxnId, RequestDisposition, ServerTxnId, Transactions, TxnEvent, TxnTimers};
use bytes::Bytes;
use rustc_hash::FxHashMap;
use crate::hashindex::HashIndex;
use crate::timerq::TimerQueue;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

type CallId = u64;
type LegId = usize;

/// Counters exported by the admin view and logged at shutdown.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub calls_total: u64,
    pub calls_answered: u64,
    pub calls_rejected_overload: u64,
    pub calls_failed: u64,
    pub failovers: u64,
    pub options_sent: u64,
    pub session_refreshes_sent: u64,
    pub session_expired: u64,
    pub transfers: u64,
    pub forbidden_source: u64,
    pub media_ports_exhausted: u64,
    pub media_timeouts: u64,
    /// Calls given up unanswered at `ring_timeout`.
    pub ring_timeouts: u64,
    pub sdp_not_acceptable: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CallState {
    Calling,
    Early,
    Confirmed,
    Ended,
}

#[derive(Clone, Debug)]
struct SessionTimer {
    interval: u32,
    we_refresh: bool,
    due: Instant,
}

/// An INVITE drbridge sent to open a leg (initial call, transfer target).
#[derive(Clone, Debug)]
struct OutInvite {
    ctx: ClientTxnId,
    req: Request,
    /// Proxies to try (Teams legs only), fixed when the INVITE started.
    plan: Option<FailoverPlan>,
    /// The proxy this attempt went to.
    proxy: Option<usize>,
    responded: bool,
    provisional: bool,
    cancel_pending: bool,
}

#[derive(Clone, Debug)]
struct Leg {
    side: Side,
    hop: Hop,
    call_id: String,
    local_tag: String,
    /// Our name-addr in this dialog, with our tag.
    local: String,
    /// Their name-addr (with their tag once known).
    remote: String,
    remote_tag: Option<String>,
    remote_target: String,
    route_set: Vec<String>,
    local_cseq: u32,
    /// The number of the party on this leg (normalized for this side).
    party: String,
    /// Last SDP this leg's peer sent us.
    remote_sdp: Bytes,
    /// An INVITE/UPDATE client transaction drbridge has open on this leg (glare -> 491).
    offer_pending: bool,
    se: Option<SessionTimer>,
    invite: Option<Box<OutInvite>>,
    /// ACK to re-send when a 2xx to our INVITE is retransmitted.
    last_ack: Option<Bytes>,
    /// Our 2xx to their INVITE, re-sent over UDP until their ACK (RFC 3261 13.3.1.4).
    pending_2xx: Option<Box<Pending2xx>>,
    /// An ACK we owe this leg that waits for the body of the other leg's ACK (offer in 2xx).
    ack_waits: Option<Box<Request>>,
    allows_update: bool,
    ended: bool,
    /// SDP drbridge sends on this leg: origin and version (RFC 3264 section 8).
    sdp: SdpSession,
    /// The offer this leg's peer made, until answered (the answer must match it).
    offer_in: Option<Sdp>,
    /// The offer drbridge sent to this leg, until answered.
    offer_out: Option<Sdp>,
    /// The last SDP drbridge sent on this leg (re-sent in a refresh re-INVITE).
    last_sent: Bytes,
    /// What this leg's peer last said about its media (ICE restart detection).
    remote_media: Option<Box<RemoteMedia>>,
}

/// The media session of a call and which leg sits at each of its ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct MediaBinding {
    id: MediaSessionId,
    a: LegId,
    b: LegId,
}

impl MediaBinding {
    fn end_of(&self, lid: LegId) -> Option<MediaEnd> {
        if self.a == lid {
            Some(MediaEnd::A)
        } else if self.b == lid {
            Some(MediaEnd::B)
        } else {
            None
        }
    }
}

#[derive(Clone, Debug)]
struct Pending2xx {
    data: Bytes,
    interval: Duration,
    next: Instant,
    give_up: Instant,
}

#[derive(Clone, Debug)]
struct ReferState {
    transferor: LegId,
    target_leg: Option<LegId>,
    target: String,
}

#[derive(Clone, Debug)]
struct Call {
    state: CallState,
    legs: Vec<Leg>,
    /// The two legs talking to each other.
    pair: (LegId, LegId),
    /// Server txn of the initial INVITE on the first leg, until it has a final response.
    a_invite: Option<Box<(ServerTxnId, Request)>>,
    /// That transaction's id, for the clean-up (the call's one entry in `invite_stx`).
    first_stx: ServerTxnId,
    caller: String,
    callee: String,
    refer: Option<ReferState>,
    held: bool,
    timers: Vec<(Instant, CallTimer)>,
    ctxs: Vec<ClientTxnId>,
    open_stx: Vec<(ServerTxnId, Request)>,
    /// The PBX's INVITE came without SDP (delayed offer) and went to Teams, which accepts early
    /// offers only: drbridge offered for the PBX ([`B2bua::delayed_offer_sdp`]), the 200 to the
    /// PBX carries drbridge's offer and the PBX's ACK the answer; 18x go to the PBX without SDP.
    delayed_offer: bool,
    /// The media session relaying the two legs of `pair`.
    media: Option<MediaBinding>,
    /// The media of a new pair being connected (transfer, Replaces), active once connected:
    /// `Some(None)` when the new pair is on one side (a PBX caller transferred to a PBX
    /// extension): two parties on the same side talk directly, their SDP passes unchanged.
    media_next: Option<Option<MediaBinding>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CallTimer {
    InviteDeadline(LegId),
    /// `ring_timeout` after the call's INVITE: still unanswered, it is given up.
    RingTimeout,
    /// `ring_timeout` after a transfer target's INVITE (leg): still ringing, the transfer fails.
    TargetRing(LegId),
    Retrans2xx(LegId),
    SessionTimer(LegId),
    Cleanup,
}

#[derive(Clone, Debug)]
enum Purpose {
    /// An INVITE opening `leg` (initial call or transfer target).
    OpenLeg(LegId),
    /// A request received on `from` relayed to the other leg; answer on `stx`.
    Relay { from: LegId, stx: ServerTxnId, req: Box<Request> },
    /// A re-INVITE that connects the remaining party to a new leg (REFER, Replaces).
    Reconnect { to_leg: LegId, new_leg: LegId, answer: Option<Box<(ServerTxnId, Request)>> },
    Bye,
    Cancel,
    Notify,
    /// A SUBSCRIBE of subscription `id` (see `subscribe`).
    Subscribe(u64),
    Refresh(LegId),
    Abandoned,
}

pub struct B2bua {
    cfg: CoreConfig,
    plan: Box<dyn Dialplan>,
    txns: Transactions<Hop>,
    /// Id-keyed tables hash with Fx (the ids are ours, not a peer's) and hold large values boxed:
    /// at 5,000 calls/s with 32 s of linger they reach 10^5 entries, and growing a table of
    /// inline 300-400 byte values copied it whole (perf: ~20 % of the samples of a 40 s run in
    /// `resize_inner` and clearing its fresh pages).
    calls: FxHashMap<CallId, Box<Call>>,
    /// Dialogs by Call-ID and our tag, both living in the leg ([`HashIndex`]).
    dialogs: HashIndex<(CallId, LegId)>,
    invite_stx: FxHashMap<ServerTxnId, CallId>,
    ctx: FxHashMap<ClientTxnId, (CallId, Purpose)>,
    wakeups: TimerQueue<CallId>,
    out: VecDeque<Transmit>,
    events: VecDeque<CallEvent>,
    next_call: CallId,
    proxies: Vec<ProxyHealth>,
    proxy_set: ProxySet,
    pbx_health: ProxyHealth,
    pbx_trunk: TrunkHealth,
    options: HashMap<ClientTxnId, Option<usize>>,
    /// The media relay; None: SDP passes through unchanged (signalling-only tests).
    media: Option<Box<dyn MediaControl>>,
    media_calls: FxHashMap<MediaSessionId, CallId>,
    subs: HashMap<u64, SubscriptionDialog>,
    subs_by_dialog: HashMap<(String, String), u64>,
    sub_events: VecDeque<SubscriptionEvent>,
    /// PBX-side watchers of Teams presence (None: SUBSCRIBEs get 405).
    notifier: Option<Notifier>,
    /// NOTIFYs in flight to those watchers.
    notify_ctx: HashMap<ClientTxnId, WatchKey>,
    teams_profile: CodecProfile,
    pbx_profile: CodecProfile,
    pub stats: Stats,
    /// Calls not yet ended (`sbc.max_calls` applies to these).
    live_calls: usize,
    /// Which signalling shard this core is (Call-IDs it makes up hash to it).
    shard: Shard,
    /// Whether this core sends the OPTIONS keep-alives (one core of a sharded set does; the
    /// others learn trunk health through [`B2bua::apply_health`]).
    keepalive: bool,
    /// OPTIONS results, for the other shards (`poll_health`).
    health_notes: VecDeque<HealthNote>,
}

fn trunk(side: Side) -> Trunk {
    match side {
        Side::Teams => Trunk::Teams,
        Side::Pbx => Trunk::Pbx,
    }
}

#[derive(Clone, Debug)]
struct ProxyHealth {
    next_options: Instant,
    probe: Option<ClientTxnId>,
}

fn reliable(p: &Peer) -> bool {
    p.proto != Proto::Udp
}

impl B2bua {
    pub fn new(cfg: CoreConfig, plan: Box<dyn Dialplan>, now: Instant) -> B2bua {
        let timers = TxnTimers { t1: cfg.t1, t2: cfg.t2, t4: cfg.t4 };
        let proxies = cfg
            .teams_proxies
            .iter()
            .map(|_| ProxyHealth { next_options: now, probe: None })
            .collect();
        B2bua {
            txns: Transactions::new(timers, cfg.max_transactions),
            plan,
            calls: FxHashMap::default(),
            dialogs: HashIndex::default(),
            invite_stx: FxHashMap::default(),
            ctx: FxHashMap::default(),
            wakeups: TimerQueue::default(),
            out: VecDeque::new(),
            events: VecDeque::new(),
            next_call: 1,
            proxies,
            pbx_health: ProxyHealth { next_options: now, probe: None },
            proxy_set: ProxySet::new(
                cfg.teams_proxies
                    .iter()
                    .map(|p| crate::config::TeamsProxy { host: p.host.clone(), port: p.port, address: Some(p.addr) })
                    .collect(),
                &cfg.failover_codes,
                cfg.failover_timeout,
                now,
            ),
            pbx_trunk: TrunkHealth::new(now),
            options: HashMap::new(),
            media: None,
            media_calls: FxHashMap::default(),
            subs: HashMap::new(),
            subs_by_dialog: HashMap::new(),
            sub_events: VecDeque::new(),
            notifier: None,
            notify_ctx: HashMap::new(),
            teams_profile: CodecProfile::teams(),
            pbx_profile: CodecProfile::pbx_default(),
            stats: Stats::default(),
            live_calls: 0,
            shard: Shard::default(),
            keepalive: true,
            health_notes: VecDeque::new(),
            cfg,
        }
    }

    /// The media engine's counters, if media is anchored.
    pub fn media_stats(&self) -> Option<crate::media::EngineStats> {
        self.media.as_ref().and_then(|m| m.stats())
    }

    /// Anchors every call's media on `media`, with the codec profile of each side.
    pub fn with_media(mut self, media: Box<dyn MediaControl>, teams: CodecProfile, pbx: CodecProfile) -> B2bua {
        self.media = Some(media);
        self.teams_profile = teams;
        self.pbx_profile = pbx;
        self
    }

    /// Makes this core shard `shard` of a sharded set (see `b2bua::shard`). With `keepalive`
    /// false it sends no OPTIONS: the core that does passes its results on (`poll_health`,
    /// `apply_health`).
    pub fn with_shard(mut self, shard: Shard, keepalive: bool) -> B2bua {
        self.shard = shard;
        self.keepalive = keepalive;
        self
    }

    /// Serves PBX-side SUBSCRIBEs to the presence of these extensions (Teams -> PBX presence),
    /// at most `max_watchers` at once on this core. Documents come from [`Self::set_presence_document`].
    pub fn with_presence_notifier(mut self, extensions: impl IntoIterator<Item = String>, max_watchers: usize) -> B2bua {
        self.notifier = Some(Notifier::new(extensions, max_watchers));
        self
    }

    /// The document of event package `package` (`presence`: PIDF, `dialog`: dialog-info) for
    /// the PBX-side watchers of `key` (an extension or number); `None` when there is nothing to
    /// say. Every watcher of it is NOTIFYed (one NOTIFY in flight per watcher).
    pub fn set_presence_document(&mut self, package: &str, key: &str, doc: Option<Bytes>, now: Instant) {
        let Some(n) = self.notifier.as_mut() else { return };
        for key in n.set_document(package, key, doc) {
            self.send_watcher_notify(&key, None, now);
        }
    }

    /// PBX-side presence subscriptions held by this core.
    pub fn presence_watchers(&self) -> usize {
        self.notifier.as_ref().map_or(0, Notifier::len)
    }

    fn send_watcher_notify(&mut self, key: &WatchKey, terminated: Option<&str>, now: Instant) {
        let Some(n) = self.notifier.as_mut() else { return };
        let Some((req, hop)) = n.notify(&self.cfg, key, terminated, now) else { return };
        let rel = reliable(&hop.peer);
        match self.txns.send_request(req, hop, rel, now) {
            Ok(ctx) => {
                if terminated.is_none() {
                    self.notify_ctx.insert(ctx, key.clone());
                }
            }
            Err(_) => {
                if let Some(n) = self.notifier.as_mut() {
                    n.notify_done(key, 503);
                }
            }
        }
    }

    fn watcher_notify_result(&mut self, ctx: ClientTxnId, status: u16, now: Instant) {
        let Some(key) = self.notify_ctx.remove(&ctx) else { return };
        if self.notifier.as_mut().is_some_and(|n| n.notify_done(&key, status)) {
            self.send_watcher_notify(&key, None, now);
        }
    }

    /// A SUBSCRIBE from the PBX side: out of dialog (`key` None) or a refresh in a watcher's dialog.
    fn watcher_subscribe(&mut self, stx: ServerTxnId, req: &Request, peer: Peer, key: Option<WatchKey>, now: Instant) {
        let hop = self.hop_from(peer);
        let Some(n) = self.notifier.as_mut() else { return self.respond(stx, req, 405, Side::Pbx, now) };
        let outcome = match &key {
            None => n.subscribe(req, hop, now),
            Some(k) => n.refresh(k, req, now),
        };
        let (key, expires, terminated) = match outcome {
            SubscribeOutcome::Refuse(status, extra) => {
                let mut r = req.response(status, Some(&new_tag()));
                for (name, v) in extra {
                    r.headers.push(name, v);
                }
                add_identity(&self.cfg, Side::Pbx, &mut r.headers, false);
                let _ = self.txns.send_response(stx, &r, now);
                return;
            }
            SubscribeOutcome::Accept { key, expires } => (key, expires, None),
            SubscribeOutcome::Ended { key } => (key, 0, Some("timeout")),
        };
        let mut r = req.response(200, if req.to_tag().is_some() { None } else { Some(&key.1) });
        r.headers.push("Expires", expires.to_string());
        r.headers.push("Contact", contact(&self.cfg, Side::Pbx, None));
        add_identity(&self.cfg, Side::Pbx, &mut r.headers, false);
        let _ = self.txns.send_response(stx, &r, now);
        self.send_watcher_notify(&key, terminated, now);
    }

    /// The next OPTIONS result this core applied, for the other shards.
    pub fn poll_health(&mut self) -> Option<HealthNote> {
        self.health_notes.pop_front()
    }

    /// An OPTIONS result of the keep-alive core, applied as if this core had probed.
    pub fn apply_health(&mut self, note: HealthNote, now: Instant) {
        self.set_health(note.proxy, note.up, now);
    }

    /// Applies an OPTIONS result of this core and queues it for the other shards; returns the
    /// new state when it changed.
    fn options_result(&mut self, proxy: Option<usize>, up: bool, now: Instant) -> Option<crate::routing::Health> {
        if self.shard.count > 1 {
            self.health_notes.push_back(HealthNote { proxy, up });
        }
        self.set_health(proxy, up, now)
    }

    /// An OPTIONS result for Teams proxy `proxy` (None: the PBX trunk).
    fn set_health(&mut self, proxy: Option<usize>, up: bool, now: Instant) -> Option<crate::routing::Health> {
        match proxy {
            Some(i) => self.proxy_set.on_options_result(i, up, now),
            None => self.pbx_trunk.on_options_result(up, now),
        }
    }

    /// An event of the media relay (inactivity: the call is ended on both legs).
    pub fn handle_media_event(&mut self, ev: MediaEvent, now: Instant) {
        match ev {
            MediaEvent::Inactive(id) => {
                if let Some(cid) = self.media_calls.get(&id).copied() {
                    tracing::info!(call = cid, "no media: ending the call");
                    self.stats.media_timeouts += 1;
                    self.end_call(cid, None, EndReason::MediaTimeout, now);
                }
            }
        }
        self.drain_txn_events(now);
    }

    /// Sends a SUBSCRIBE for `user` (an extension on the PBX) to event package `event`:
    /// out of dialog when `initial` (a new dialog replaces any previous one of this id), else
    /// in the existing dialog; `expires` 0 ends the subscription. Results come back as
    /// [`SubscriptionEvent`]s with the same `id`.
    pub fn subscribe(&mut self, id: u64, user: &str, event: &str, accept: &str, expires: u32, initial: bool, now: Instant) {
        if initial || !self.subs.contains_key(&id) {
            if let Some(old) = self.subs.remove(&id) {
                self.subs_by_dialog.remove(&(old.call_id, old.local_tag));
            }
            let d = SubscriptionDialog::new(user, &self.cfg, self.shard.call_id("drbridge"), event, accept);
            self.subs_by_dialog.insert((d.call_id.clone(), d.local_tag.clone()), id);
            self.subs.insert(id, d);
        }
        let Some(d) = self.subs.get_mut(&id) else { return };
        let req = d.request(&self.cfg, expires);
        if expires == 0 {
            // Unsubscribed: the final NOTIFY is still answered while the dialog lingers.
            d.established = false;
        }
        let pbx = self.cfg.pbx;
        match self.txns.send_request(req, Hop { peer: pbx, tls_name: None }, reliable(&pbx), now) {
            Ok(ctx) => {
                self.ctx.insert(ctx, (0, Purpose::Subscribe(id)));
            }
            Err(_) => self.sub_events.push_back(SubscriptionEvent::Response { id, status: 503, expires: None }),
        }
    }

    /// The next subscription event for the presence core.
    pub fn poll_subscription_event(&mut self) -> Option<SubscriptionEvent> {
        self.sub_events.pop_front()
    }

    fn subscription_response(&mut self, id: u64, resp: &Response) {
        if resp.status < 200 {
            return;
        }
        if let Some(d) = self.subs.get_mut(&id) {
            if resp.is_success() {
                let rr: Vec<String> = resp.headers.values("Record-Route").iter().rev().map(|s| s.to_string()).collect();
                d.learn(resp.headers.get("To"), resp.headers.values("Contact").first().copied(), rr);
            }
        }
        self.sub_events.push_back(SubscriptionEvent::Response { id, status: resp.status, expires: response_expires(resp) });
    }

    /// A NOTIFY in a subscription dialog: 200, then its state and body to the presence core.
    /// Returns false when the request belongs to no subscription.
    fn subscription_notify(&mut self, stx: ServerTxnId, req: &Request, now: Instant) -> bool {
        let Some(tag) = req.to_tag() else { return false };
        let key = (req.call_id().unwrap_or("").to_string(), tag.to_string());
        let Some(id) = self.subs_by_dialog.get(&key).copied() else { return false };
        if req.method != Method::Notify {
            self.respond(stx, req, 405, Side::Pbx, now);
            return true;
        }
        let rr: Vec<String> = req.headers.values("Record-Route").iter().map(|s| s.to_string()).collect();
        if let Some(d) = self.subs.get_mut(&id) {
            d.learn(req.headers.get("From"), req.headers.values("Contact").first().copied(), rr);
        }
        self.respond(stx, req, 200, Side::Pbx, now);
        let state = req.headers.get("Subscription-State").unwrap_or("").to_string();
        if state.trim_start().to_ascii_lowercase().starts_with("terminated") {
            if let Some(d) = self.subs.remove(&id) {
                self.subs_by_dialog.remove(&(d.call_id, d.local_tag));
            }
        }
        self.sub_events.push_back(SubscriptionEvent::Notify {
            id,
            state,
            content_type: req.content_type().unwrap_or("").to_string(),
            body: req.body.clone(),
        });
        true
    }

    pub fn active_calls(&self) -> usize {
        self.live_calls
    }

    /// Whether the PBX trunk answers OPTIONS.
    pub fn pbx_up(&self) -> bool {
        self.pbx_trunk.is_up()
    }

    /// Whether each Teams proxy is up (per OPTIONS and failures).
    pub fn proxies_up(&self) -> Vec<bool> {
        (0..self.proxies.len()).map(|i| self.proxy_set.health(i).is_some_and(|h| h.is_up())).collect()
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        if let Some(t) = self.out.pop_front() {
            return Some(t);
        }
        self.txns.poll_transmit().map(|(hop, data)| Transmit { hop, data })
    }

    pub fn poll_event(&mut self) -> Option<CallEvent> {
        self.events.pop_front()
    }

    pub fn poll_timeout(&mut self) -> Option<Instant> {
        let mut t = self.txns.poll_timeout();
        let mut consider = |x: Instant| t = Some(t.map_or(x, |c: Instant| c.min(x)));
        if let Some((at, _)) = self.wakeups.peek() {
            consider(at);
        }
        if let Some(at) = self.notifier.as_ref().and_then(Notifier::next_expiry) {
            consider(at);
        }
        if self.keepalive {
            for p in &self.proxies {
                consider(p.next_options);
            }
            if self.cfg.pbx_options_interval.is_some() {
                consider(self.pbx_health.next_options);
            }
        }
        t
    }

    // ----------------------------------------------------------------------------------------
    // Inputs
    // ----------------------------------------------------------------------------------------

    /// A message received on `side` from `peer`.
    pub fn handle_message(&mut self, msg: Message, peer: Peer, side: Side, now: Instant) {
        match msg {
            Message::Request(req) => self.handle_request(req, peer, side, now),
            Message::Response(resp) => self.handle_response(resp, now),
        }
        self.drain_txn_events(now);
    }

    /// The transport could not reach `peer` (connect or TLS handshake failed): every
    /// transaction toward it fails at once (INVITEs fail over, OPTIONS mark the proxy down).
    pub fn handle_connect_failed(&mut self, peer: Peer, now: Instant) {
        for (i, p) in self.cfg.teams_proxies.iter().enumerate() {
            if p.addr == peer.addr && peer.proto == Proto::Tls {
                self.proxy_set.on_invite_failure(i, None, now);
            }
        }
        self.txns.transport_failed(|h: &Hop| h.peer == peer);
        self.drain_txn_events(now);
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.txns.handle_timeout(now);
        self.drain_txn_events(now);
        for key in self.notifier.as_ref().map(|n| n.expired(now)).unwrap_or_default() {
            self.send_watcher_notify(&key, Some("timeout"), now);
        }
        while let Some((at, cid)) = self.wakeups.peek() {
            if at > now {
                break;
            }
            self.wakeups.pop();
            self.fire_call_timers(cid, now);
        }
        self.send_options(now);
        self.drain_txn_events(now);
    }

    fn drain_txn_events(&mut self, now: Instant) {
        while let Some(ev) = self.txns.poll_event() {
            match ev {
                // RFC 3261 8.1.3.1: a transport error counts as a 503 (no connection, a
                // refused certificate), a timeout as a 408.
                TxnEvent::ClientTimeout(id) => self.client_timeout(id, 408, now),
                TxnEvent::ClientTransportError(id) => self.client_timeout(id, 503, now),
                _ => {}
            }
        }
    }

    // ----------------------------------------------------------------------------------------
    // Requests
    // ----------------------------------------------------------------------------------------

    fn hop_from(&self, peer: Peer) -> Hop {
        Hop { peer, tls_name: None }
    }

    fn handle_request(&mut self, req: Request, peer: Peer, side: Side, now: Instant) {
        if side == Side::Pbx && peer.addr.ip() != self.cfg.pbx.addr.ip() {
            // Only the configured trunk may send requests on the PBX side.
            self.stats.forbidden_source += 1;
            if req.method != Method::Ack {
                let resp = req.response(403, Some(&new_tag()));
                self.out.push_back(Transmit { hop: self.hop_from(peer), data: resp.to_bytes() });
            }
            return;
        }
        let hop = self.hop_from(peer);
        match self.txns.on_request(&req, hop.clone(), reliable(&peer), now) {
            RequestDisposition::New(stx) => self.new_request(stx, req, peer, side, now),
            RequestDisposition::Ack2xx => self.ack_2xx(req, now),
            RequestDisposition::Cancel { cancel, invite } => {
                let ok = req.response(200, None);
                let _ = self.txns.send_response(cancel, &ok, now);
                if let Some(stx) = invite {
                    if let Some(cid) = self.invite_stx.get(&stx).copied() {
                        self.cancel_call(cid, now);
                    }
                }
            }
            RequestDisposition::Overloaded => {
                if req.method != Method::Ack {
                    let mut r = req.response(503, Some(&new_tag()));
                    r.headers.push("Retry-After", "5");
                    self.txns.send_stateless(hop, r.to_bytes());
                }
            }
            _ => {}
        }
    }

    fn respond(&mut self, stx: ServerTxnId, req: &Request, status: u16, side: Side, now: Instant) {
        let mut r = req.response(status, Some(&new_tag()));
        add_identity(&self.cfg, side, &mut r.headers, false);
        let _ = self.txns.send_response(stx, &r, now);
    }

    fn new_request(&mut self, stx: ServerTxnId, req: Request, peer: Peer, side: Side, now: Instant) {
        if let Some(tag) = req.to_tag() {
            match self.dialog(req.call_id().unwrap_or(""), tag) {
                Some((cid, lid)) => self.in_dialog(cid, lid, stx, req, now),
                None if side == Side::Pbx && self.subscription_notify(stx, &req, now) => {}
                None if side == Side::Pbx && self.notifier.as_ref().is_some_and(|n| n.owns(&(req.call_id().unwrap_or("").to_string(), tag.to_string()))) => {
                    let key = (req.call_id().unwrap_or("").to_string(), tag.to_string());
                    if req.method == Method::Subscribe {
                        self.watcher_subscribe(stx, &req, peer, Some(key), now);
                    } else {
                        self.respond(stx, &req, 405, side, now);
                    }
                }
                None => self.respond(stx, &req, 481, side, now),
            }
            return;
        }
        match req.method {
            Method::Invite => self.new_invite(stx, req, peer, side, now),
            Method::Options => {
                let mut r = req.response(200, Some(&new_tag()));
                add_identity(&self.cfg, side, &mut r.headers, false);
                r.headers.set("Accept", "application/sdp");
                r.headers.set("Supported", build::SUPPORTED);
                r.headers.set("Contact", contact(&self.cfg, side, None));
                let _ = self.txns.send_response(stx, &r, now);
            }
            Method::Ack => {}
            Method::Subscribe if side == Side::Pbx && self.notifier.is_some() => self.watcher_subscribe(stx, &req, peer, None, now),
            Method::Register | Method::Subscribe | Method::Publish => self.respond(stx, &req, 405, side, now),
            _ => self.respond(stx, &req, 481, side, now),
        }
    }

    fn session_expires_of(req_headers: &crate::sip::msg::Headers) -> Option<(u32, Option<String>)> {
        let v = req_headers.get("Session-Expires")?;
        let mut parts = v.split(';');
        let n: u32 = parts.next()?.trim().parse().ok()?;
        let refresher = parts.filter_map(|p| p.trim().strip_prefix("refresher=")).next().map(|s| s.trim().to_ascii_lowercase());
        Some((n, refresher))
    }

    /// The offer drbridge makes toward Teams for a PBX INVITE without SDP: the PBX profile's
    /// codecs with their static (or drbridge's dynamic) payload types, at the PBX's address on
    /// the discard port until the PBX's answer in the ACK says where its media is.
    fn delayed_offer_sdp(&self) -> Bytes {
        let ip = self.cfg.pbx.addr.ip();
        let net = if ip.is_ipv6() { "IP6" } else { "IP4" };
        let mut pts = Vec::new();
        let mut maps = String::new();
        for name in &self.pbx_profile.allowed {
            let (enc, rate) = name.split_once('/').map(|(e, r)| (e, r.parse().unwrap_or(8000))).unwrap_or((name.as_str(), 8000u32));
            let (pt, rtpmap) = match enc.to_ascii_uppercase().as_str() {
                "PCMU" => (0u8, "PCMU/8000".to_string()),
                "PCMA" => (8, "PCMA/8000".into()),
                "G722" => (9, "G722/8000".into()),
                "G729" => (18, "G729/8000".into()),
                "TELEPHONE-EVENT" => (101, format!("telephone-event/{rate}")),
                _ => continue,
            };
            if pts.contains(&pt) {
                continue;
            }
            pts.push(pt);
            maps.push_str(&format!("a=rtpmap:{pt} {rtpmap}\r\n"));
            if pt == 101 {
                maps.push_str("a=fmtp:101 0-16\r\n");
            }
            if pt == 18 {
                maps.push_str("a=fmtp:18 annexb=no\r\n");
            }
        }
        if !pts.contains(&101) {
            pts.push(101);
            maps.push_str("a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n");
        }
        let list: Vec<String> = pts.iter().map(u8::to_string).collect();
        Bytes::from(format!(
            "v=0\r\no=- 0 0 IN {net} {ip}\r\ns=-\r\nc=IN {net} {ip}\r\nt=0 0\r\nm=audio 9 RTP/AVP {}\r\n{maps}a=ptime:20\r\na=sendrecv\r\n",
            list.join(" ")
        ))
    }

    fn new_invite(&mut self, stx: ServerTxnId, req: Request, peer: Peer, side: Side, now: Instant) {
        let mf = req.headers.get("Max-Forwards").and_then(|v| v.trim().parse::<u32>().ok()).unwrap_or(70);
        if mf == 0 {
            return self.respond(stx, &req, 483, side, now);
        }
        // Live calls only, of all shards: ended calls linger 64*T1 for retransmissions but do
        // not count.
        if self.cfg.live_calls.load(Ordering::Acquire) >= self.cfg.max_calls {
            self.stats.calls_rejected_overload += 1;
            let mut r = req.response(503, Some(&new_tag()));
            r.headers.push("Retry-After", "10");
            add_identity(&self.cfg, side, &mut r.headers, false);
            let _ = self.txns.send_response(stx, &r, now);
            return;
        }
        if let Some(rep) = req.headers.get("Replaces").map(str::to_string) {
            return self.invite_with_replaces(stx, req, peer, side, &rep, now);
        }
        if let Some((se, _)) = Self::session_expires_of(&req.headers) {
            if se < self.cfg.min_se {
                let mut r = req.response(422, Some(&new_tag()));
                r.headers.push("Min-SE", self.cfg.min_se.to_string());
                add_identity(&self.cfg, side, &mut r.headers, false);
                let _ = self.txns.send_response(stx, &r, now);
                return;
            }
        }
        let uri = Uri::parse(&req.uri).ok();
        let callee_raw = uri.as_ref().and_then(number_of_uri).or_else(|| req.headers.get("To").and_then(number_of));
        let caller_raw = req.headers.get("From").and_then(number_of).unwrap_or_else(|| "anonymous".into());
        let Some(callee_raw) = callee_raw else {
            return self.respond(stx, &req, 404, side, now);
        };
        let callee_e164 = self.plan.to_teams(&callee_raw);
        let dest = self.plan.route(&callee_e164, side);
        let caller_e164 = self.plan.to_teams(&caller_raw);
        // Teams takes no INVITE without SDP: drbridge makes the offer (see `Call::delayed_offer`).
        let delayed_offer = req.body.is_empty() && side == Side::Pbx && dest == Side::Teams && self.media.is_some();
        let mut req = req;
        if delayed_offer {
            req.body = self.delayed_offer_sdp();
            req.headers.set("Content-Type", "application/sdp");
        }

        let mut trying = req.response(100, None);
        add_identity(&self.cfg, side, &mut trying.headers, false);
        let _ = self.txns.send_response(stx, &trying, now);

        let cid = self.next_call;
        let media = match self.media.as_mut().map(|m| m.allocate(trunk(side), trunk(dest))) {
            Some(Err(e)) => {
                tracing::warn!(error = %e, "media ports exhausted: 503");
                self.stats.media_ports_exhausted += 1;
                let mut r = req.response(503, Some(&new_tag()));
                r.headers.push("Retry-After", "10");
                add_identity(&self.cfg, side, &mut r.headers, false);
                let _ = self.txns.send_response(stx, &r, now);
                return;
            }
            Some(Ok(id)) => {
                self.media_calls.insert(id, cid);
                Some(MediaBinding { id, a: 0, b: 1 })
            }
            None => None,
        };
        self.next_call += 1;
        self.stats.calls_total += 1;
        self.live_calls += 1;
        self.cfg.live_calls.fetch_add(1, Ordering::AcqRel);
        let a = self.uas_leg(&req, peer, side);
        self.dialogs.insert(&(&a.call_id, &a.local_tag), (cid, 0));
        let mut call = Call {
            state: CallState::Calling,
            // two legs for a call's life (a transfer adds a third): room for two, not four
            legs: { let mut v = Vec::with_capacity(2); v.push(a); v },
            pair: (0, 1),
            a_invite: Some(Box::new((stx, req.clone()))),
            first_stx: stx,
            caller: caller_e164.clone(),
            callee: callee_e164.clone(),
            refer: None,
            held: false,
            timers: Vec::new(),
            ctxs: Vec::new(),
            open_stx: Vec::new(),
            delayed_offer,
            media,
            media_next: None,
        };
        // Session timer toward the caller's leg.
        if let Some((se, refresher)) = Self::session_expires_of(&req.headers) {
            let they = refresher.as_deref() != Some("uas");
            call.legs[0].se = Some(SessionTimer { interval: se, we_refresh: !they, due: now });
        }
        self.invite_stx.insert(stx, cid);
        self.calls.insert(cid, Box::new(call));
        if let Some(t) = self.cfg.ring_timeout {
            self.arm(cid, now + t, CallTimer::RingTimeout);
        }
        tracing::info!(call = cid, call_id = %req.call_id().unwrap_or(""), from = ?side, to = ?dest, caller = %caller_e164, callee = %callee_e164, "new call");

        let caller = normalize(&caller_raw, dest, &*self.plan);
        let callee = normalize(&callee_raw, dest, &*self.plan);
        let display = req.from_hdr().and_then(|n| n.display.clone());
        let body = req.body.clone();
        if self.open_leg(cid, dest, &caller, display, &callee, None, body, Some(0), &req.headers, side, now).is_none() {
            // No acceptable media in the offer (or no proxy): refuse the call.
            self.invite_failed_with(cid, 1, None, 488, now);
        }
    }

    /// The leg for a dialog drbridge answers (UAS side).
    fn uas_leg(&self, req: &Request, peer: Peer, side: Side) -> Leg {
        let tag = new_tag();
        let to = req.headers.get("To").unwrap_or("").to_string();
        let remote_target = req
            .headers
            .values("Contact")
            .first()
            .and_then(|c| NameAddr::parse(c).ok())
            .map(|n| n.uri.to_string())
            .unwrap_or_else(|| req.from_hdr().map(|n| n.uri.to_string()).unwrap_or_default());
        let route_set: Vec<String> = req.headers.values("Record-Route").iter().map(|s| s.to_string()).collect();
        let party = req.headers.get("From").and_then(number_of).unwrap_or_default();
        let hop = dialog_hop(&self.cfg, side, &route_set, &remote_target, Hop { peer, tls_name: None });
        Leg {
            side,
            hop,
            call_id: req.call_id().unwrap_or("").to_string(),
            local: crate::fmt64!("{to};tag={tag}"),
            local_tag: tag,
            remote: req.headers.get("From").unwrap_or("").to_string(),
            remote_tag: req.from_tag().map(str::to_string),
            remote_target,
            route_set,
            local_cseq: 1,
            party,
            remote_sdp: req.body.clone(),
            offer_pending: false,
            se: None,
            invite: None,
            last_ack: None,
            pending_2xx: None,
            ack_waits: None,
            allows_update: req.headers.has_token("Allow", "UPDATE"),
            ended: false,
            sdp: SdpSession::random(),
            offer_in: None,
            offer_out: None,
            last_sent: Bytes::new(),
            remote_media: None,
        }
    }

    /// Where in-dialog requests of a leg go. Toward Teams: the configured proxy named by the
    /// top Route or the remote target, if any (so they reach a proxy, as Microsoft expects),
    /// else the connection the dialog came on. Toward the PBX: the trunk.

    /// Opens a new leg toward `dest` (initial call or transfer target) with an INVITE.
    #[allow(clippy::too_many_arguments)]
    fn open_leg(
        &mut self,
        cid: CallId,
        dest: Side,
        caller: &str,
        display: Option<String>,
        callee: &str,
        target_uri: Option<Uri>,
        body: Bytes,
        offer_from: Option<LegId>,
        src_headers: &crate::sip::msg::Headers,
        from_side: Side,
        now: Instant,
    ) -> Option<LegId> {
        let mut plan = (dest == Side::Teams).then(|| self.proxy_set.failover_plan(now));
        let first = match plan.as_mut().map(|p| p.next()) {
            Some(Some(i)) => Some(i),
            Some(None) => return None,
            None => None,
        };
        let our_host = build::local_host(&self.cfg, dest);
        let tag = new_tag();
        let call_id = self.shard.call_id(match dest {
            Side::Teams => &self.cfg.fqdn,
            Side::Pbx => "drbridge",
        });
        let mut from = NameAddr::new(party_uri(caller, &our_host, dest));
        from.display = display;
        let local = crate::fmt64!("{from};tag={tag}");
        let (to_host, hop) = match dest {
            Side::Teams => {
                let p = &self.cfg.teams_proxies[first.unwrap_or(0)];
                (p.host.clone(), Hop { peer: Peer { proto: Proto::Tls, addr: p.addr }, tls_name: Some(Arc::from(p.host.as_str())) })
            }
            Side::Pbx => (self.cfg.pbx_domain.clone(), Hop { peer: self.cfg.pbx, tls_name: None }),
        };
        let to = NameAddr::new(party_uri(callee, &to_host, dest)).to_string();
        let ruri = match target_uri {
            Some(u) => u,
            None => {
                let mut u = party_uri(callee, &to_host, dest);
                if dest == Side::Teams {
                    u.port = Some(self.cfg.teams_proxies[first.unwrap_or(0)].port);
                }
                u
            }
        };
        let mut req = Request::new(Method::Invite, ruri.to_string());
        req.headers.push("Via", via(&self.cfg, dest, &new_branch()));
        req.headers.push("Max-Forwards", "70");
        req.headers.push("From", local.clone());
        req.headers.push("To", to.clone());
        req.headers.push("Call-ID", call_id.clone());
        req.headers.push("CSeq", "1 INVITE");
        req.headers.push("Contact", contact(&self.cfg, dest, Some(caller)));
        req.headers.push("Supported", build::SUPPORTED);
        req.headers.push("Session-Expires", crate::fmt64!("{};refresher=uac", self.cfg.session_expires));
        req.headers.push("Min-SE", self.cfg.min_se.to_string());
        add_identity(&self.cfg, dest, &mut req.headers, true);
        carry_headers(src_headers, &mut req.headers, from_side, &*self.plan, &our_host);
        if !body.is_empty() && !req.headers.contains("Content-Type") {
            req.headers.push("Content-Type", "application/sdp");
        }
        let leg = Leg {
            side: dest,
            hop: hop.clone(),
            call_id,
            local_tag: tag,
            local,
            remote: to,
            remote_tag: None,
            remote_target: req.uri.to_string(),
            route_set: vec![],
            local_cseq: 1,
            party: callee.to_string(),
            remote_sdp: Bytes::new(),
            offer_pending: false,
            se: None,
            invite: None,
            last_ack: None,
            pending_2xx: None,
            ack_waits: None,
            allows_update: true,
            ended: false,
            sdp: SdpSession::random(),
            offer_in: None,
            offer_out: None,
            last_sent: Bytes::new(),
            remote_media: None,
        };
        let call = self.calls.get_mut(&cid)?;
        call.legs.push(leg);
        let lid = call.legs.len() - 1;
        req.body = match offer_from {
            Some(from) => match self.media_offer(cid, from, lid, &body) {
                Ok(b) => b,
                Err(_) => {
                    if let Some(c) = self.calls.get_mut(&cid) {
                        c.legs[lid].ended = true;
                    }
                    return None;
                }
            },
            None => body,
        };
        if let Some(l) = self.calls.get(&cid).and_then(|c| c.legs.get(lid)) {
            self.dialogs.insert(&(&l.call_id, &l.local_tag), (cid, lid));
        }
        self.send_open_invite(cid, lid, req, hop, plan, first, now);
        Some(lid)
    }

    #[allow(clippy::too_many_arguments)]
    fn send_open_invite(&mut self, cid: CallId, lid: LegId, req: Request, hop: Hop, plan: Option<FailoverPlan>, proxy: Option<usize>, now: Instant) {
        let deadline = (self.calls.get(&cid).map(|c| c.legs[lid].side) == Some(Side::Teams)).then(|| now + self.cfg.failover_timeout);
        let rel = reliable(&hop.peer);
        match self.txns.send_request(req.clone(), hop.clone(), rel, now) {
            Ok(ctx) => {
                self.ctx.insert(ctx, (cid, Purpose::OpenLeg(lid)));
                let Some(call) = self.calls.get_mut(&cid) else { return };
                call.ctxs.push(ctx);
                let leg = &mut call.legs[lid];
                leg.hop = hop;
                leg.invite = Some(Box::new(OutInvite { ctx, req, plan, proxy, responded: false, provisional: false, cancel_pending: false }));
                if let Some(d) = deadline {
                    self.arm(cid, d, CallTimer::InviteDeadline(lid));
                }
            }
            Err(_) => self.invite_failed(cid, lid, 503, now),
        }
    }

    fn arm(&mut self, cid: CallId, at: Instant, t: CallTimer) {
        if let Some(c) = self.calls.get_mut(&cid) {
            c.timers.retain(|(_, x)| *x != t);
            c.timers.push((at, t));
            self.wakeups.push(at, cid);
        }
    }

    fn disarm(&mut self, cid: CallId, t: CallTimer) {
        if let Some(c) = self.calls.get_mut(&cid) {
            c.timers.retain(|(_, x)| *x != t);
        }
    }

    /// A request in an established (or early) dialog, received on leg `lid`.
    fn in_dialog(&mut self, cid: CallId, lid: LegId, stx: ServerTxnId, req: Request, now: Instant) {
        let Some(call) = self.calls.get(&cid) else { return };
        let side = call.legs[lid].side;
        if call.state == CallState::Ended || call.legs[lid].ended {
            return self.respond(stx, &req, 481, side, now);
        }
        // CSeq order is not enforced beyond what the txn layer does; remote target refresh:
        if matches!(req.method, Method::Invite | Method::Update) {
            if let Some(c) = req.headers.values("Contact").first().and_then(|c| NameAddr::parse(c).ok()) {
                if let Some(call) = self.calls.get_mut(&cid) {
                    call.legs[lid].remote_target = c.uri.to_string();
                }
            }
        }
        match req.method {
            Method::Bye => {
                self.respond(stx, &req, 200, side, now);
                self.end_call(cid, Some(lid), EndReason::Bye(side), now);
            }
            Method::Options | Method::Prack => self.respond(stx, &req, 200, side, now),
            Method::Refer if side == Side::Teams => self.refer(cid, lid, stx, req, now),
            Method::Update if req.body.is_empty() => {
                // A session refresh without an offer: answered here, for this leg.
                let mut r = req.response(200, None);
                add_identity(&self.cfg, side, &mut r.headers, false);
                r.headers.set("Contact", contact(&self.cfg, side, None));
                self.answer_session_timer(cid, lid, &req, &mut r, now);
                let _ = self.txns.send_response(stx, &r, now);
            }
            _ => self.relay_request(cid, lid, stx, req, now),
        }
    }

    /// Adds Session-Expires to a 2xx answering an INVITE/UPDATE on leg `lid` and restarts the
    /// leg's timer.
    fn answer_session_timer(&mut self, cid: CallId, lid: LegId, req: &Request, r: &mut Response, now: Instant) {
        let Some(call) = self.calls.get_mut(&cid) else { return };
        let leg = &mut call.legs[lid];
        let (interval, they) = match Self::session_expires_of(&req.headers) {
            Some((se, refr)) => (se.max(self.cfg.min_se), refr.as_deref() != Some("uas")),
            None => match &leg.se {
                Some(s) => (s.interval, !s.we_refresh),
                None => return,
            },
        };
        r.headers.set("Session-Expires", crate::fmt64!("{interval};refresher={}", if they { "uac" } else { "uas" }));
        if req.headers.has_token("Supported", "timer") {
            r.headers.set("Require", "timer");
        }
        leg.se = Some(SessionTimer { interval, we_refresh: !they, due: now });
        self.schedule_session_timer(cid, lid, now);
    }

    fn schedule_session_timer(&mut self, cid: CallId, lid: LegId, now: Instant) {
        let Some(call) = self.calls.get_mut(&cid) else { return };
        let Some(se) = call.legs[lid].se.as_mut() else { return };
        let iv = se.interval as u64;
        let due = if se.we_refresh {
            now + Duration::from_secs(iv / 2)
        } else {
            now + Duration::from_secs(iv - (iv / 3).min(32))
        };
        se.due = due;
        self.arm(cid, due, CallTimer::SessionTimer(lid));
    }

    fn other_leg(call: &Call, lid: LegId) -> Option<LegId> {
        if call.pair.0 == lid {
            Some(call.pair.1)
        } else if call.pair.1 == lid {
            Some(call.pair.0)
        } else {
            None
        }
    }

    /// Builds a request inside the dialog of leg `lid`.
    fn dialog_request(&mut self, cid: CallId, lid: LegId, method: Method) -> Option<(Request, Hop)> {
        let cfg = &self.cfg;
        let call = self.calls.get_mut(&cid)?;
        let leg = call.legs.get_mut(lid)?;
        if !matches!(method, Method::Ack | Method::Cancel) {
            leg.local_cseq += 1;
        }
        let mut req = Request::new(method.clone(), leg.remote_target.clone());
        req.headers.push("Via", via(cfg, leg.side, &new_branch()));
        req.headers.push("Max-Forwards", "70");
        for r in &leg.route_set {
            req.headers.push("Route", r.clone());
        }
        req.headers.push("From", leg.local.clone());
        req.headers.push("To", leg.remote.clone());
        req.headers.push("Call-ID", leg.call_id.clone());
        req.headers.push("CSeq", crate::fmt64!("{} {}", leg.local_cseq, method));
        if matches!(method, Method::Invite | Method::Update | Method::Refer | Method::Notify | Method::Subscribe) {
            req.headers.push("Contact", contact(cfg, leg.side, None));
        }
        add_identity(cfg, leg.side, &mut req.headers, true);
        Some((req, leg.hop.clone()))
    }

    fn send_in_dialog(&mut self, cid: CallId, req: Request, hop: Hop, purpose: Purpose, now: Instant) -> Option<ClientTxnId> {
        let rel = reliable(&hop.peer);
        match self.txns.send_request(req, hop, rel, now) {
            Ok(ctx) => {
                self.ctx.insert(ctx, (cid, purpose));
                if let Some(c) = self.calls.get_mut(&cid) {
                    c.ctxs.push(ctx);
                }
                Some(ctx)
            }
            Err(_) => None,
        }
    }

    fn relay_request(&mut self, cid: CallId, lid: LegId, stx: ServerTxnId, req: Request, now: Instant) {
        let Some(call) = self.calls.get(&cid) else { return };
        let side = call.legs[lid].side;
        let Some(olid) = Self::other_leg(call, lid) else {
            return self.respond(stx, &req, 481, side, now);
        };
        let is_offer = matches!(req.method, Method::Invite | Method::Update);
        if is_offer && (call.legs[olid].offer_pending || call.legs[olid].invite.is_some()) {
            return self.respond(stx, &req, 491, side, now);
        }
        if req.method == Method::Update && call.state != CallState::Confirmed && call.legs[olid].remote_tag.is_none() {
            return self.respond(stx, &req, 491, side, now);
        }
        if req.method == Method::Invite {
            let held = sdp_is_hold(&req.body);
            if let Some(c) = self.calls.get_mut(&cid) {
                if held != c.held && !req.body.is_empty() {
                    c.held = held;
                    self.events.push_back(if held { CallEvent::Held { call: cid, by: side } } else { CallEvent::Resumed { call: cid, by: side } });
                }
            }
        }
        if !req.body.is_empty() {
            if let Some(c) = self.calls.get_mut(&cid) {
                c.legs[lid].remote_sdp = req.body.clone();
            }
        }
        let body = if is_offer && !req.body.is_empty() {
            match self.media_offer(cid, lid, olid, &req.body) {
                Ok(b) => b,
                Err(code) => return self.respond(stx, &req, code, side, now),
            }
        } else {
            req.body.clone()
        };
        let Some((mut out, hop)) = self.dialog_request(cid, olid, req.method.clone()) else { return };
        let oside = self.calls[&cid].legs[olid].side;
        let host = build::local_host(&self.cfg, oside);
        carry_headers(&req.headers, &mut out.headers, side, &*self.plan, &host);
        for name in ["Event", "Subscription-State", "Info-Package", "Recv-Info"] {
            if let Some(v) = req.headers.get(name) {
                out.headers.push(name, v.to_string());
            }
        }
        if is_offer {
            out.headers.push("Supported", build::SUPPORTED);
            if let Some(se) = self.calls[&cid].legs[olid].se.clone() {
                out.headers.push("Session-Expires", crate::fmt64!("{};refresher={}", se.interval, if se.we_refresh { "uac" } else { "uas" }));
            }
            if let Some(c) = self.calls.get_mut(&cid) {
                c.legs[olid].offer_pending = true;
            }
        }
        out.body = body;
        if let Some(c) = self.calls.get_mut(&cid) {
            c.open_stx.push((stx, req.clone()));
        }
        if self.send_in_dialog(cid, out, hop, Purpose::Relay { from: lid, stx, req: Box::new(req.clone()) }, now).is_none() {
            self.respond(stx, &req, 503, side, now);
        }
    }

    fn ack_2xx(&mut self, ack: Request, now: Instant) {
        let Some(tag) = ack.to_tag() else { return };
        let Some((cid, lid)) = self.dialog(ack.call_id().unwrap_or(""), tag) else { return };
        let Some(call) = self.calls.get_mut(&cid) else { return };
        call.legs[lid].pending_2xx = None;
        if !ack.body.is_empty() {
            call.legs[lid].remote_sdp = ack.body.clone();
        }
        self.disarm(cid, CallTimer::Retrans2xx(lid));
        if lid == 0 && self.calls[&cid].delayed_offer {
            // The answer to drbridge's offer in the 200: where the PBX's media is.
            if ack.body.is_empty() {
                tracing::warn!(call = cid, "PBX ACK without the SDP answer to a delayed-offer call: ending it");
                self.end_call(cid, None, EndReason::Rejected(488), now);
                return;
            }
            self.media_learn(cid, 0, &ack.body);
            if let Some(c) = self.calls.get_mut(&cid) {
                c.delayed_offer = false;
            }
        }
        // An ACK on the other leg that waited for this body (offer was in the 2xx).
        let Some(call) = self.calls.get_mut(&cid) else { return };
        let Some(olid) = Self::other_leg(call, lid) else { return };
        if let Some(mut waiting) = call.legs[olid].ack_waits.take() {
            waiting.body = ack.body.clone();
            if !ack.body.is_empty() {
                waiting.headers.set("Content-Type", ack.content_type().unwrap_or("application/sdp").to_string());
            }
            let hop = call.legs[olid].hop.clone();
            let data = waiting.to_bytes();
            call.legs[olid].last_ack = Some(data.clone());
            self.out.push_back(Transmit { hop, data });
        }
        let _ = now;
    }

    fn cancel_call(&mut self, cid: CallId, now: Instant) {
        let Some(call) = self.calls.get_mut(&cid) else { return };
        if let Some((stx, req)) = call.a_invite.take().map(|b| *b) {
            let tag = call.legs[0].local_tag.clone();
            let mut r = req.response(487, Some(&tag));
            add_identity(&self.cfg, call.legs[0].side, &mut r.headers, false);
            let _ = self.txns.send_response(stx, &r, now);
        }
        self.end_call(cid, Some(0), EndReason::Cancelled, now);
    }

    // ----------------------------------------------------------------------------------------
    // Responses
    // ----------------------------------------------------------------------------------------

    fn handle_response(&mut self, resp: Response, now: Instant) {
        let Some((ctx, resp)) = self.txns.on_response(resp, now) else { return };
        if let Some(probe) = self.options.get(&ctx).copied() {
            if resp.status >= 200 {
                self.options.remove(&ctx);
                let up = resp.status != 503;
                match probe {
                    Some(i) => {
                        if let Some(h) = self.options_result(Some(i), up, now) {
                            tracing::info!(proxy = %self.cfg.teams_proxies[i].host, health = ?h, "Teams proxy state");
                        }
                        self.proxies[i].probe = None;
                    }
                    None => {
                        if let Some(h) = self.options_result(None, up, now) {
                            tracing::info!(health = ?h, "PBX trunk state");
                        }
                        self.pbx_health.probe = None;
                    }
                }
            }
            return;
        }
        if self.notify_ctx.contains_key(&ctx) {
            if resp.status >= 200 {
                self.watcher_notify_result(ctx, resp.status, now);
            }
            return;
        }
        if let Some((_, Purpose::Subscribe(id))) = self.ctx.get(&ctx).cloned() {
            if resp.status >= 200 {
                self.ctx.remove(&ctx);
            }
            self.subscription_response(id, &resp);
            return;
        }
        // What a 2xx to an INVITE may still need (its retransmissions come to the TU) stays;
        // anything else final is taken out rather than cloned: a relayed BYE's purpose holds
        // the whole BYE, kept until the call's clean-up 64*T1 later.
        let Some((_, p)) = self.ctx.get(&ctx) else { return };
        let keep = resp.status < 200
            || (resp.is_success()
                && match p {
                    Purpose::OpenLeg(_) | Purpose::Reconnect { .. } | Purpose::Abandoned => true,
                    Purpose::Relay { req, .. } => req.method == Method::Invite,
                    _ => false,
                });
        let taken = if keep { self.ctx.get(&ctx).cloned() } else { self.ctx.remove(&ctx) };
        let Some((cid, purpose)) = taken else { return };
        match purpose {
            Purpose::OpenLeg(lid) => self.open_leg_response(cid, lid, ctx, resp, now),
            Purpose::Relay { from, stx, req } => self.relay_response(cid, from, stx, *req, ctx, resp, now),
            Purpose::Reconnect { to_leg, new_leg, answer } => self.reconnect_response(cid, to_leg, new_leg, answer.map(|a| *a), resp, now),
            Purpose::Refresh(lid) => {
                if resp.status >= 200 {
                    if resp.is_success() || resp.status == 422 || resp.status == 491 {
                        if let Some(c) = self.calls.get_mut(&cid) {
                            c.legs[lid].offer_pending = false;
                        }
                        if resp.is_success() {
                            self.ack_if_invite(cid, lid, &resp);
                        }
                        self.schedule_session_timer(cid, lid, now);
                    } else if matches!(resp.status, 405 | 501) {
                        if let Some(c) = self.calls.get_mut(&cid) {
                            c.legs[lid].allows_update = false;
                            c.legs[lid].offer_pending = false;
                        }
                        self.send_refresh(cid, lid, now);
                    } else {
                        self.stats.session_expired += 1;
                        self.end_call(cid, None, EndReason::SessionExpired, now);
                    }
                }
            }
            Purpose::Abandoned => {
                if resp.is_success() {
                    self.ack_and_bye_stray(cid, &resp, now);
                }
            }
            Purpose::Bye | Purpose::Cancel | Purpose::Notify | Purpose::Subscribe(_) => {}
        }
    }

    /// Sends an ACK for a 2xx to a re-INVITE (refresh) on leg `lid`.
    fn ack_if_invite(&mut self, cid: CallId, lid: LegId, resp: &Response) {
        if resp.cseq().map(|c| c.method) != Some(Method::Invite) {
            return;
        }
        self.send_ack(cid, lid, resp, None);
    }

    fn send_ack(&mut self, cid: CallId, lid: LegId, resp: &Response, body_later: Option<()>) {
        let Some(seq) = resp.cseq().map(|c| c.seq) else { return };
        let Some(call) = self.calls.get_mut(&cid) else { return };
        let leg = &mut call.legs[lid];
        let mut ack = Request::new(Method::Ack, leg.remote_target.clone());
        ack.headers.push("Via", via(&self.cfg, leg.side, &new_branch()));
        ack.headers.push("Max-Forwards", "70");
        for r in &leg.route_set {
            ack.headers.push("Route", r.clone());
        }
        ack.headers.push("From", leg.local.clone());
        ack.headers.push("To", leg.remote.clone());
        ack.headers.push("Call-ID", leg.call_id.clone());
        ack.headers.push("CSeq", crate::fmt64!("{seq} ACK"));
        if body_later.is_some() {
            leg.ack_waits = Some(Box::new(ack));
            return;
        }
        let data = ack.to_bytes();
        leg.last_ack = Some(data.clone());
        self.out.push_back(Transmit { hop: leg.hop.clone(), data });
    }

    /// Takes the dialog state a 1xx/2xx establishes on a leg drbridge opened (UAC).
    fn learn_dialog(&mut self, cid: CallId, lid: LegId, resp: &Response) {
        let Some(call) = self.calls.get_mut(&cid) else { return };
        let leg = &mut call.legs[lid];
        if let Some(tag) = resp.to_tag() {
            if let Some(to) = resp.headers.get("To") {
                leg.remote = to.to_string();
            }
            leg.remote_tag = Some(tag.to_string());
        }
        if let Some(c) = resp.headers.values("Contact").first().and_then(|c| NameAddr::parse(c).ok()) {
            leg.remote_target = c.uri.to_string();
        }
        let rr: Vec<String> = resp.headers.values("Record-Route").iter().rev().map(|s| s.to_string()).collect();
        if !rr.is_empty() || resp.is_success() {
            leg.route_set = rr;
        }
        leg.allows_update = resp.headers.get("Allow").is_none() || resp.headers.has_token("Allow", "UPDATE");
        if !resp.body.is_empty() {
            leg.remote_sdp = resp.body.clone();
        }
        leg.hop = dialog_hop(&self.cfg, leg.side, &leg.route_set, &leg.remote_target, leg.hop.clone());
    }

    /// Response for the leg as relayed to the caller's leg `to` (answering `req` on `stx`).
    fn relayed_response(&self, call: &Call, to: LegId, req: &Request, resp: &Response) -> Response {
        let leg = &call.legs[to];
        let status = map_status(resp.status);
        let mut r = req.response(status, Some(&leg.local_tag));
        if status == resp.status {
            r.reason = resp.reason.clone();
        }
        let host = build::local_host(&self.cfg, leg.side);
        add_identity(&self.cfg, leg.side, &mut r.headers, false);
        if status > 100 && status < 300 {
            r.headers.push("Contact", contact(&self.cfg, leg.side, None));
        }
        let from = leg.side.other();
        carry_headers(&resp.headers, &mut r.headers, from, &*self.plan, &host);
        if let Some(ra) = resp.headers.get("Retry-After") {
            r.headers.push("Retry-After", ra.split(';').next().unwrap_or("").trim().to_string());
        }
        for name in ["Warning", "Unsupported", "Min-SE"] {
            if let Some(v) = resp.headers.get(name) {
                if name != "Warning" {
                    r.headers.push(name, v.to_string());
                }
            }
        }
        if !resp.body.is_empty() {
            r.body = resp.body.clone();
            if !r.headers.contains("Content-Type") {
                r.headers.push("Content-Type", "application/sdp");
            }
        }
        r
    }

    fn open_leg_response(&mut self, cid: CallId, lid: LegId, ctx: ClientTxnId, resp: Response, now: Instant) {
        let Some(call) = self.calls.get_mut(&cid) else { return };
        let first_open = lid == 1 && call.refer.as_ref().and_then(|r| r.target_leg) != Some(lid);
        let Some(inv) = call.legs[lid].invite.as_mut() else {
            // 2xx retransmission after the INVITE is done: re-send our ACK.
            if resp.is_success() {
                if let Some(data) = call.legs[lid].last_ack.clone() {
                    let hop = call.legs[lid].hop.clone();
                    self.out.push_back(Transmit { hop, data });
                }
            }
            return;
        };
        if inv.ctx != ctx {
            return;
        }
        inv.responded = true;
        if resp.status > 100 {
            inv.provisional = true;
        }
        let cancel_pending = inv.cancel_pending;
        self.disarm(cid, CallTimer::InviteDeadline(lid));
        if resp.status < 200 {
            if resp.status == 100 {
                if cancel_pending {
                    self.send_cancel(cid, lid, now);
                }
                return;
            }
            self.learn_dialog(cid, lid, &resp);
            if cancel_pending {
                self.send_cancel(cid, lid, now);
                return;
            }
            if first_open {
                self.relay_provisional(cid, lid, &resp, now);
            }
            return;
        }
        let call = self.calls.get_mut(&cid).expect("call present");
        let inv = call.legs[lid].invite.take().expect("invite present");
        if resp.is_success() {
            self.learn_dialog(cid, lid, &resp);
            if cancel_pending || self.calls[&cid].state == CallState::Ended {
                self.send_ack(cid, lid, &resp, None);
                self.bye_leg(cid, lid, now);
                return;
            }
            // Session timer on the leg we opened.
            let se = Self::session_expires_of(&resp.headers).map(|(iv, refr)| SessionTimer {
                interval: iv,
                we_refresh: refr.as_deref() != Some("uas"),
                due: now,
            });
            if let Some(c) = self.calls.get_mut(&cid) {
                c.legs[lid].se = se.clone();
            }
            if se.is_some() {
                self.schedule_session_timer(cid, lid, now);
            }
            if first_open {
                let offer_in_2xx = self.calls[&cid].a_invite.as_deref().is_some_and(|(_, r)| r.body.is_empty());
                self.send_ack(cid, lid, &resp, offer_in_2xx.then_some(()));
                self.answer_caller(cid, lid, &resp, now);
            } else {
                self.send_ack(cid, lid, &resp, None);
                self.transfer_target_answered(cid, lid, &resp, now);
            }
            return;
        }
        // Final failure: fail over to the next proxy, or give up.
        let side = self.calls[&cid].legs[lid].side;
        if side == Side::Teams {
            if let Some(idx) = inv.proxy.filter(|_| resp.status == 503) {
                let ra = resp.headers.get("Retry-After").and_then(|v| v.split(';').next()?.trim().parse().ok()).map(Duration::from_secs);
                self.proxy_set.on_invite_failure(idx, ra, now);
            }
            if inv.plan.as_ref().is_some_and(|p| p.should_fail_over(resp.status) && p.remaining() > 0) {
                self.fail_over(cid, lid, inv, now);
                return;
            }
        }
        if let Some(c) = self.calls.get_mut(&cid) {
            c.legs[lid].invite = Some(inv);
        }
        self.invite_failed_with(cid, lid, Some(&resp), resp.status, now);
    }

    fn fail_over(&mut self, cid: CallId, lid: LegId, inv: Box<OutInvite>, now: Instant) {
        let mut plan = inv.plan;
        let Some(next) = plan.as_mut().and_then(|p| p.next()) else { return };
        let p = self.cfg.teams_proxies[next].clone();
        self.stats.failovers += 1;
        tracing::info!(call = cid, proxy = %p.host, "failing over to next Teams proxy");
        let mut req = inv.req;
        let mut uri = Uri::parse(&req.uri).unwrap_or_else(|_| Uri::sip(None, &p.host, None));
        uri.host = p.host.clone();
        uri.port = Some(p.port);
        req.uri = SipStr::from(uri.to_string());
        let seq = req.cseq().map(|c| c.seq + 1).unwrap_or(2);
        req.headers.set("CSeq", crate::fmt64!("{seq} INVITE"));
        req.headers.set("Via", via(&self.cfg, Side::Teams, &new_branch()));
        if let Some(to) = req.headers.get("To").and_then(|t| NameAddr::parse(t).ok()) {
            let mut to = to;
            to.uri.host = p.host.clone();
            req.headers.set("To", to.to_string());
        }
        if let Some(c) = self.calls.get_mut(&cid) {
            c.legs[lid].local_cseq = seq;
            c.legs[lid].remote_target = req.uri.to_string();
        }
        let hop = Hop { peer: Peer { proto: Proto::Tls, addr: p.addr }, tls_name: Some(Arc::from(p.host.as_str())) };
        self.send_open_invite(cid, lid, req, hop, plan, Some(next), now);
    }

    /// The INVITE opening leg `lid` failed without a usable response (timeout, transport).
    fn invite_failed(&mut self, cid: CallId, lid: LegId, status: u16, now: Instant) {
        let Some(call) = self.calls.get_mut(&cid) else { return };
        let Some(inv) = call.legs[lid].invite.clone() else { return };
        if let Some(idx) = inv.proxy {
            self.proxy_set.on_invite_failure(idx, None, now);
        }
        let Some(call) = self.calls.get_mut(&cid) else { return };
        let more = inv.plan.as_ref().is_some_and(|p| p.remaining() > 0);
        if call.legs[lid].side == Side::Teams && more && !inv.cancel_pending && call.state != CallState::Ended {
            call.legs[lid].invite = None;
            self.ctx.insert(inv.ctx, (cid, Purpose::Abandoned));
            self.fail_over(cid, lid, inv, now);
            return;
        }
        self.invite_failed_with(cid, lid, None, status, now);
    }

    fn invite_failed_with(&mut self, cid: CallId, lid: LegId, resp: Option<&Response>, status: u16, now: Instant) {
        let Some(call) = self.calls.get_mut(&cid) else { return };
        // The leg may not exist when it could not even be opened.
        if let Some(leg) = call.legs.get_mut(lid) {
            leg.invite = None;
            leg.ended = true;
        }
        let is_transfer = call.refer.as_ref().and_then(|r| r.target_leg) == Some(lid);
        if is_transfer {
            self.transfer_failed(cid, status, now);
            return;
        }
        // Relay the failure to the caller.
        if let Some((stx, req)) = call.a_invite.take().map(|b| *b) {
            let r = match resp {
                Some(resp) => self.relayed_response(&self.calls[&cid], 0, &req, resp),
                None => {
                    let mut r = req.response(status, Some(&call.legs[0].local_tag));
                    add_identity(&self.cfg, call.legs[0].side, &mut r.headers, false);
                    r
                }
            };
            let _ = self.txns.send_response(stx, &r, now);
        }
        self.stats.calls_failed += 1;
        self.end_call(cid, Some(lid), EndReason::Rejected(status), now);
    }

    fn relay_provisional(&mut self, cid: CallId, lid: LegId, resp: &Response, now: Instant) {
        let Some(call) = self.calls.get(&cid) else { return };
        let Some((stx, req)) = call.a_invite.as_deref() else { return };
        let (stx, mut r) = (*stx, self.relayed_response(call, 0, req, resp));
        if !resp.body.is_empty() {
            match self.media_answer(cid, lid, 0, &resp.body) {
                Ok(b) => r.body = b,
                Err(_) => {
                    // Early media we cannot anchor: relay the progress without it.
                    r.body = Bytes::new();
                    r.headers.remove("Content-Type");
                }
            }
        }
        let Some(call) = self.calls.get(&cid) else { return };
        if call.delayed_offer {
            // The PBX made no offer: an SDP in an unreliable 18x would be an offer it cannot
            // answer (RFC 3261 13.2.1). It plays ringback itself.
            r.body = Bytes::new();
            r.headers.remove("Content-Type");
        }
        let first = call.state == CallState::Calling;
        let (caller, callee) = (call.caller.clone(), call.callee.clone());
        let _ = self.txns.send_response(stx, &r, now);
        if let Some(c) = self.calls.get_mut(&cid) {
            c.state = CallState::Early;
        }
        if first && (resp.status == 180 || resp.status == 183) {
            self.events.push_back(CallEvent::Ringing { call: cid, caller, callee });
        }
    }

    fn answer_caller(&mut self, cid: CallId, lid: LegId, resp: &Response, now: Instant) {
        let Some(call) = self.calls.get(&cid) else { return };
        let Some((stx, req)) = call.a_invite.as_deref() else { return };
        let (stx, mut r) = (*stx, self.relayed_response(call, 0, req, resp));
        if !resp.body.is_empty() {
            match self.media_answer(cid, lid, 0, &resp.body) {
                Ok(b) => r.body = b,
                Err(code) => {
                    // The callee answered with media we cannot relay: hang it up, refuse the call.
                    self.bye_leg(cid, lid, now);
                    if let Some(c) = self.calls.get_mut(&cid) {
                        c.legs[lid].invite = None;
                    }
                    self.invite_failed_with(cid, lid, None, code, now);
                    return;
                }
            }
        }
        // Answered: the INVITE is not needed past the session timer's negotiation.
        let Some((_, req)) = self.calls.get_mut(&cid).and_then(|c| c.a_invite.take()).map(|b| *b) else { return };
        self.answer_session_timer(cid, 0, &req, &mut r, now);
        let Some(call) = self.calls.get_mut(&cid) else { return };
        call.state = CallState::Confirmed;
        call.pair = (0, lid);
        self.stats.calls_answered += 1;
        let (caller, callee) = (call.caller.clone(), call.callee.clone());
        self.retransmit_2xx(cid, 0, &r, now);
        let _ = self.txns.send_response(stx, &r, now);
        self.invite_stx.remove(&stx);
        tracing::info!(call = cid, "answered");
        self.events.push_back(CallEvent::Answered { call: cid, caller, callee });
    }

    /// Over UDP, our 2xx to an INVITE on leg `lid` is re-sent until its ACK (RFC 3261
    /// 13.3.1.4): T1 doubling to T2, given up after 64*T1.
    fn retransmit_2xx(&mut self, cid: CallId, lid: LegId, r: &Response, now: Instant) {
        let (t1, give_up) = (self.cfg.t1, now + self.cfg.t1 * 64);
        let Some(leg) = self.calls.get_mut(&cid).and_then(|c| c.legs.get_mut(lid)) else { return };
        if leg.hop.peer.proto != Proto::Udp {
            return;
        }
        leg.pending_2xx = Some(Box::new(Pending2xx { data: r.to_bytes(), interval: t1, next: now + t1, give_up }));
        self.arm(cid, now + t1, CallTimer::Retrans2xx(lid));
    }

    fn send_cancel(&mut self, cid: CallId, lid: LegId, now: Instant) {
        let Some(call) = self.calls.get_mut(&cid) else { return };
        let Some(inv) = call.legs[lid].invite.as_mut() else { return };
        inv.cancel_pending = false;
        let ctx = inv.ctx;
        let hop = call.legs[lid].hop.clone();
        if let Some(cancel) = self.txns.cancel_request(ctx) {
            let rel = reliable(&hop.peer);
            if let Ok(id) = self.txns.send_request(cancel, hop, rel, now) {
                self.ctx.insert(id, (cid, Purpose::Cancel));
            }
        }
        // Whatever comes back for the INVITE now is not wanted.
        self.ctx.insert(ctx, (cid, Purpose::Abandoned));
        if let Some(c) = self.calls.get_mut(&cid) {
            c.legs[lid].invite = None;
            c.legs[lid].ended = true;
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn relay_response(&mut self, cid: CallId, from: LegId, stx: ServerTxnId, req: Request, ctx: ClientTxnId, resp: Response, now: Instant) {
        let Some(call) = self.calls.get(&cid) else { return };
        let Some(olid) = Self::other_leg(call, from) else { return };
        if resp.status == 100 {
            return;
        }
        let is_invite = req.method == Method::Invite;
        if resp.status >= 200 && !call.open_stx.iter().any(|(s, _)| *s == stx) {
            // Already answered: a 2xx retransmission. Re-send our ACK.
            if resp.is_success() && is_invite {
                if let Some(data) = call.legs[olid].last_ack.clone() {
                    let hop = call.legs[olid].hop.clone();
                    self.out.push_back(Transmit { hop, data });
                }
            }
            return;
        }
        let is_offer = matches!(req.method, Method::Invite | Method::Update) && !req.body.is_empty();
        let mut r = self.relayed_response(call, from, &req, &resp);
        if is_offer && !resp.body.is_empty() && resp.status < 300 {
            match self.media_answer(cid, olid, from, &resp.body) {
                Ok(b) => r.body = b,
                Err(_) => {
                    r.body = Bytes::new();
                    r.headers.remove("Content-Type");
                }
            }
        }
        if resp.status < 200 {
            let _ = self.txns.send_response(stx, &r, now);
            return;
        }
        if let Some(c) = self.calls.get_mut(&cid) {
            c.open_stx.retain(|(s, _)| *s != stx);
            if matches!(req.method, Method::Invite | Method::Update) {
                c.legs[olid].offer_pending = false;
            }
            if !resp.body.is_empty() {
                c.legs[olid].remote_sdp = resp.body.clone();
            }
        }
        if resp.is_success() && matches!(req.method, Method::Invite | Method::Update) {
            if let Some(se) = Self::session_expires_of(&resp.headers) {
                if let Some(c) = self.calls.get_mut(&cid) {
                    c.legs[olid].se = Some(SessionTimer { interval: se.0, we_refresh: se.1.as_deref() != Some("uas"), due: now });
                }
            }
            if self.calls[&cid].legs[olid].se.is_some() {
                self.schedule_session_timer(cid, olid, now);
            }
            self.answer_session_timer(cid, from, &req, &mut r, now);
        }
        if resp.is_success() && is_invite {
            let waits = req.body.is_empty();
            self.send_ack(cid, olid, &resp, waits.then_some(()));
            self.retransmit_2xx(cid, from, &r, now);
        }
        self.ctx.remove(&ctx);
        let _ = self.txns.send_response(stx, &r, now);
        if matches!(resp.status, 408 | 481) && matches!(req.method, Method::Invite | Method::Update) {
            // The other leg lost the dialog: the call cannot go on.
            self.end_call(cid, Some(olid), EndReason::Timeout, now);
        }
    }

    /// A client transaction ended without a final response: `status` is 408 (timeout) or 503
    /// (transport error).
    fn client_timeout(&mut self, ctx: ClientTxnId, status: u16, now: Instant) {
        if self.notify_ctx.contains_key(&ctx) {
            return self.watcher_notify_result(ctx, status, now);
        }
        if let Some(p) = self.options.remove(&ctx) {
            match p {
                Some(i) => {
                    if self.options_result(Some(i), false, now).is_some() {
                        tracing::warn!(proxy = %self.cfg.teams_proxies[i].host, "Teams proxy did not answer OPTIONS: marked down");
                    }
                    self.proxies[i].probe = None;
                }
                None => {
                    if self.options_result(None, false, now).is_some() {
                        tracing::warn!("PBX trunk did not answer OPTIONS: marked down");
                    }
                    self.pbx_health.probe = None;
                }
            }
            return;
        }
        let Some((cid, purpose)) = self.ctx.remove(&ctx) else { return };
        match purpose {
            Purpose::OpenLeg(lid) => {
                let matches = self.calls.get(&cid).and_then(|c| c.legs[lid].invite.as_ref()).is_some_and(|i| i.ctx == ctx);
                if matches {
                    self.invite_failed(cid, lid, status, now);
                }
            }
            Purpose::Relay { from, stx, req } => {
                let side = self.calls.get(&cid).map(|c| c.legs[from].side).unwrap_or(Side::Pbx);
                if let Some(c) = self.calls.get_mut(&cid) {
                    c.open_stx.retain(|(s, _)| *s != stx);
                }
                self.respond(stx, &req, status, side, now);
                if matches!(req.method, Method::Invite | Method::Update) {
                    self.end_call(cid, None, EndReason::Timeout, now);
                }
            }
            Purpose::Refresh(_) => {
                self.stats.session_expired += 1;
                self.end_call(cid, None, EndReason::SessionExpired, now);
            }
            Purpose::Subscribe(id) => self.sub_events.push_back(SubscriptionEvent::Response { id, status: 408, expires: None }),
            Purpose::Reconnect { answer, new_leg, .. } => {
                if let Some((stx, req)) = answer.map(|a| *a) {
                    self.respond(stx, &req, status, Side::Teams, now);
                }
                let _ = new_leg;
            }
            _ => {}
        }
    }

    // ----------------------------------------------------------------------------------------
    // Ending calls
    // ----------------------------------------------------------------------------------------

    fn bye_leg(&mut self, cid: CallId, lid: LegId, now: Instant) {
        let Some(call) = self.calls.get_mut(&cid) else { return };
        if call.legs[lid].ended {
            return;
        }
        call.legs[lid].ended = true;
        call.legs[lid].pending_2xx = None;
        if let Some((req, hop)) = self.dialog_request(cid, lid, Method::Bye) {
            self.send_in_dialog(cid, req, hop, Purpose::Bye, now);
        }
    }

    /// Ends the call: BYE (or CANCEL) every live leg except `except`, answer open server
    /// transactions, emit `Ended`, and keep the state a little longer for stray retransmissions.
    fn end_call(&mut self, cid: CallId, except: Option<LegId>, reason: EndReason, now: Instant) {
        let Some(call) = self.calls.get_mut(&cid) else { return };
        if call.state == CallState::Ended {
            return;
        }
        let was_answered = call.state == CallState::Confirmed;
        call.state = CallState::Ended;
        self.live_calls = self.live_calls.saturating_sub(1);
        // This core counted the call in: the shared count is at least one.
        self.cfg.live_calls.fetch_sub(1, Ordering::AcqRel);
        if let Some(e) = except {
            call.legs[e].ended = true;
            call.legs[e].pending_2xx = None;
        }
        let open: Vec<(ServerTxnId, Request)> = std::mem::take(&mut call.open_stx);
        let a_inv = call.a_invite.take().map(|b| *b);
        let n = call.legs.len();
        let (caller, callee) = (call.caller.clone(), call.callee.clone());
        for (stx, req) in open {
            let side = self.calls[&cid].legs.first().map(|l| l.side).unwrap_or(Side::Pbx);
            self.respond(stx, &req, 481, side, now);
        }
        if let Some((stx, req)) = a_inv {
            let tag = self.calls[&cid].legs[0].local_tag.clone();
            let mut r = req.response(if reason == EndReason::Timeout { 408 } else { 487 }, Some(&tag));
            add_identity(&self.cfg, self.calls[&cid].legs[0].side, &mut r.headers, false);
            let _ = self.txns.send_response(stx, &r, now);
            self.calls.get_mut(&cid).expect("call").legs[0].ended = true;
        }
        for lid in 0..n {
            let call = &self.calls[&cid];
            let leg = &call.legs[lid];
            if leg.ended {
                continue;
            }
            if let Some(inv) = &leg.invite {
                if inv.provisional {
                    self.send_cancel(cid, lid, now);
                } else if let Some(i) = self.calls.get_mut(&cid).and_then(|c| c.legs[lid].invite.as_mut()) {
                    i.cancel_pending = true;
                }
                continue;
            }
            if leg.remote_tag.is_some() {
                self.bye_leg(cid, lid, now);
            }
        }
        self.free_media(cid);
        // What lingers until the clean-up (64*T1, for retransmissions) is the dialogs only: the
        // Call-ID and tag that find a leg, and the ACK a retransmitted 2xx gets again. A leg
        // whose BYE is sent (or came) and whose INVITE is done builds no request again (an
        // in-dialog request on an ended call is answered 481 from the request itself), so its
        // addresses and route set go now, while they are in the cache, and not 32 s later.
        if let Some(call) = self.calls.get_mut(&cid) {
            for l in &mut call.legs {
                l.remote_sdp = Bytes::new();
                l.last_sent = Bytes::new();
                l.sdp.forget();
                l.ack_waits = None;
                l.offer_in = None;
                l.offer_out = None;
                l.remote_media = None;
                if l.ended && l.invite.is_none() {
                    l.local = String::new();
                    l.remote = String::new();
                    l.remote_target = String::new();
                    l.route_set = Vec::new();
                    l.party = String::new();
                }
            }
        }
        tracing::info!(call = cid, ?reason, answered = was_answered, "call ended");
        self.events.push_back(CallEvent::Ended { call: cid, caller, callee, reason });
        let cleanup = now + self.cfg.t1 * 64;
        self.arm(cid, cleanup, CallTimer::Cleanup);
    }

    fn free_media(&mut self, cid: CallId) {
        let Some(call) = self.calls.get_mut(&cid) else { return };
        for b in [call.media.take(), call.media_next.take().flatten()].into_iter().flatten() {
            self.media_calls.remove(&b.id);
            if let Some(m) = self.media.as_mut() {
                m.free(b.id);
            }
        }
    }

    /// Allocates a session joining legs `a` and `b` for a new pair (transfer, Replaces).
    /// `b` may be a leg about to be opened (the transfer target), so its side is given.
    fn bind_next_media(&mut self, cid: CallId, a: LegId, b: LegId, sb: Side) -> Result<(), u16> {
        let Some(sa) = self.calls.get(&cid).and_then(|c| c.legs.get(a)).map(|l| l.side) else { return Err(481) };
        let Some(m) = self.media.as_mut() else { return Ok(()) };
        if sa == sb {
            if let Some(call) = self.calls.get_mut(&cid) {
                call.media_next = Some(None);
            }
            return Ok(());
        }
        match m.allocate(trunk(sa), trunk(sb)) {
            Ok(id) => {
                self.media_calls.insert(id, cid);
                if let Some(call) = self.calls.get_mut(&cid) {
                    call.media_next = Some(Some(MediaBinding { id, a, b }));
                }
                Ok(())
            }
            Err(_) => {
                self.stats.media_ports_exhausted += 1;
                Err(503)
            }
        }
    }

    /// The session set up by `bind_next_media` becomes the call's; the old one is freed.
    fn switch_media(&mut self, cid: CallId) {
        let Some(call) = self.calls.get_mut(&cid) else { return };
        let Some(next) = call.media_next.take() else { return };
        if let Some(old) = std::mem::replace(&mut call.media, next) {
            self.media_calls.remove(&old.id);
            if let Some(m) = self.media.as_mut() {
                m.free(old.id);
            }
        }
    }

    /// The session (current or being set up) that joins legs `x` and `y`, with their ends.
    fn media_ends(&self, cid: CallId, x: LegId, y: LegId) -> Option<(MediaSessionId, MediaEnd, MediaEnd)> {
        let call = self.calls.get(&cid)?;
        [call.media_next.flatten(), call.media].into_iter().flatten().find_map(|b| Some((b.id, b.end_of(x)?, b.end_of(y)?)))
    }

    fn profile(&self, side: Side) -> &CodecProfile {
        match side {
            Side::Teams => &self.teams_profile,
            Side::Pbx => &self.pbx_profile,
        }
    }

    /// An SDP offer from leg `from`, rewritten for leg `to`: drbridge's own address, keys and
    /// ICE credentials on `to`'s side; what `from` said goes to the relay. Err: the status to
    /// refuse the offer with (488 when nothing in it can be relayed).
    fn media_offer(&mut self, cid: CallId, from: LegId, to: LegId, body: &Bytes) -> Result<Bytes, u16> {
        if self.media.is_none() || body.is_empty() {
            return Ok(body.clone());
        }
        let Some((id, end_from, end_to)) = self.media_ends(cid, from, to) else { return Ok(body.clone()) };
        let offer = Sdp::parse(body.clone()).map_err(|_| 400u16)?;
        let (side_from, side_to) = {
            let c = &self.calls[&cid];
            (c.legs[from].side, c.legs[to].side)
        };
        let profile = self.profile(side_to).clone();
        let media = self.media.as_mut().expect("checked above");
        let Some(local_to) = media.local(id, end_to) else { return Err(500) };
        let call = self.calls.get_mut(&cid).ok_or(481u16)?;
        let (out, remote) = rewrite_offer(&offer, trunk(side_from), &local_to, trunk(side_to), &profile, &mut call.legs[to].sdp)
            .map_err(|e| self.sdp_refused(cid, e))?;
        let media = self.media.as_mut().expect("checked above");
        let call = self.calls.get_mut(&cid).ok_or(481u16)?;
        if side_from == Side::Teams && call.legs[from].remote_media.as_ref().is_some_and(|prev| ice_restart_requested(prev, &remote)) {
            tracing::info!(call = cid, "ICE restart requested");
            media.restart_ice(id, end_from);
        }
        media.update(id, end_from, remote.clone()).map_err(|_| 500u16)?;
        call.legs[from].offer_in = Some(offer);
        call.legs[from].remote_media = Some(Box::new(remote));
        let bytes = out.to_bytes();
        call.legs[to].offer_out = Some(out);
        call.legs[to].last_sent = bytes.clone();
        Ok(bytes)
    }

    /// An SDP answer from leg `from` to the offer leg `to` made, rewritten for `to`.
    fn media_answer(&mut self, cid: CallId, from: LegId, to: LegId, body: &Bytes) -> Result<Bytes, u16> {
        if self.media.is_none() || body.is_empty() {
            return Ok(body.clone());
        }
        let Some((id, end_from, end_to)) = self.media_ends(cid, from, to) else { return Ok(body.clone()) };
        let answer = Sdp::parse(body.clone()).map_err(|_| 400u16)?;
        let media = self.media.as_mut().expect("checked above");
        let Some(local_to) = media.local(id, end_to) else { return Err(500) };
        let call = self.calls.get_mut(&cid).ok_or(481u16)?;
        // the offer sent to `from` and the one `to` made, borrowed (not cloned) beside `to`'s
        // SDP session: from != to, so the two legs are split
        let (lf, lt) = match from.cmp(&to) {
            std::cmp::Ordering::Less => {
                let (a, b) = call.legs.split_at_mut(to);
                (&a[from], &mut b[0])
            }
            std::cmp::Ordering::Greater => {
                let (a, b) = call.legs.split_at_mut(from);
                (&b[0], &mut a[to])
            }
            std::cmp::Ordering::Equal => return Err(500),
        };
        let (Some(sent), Some(original)) = (lf.offer_out.as_ref(), lt.offer_in.as_ref()) else { return Err(488) };
        let rewritten = rewrite_answer(&answer, trunk(lf.side), &local_to, trunk(lt.side), sent, original, &mut lt.sdp);
        let (out, remote) = rewritten.map_err(|e| self.sdp_refused(cid, e))?;
        let media = self.media.as_mut().expect("checked above");
        media.update(id, end_from, remote.clone()).map_err(|_| 500u16)?;
        let call = self.calls.get_mut(&cid).ok_or(481u16)?;
        call.legs[from].remote_media = Some(Box::new(remote));
        let bytes = out.to_bytes();
        call.legs[to].last_sent = bytes.clone();
        Ok(bytes)
    }

    /// An answer from leg `from` that needs no rewrite for anyone (the reply to a re-INVITE
    /// drbridge made itself): only the relay learns from it.
    fn media_learn(&mut self, cid: CallId, from: LegId, body: &Bytes) {
        let Some(call) = self.calls.get(&cid) else { return };
        let Some(b) = call.media.filter(|b| b.end_of(from).is_some()) else { return };
        let Ok(sdp) = Sdp::parse(body.clone()) else { return };
        let Ok(remote) = offer_remote_media(&sdp) else { return };
        if let (Some(m), Some(end)) = (self.media.as_mut(), b.end_of(from)) {
            let _ = m.update(b.id, end, remote);
        }
    }

    fn sdp_refused(&mut self, cid: CallId, e: MediaError) -> u16 {
        tracing::info!(call = cid, error = %e, "SDP refused");
        self.stats.sdp_not_acceptable += 1;
        match e {
            MediaError::BadSdp(_) => 400,
            MediaError::Exhausted(_) => 503,
            _ => 488,
        }
    }

    /// The call and leg of the dialog with this Call-ID and our tag.
    fn dialog(&self, call_id: &str, tag: &str) -> Option<(CallId, LegId)> {
        self.dialogs.find(&(call_id, tag), |(cid, lid)| {
            self.calls.get(&cid).and_then(|c| c.legs.get(lid)).is_some_and(|l| l.call_id == call_id && l.local_tag == tag)
        })
    }

    fn remove_call(&mut self, cid: CallId) {
        self.free_media(cid);
        if let Some(call) = self.calls.remove(&cid) {
            for (lid, l) in call.legs.iter().enumerate() {
                self.dialogs.remove(&(&l.call_id, &l.local_tag), (cid, lid));
            }
            for c in &call.ctxs {
                self.ctx.remove(c);
            }
            self.invite_stx.remove(&call.first_stx);
        }
    }

    fn ack_and_bye_stray(&mut self, cid: CallId, resp: &Response, now: Instant) {
        // A 2xx from a leg we gave up on (failover, cancel race): ACK it and hang up, built from
        // the response itself since the leg may have moved on.
        let Some(call) = self.calls.get(&cid) else { return };
        let Some(leg) = call.legs.iter().find(|l| Some(&l.call_id[..]) == resp.call_id()) else { return };
        let side = leg.side;
        let hop = leg.hop.clone();
        let target = resp.headers.values("Contact").first().and_then(|c| NameAddr::parse(c).ok()).map(|n| n.uri.to_string()).unwrap_or(leg.remote_target.clone());
        let seq = resp.cseq().map(|c| c.seq).unwrap_or(1);
        for (m, s) in [(Method::Ack, seq), (Method::Bye, seq + 1)] {
            let mut r = Request::new(m.clone(), target.clone());
            r.headers.push("Via", via(&self.cfg, side, &new_branch()));
            r.headers.push("Max-Forwards", "70");
            for rr in resp.headers.values("Record-Route").iter().rev() {
                r.headers.push("Route", rr.to_string());
            }
            r.headers.push("From", resp.headers.get("From").unwrap_or("").to_string());
            r.headers.push("To", resp.headers.get("To").unwrap_or("").to_string());
            r.headers.push("Call-ID", resp.call_id().unwrap_or("").to_string());
            r.headers.push("CSeq", crate::fmt64!("{s} {m}"));
            if m == Method::Ack {
                self.out.push_back(Transmit { hop: hop.clone(), data: r.to_bytes() });
            } else {
                let rel = reliable(&hop.peer);
                let _ = self.txns.send_request(r, hop.clone(), rel, now);
            }
        }
    }

    // ----------------------------------------------------------------------------------------
    // Timers
    // ----------------------------------------------------------------------------------------

    fn fire_call_timers(&mut self, cid: CallId, now: Instant) {
        let Some(call) = self.calls.get_mut(&cid) else { return };
        let due: Vec<CallTimer> = call.timers.iter().filter(|(at, _)| *at <= now).map(|(_, t)| *t).collect();
        call.timers.retain(|(at, _)| *at > now);
        for t in due {
            match t {
                CallTimer::InviteDeadline(lid) => {
                    tracing::info!(call = cid, "no response to INVITE within the failover time");
                    let ctx = self.calls.get(&cid).and_then(|c| c.legs[lid].invite.as_ref()).map(|i| i.ctx);
                    if let Some(ctx) = ctx {
                        self.ctx.insert(ctx, (cid, Purpose::Abandoned));
                        self.invite_failed(cid, lid, 408, now);
                    }
                }
                CallTimer::RingTimeout => {
                    let Some(call) = self.calls.get(&cid) else { return };
                    if !matches!(call.state, CallState::Calling | CallState::Early) {
                        continue;
                    }
                    tracing::info!(call = cid, "not answered within the ring timeout: given up");
                    self.stats.ring_timeouts += 1;
                    self.end_call(cid, None, EndReason::Timeout, now);
                }
                CallTimer::TargetRing(lid) => {
                    let Some(call) = self.calls.get(&cid) else { return };
                    let ringing = call.refer.as_ref().and_then(|r| r.target_leg) == Some(lid)
                        && call.legs.get(lid).and_then(|l| l.invite.as_ref()).is_some_and(|i| i.provisional);
                    if !ringing {
                        // Answered, failed, or not even ringing (Timer B ends that one).
                        continue;
                    }
                    tracing::info!(call = cid, "transfer target not answered within the ring timeout: given up");
                    self.stats.ring_timeouts += 1;
                    // The CANCEL marks the INVITE abandoned: its 487 is not the call's failure.
                    self.send_cancel(cid, lid, now);
                    self.transfer_failed(cid, 408, now);
                }
                CallTimer::Retrans2xx(lid) => {
                    let Some(call) = self.calls.get_mut(&cid) else { return };
                    let leg = &mut call.legs[lid];
                    let Some(p) = leg.pending_2xx.as_mut() else { continue };
                    if now >= p.give_up {
                        leg.pending_2xx = None;
                        tracing::warn!(call = cid, "no ACK for 2xx: ending call");
                        self.end_call(cid, None, EndReason::Timeout, now);
                        continue;
                    }
                    let data = p.data.clone();
                    p.interval = (p.interval * 2).min(self.cfg.t2);
                    p.next = now + p.interval;
                    let next = p.next;
                    let hop = leg.hop.clone();
                    self.out.push_back(Transmit { hop, data });
                    self.arm(cid, next, CallTimer::Retrans2xx(lid));
                }
                CallTimer::SessionTimer(lid) => {
                    let Some(call) = self.calls.get(&cid) else { return };
                    if call.state != CallState::Confirmed || call.legs[lid].ended {
                        continue;
                    }
                    let Some(se) = call.legs[lid].se.clone() else { continue };
                    if se.we_refresh {
                        self.send_refresh(cid, lid, now);
                    } else {
                        tracing::warn!(call = cid, "session expired: no refresh from the peer");
                        self.stats.session_expired += 1;
                        self.end_call(cid, None, EndReason::SessionExpired, now);
                    }
                }
                CallTimer::Cleanup => self.remove_call(cid),
            }
        }
    }

    /// A session refresh drbridge sends on leg `lid`: UPDATE without a body where the peer
    /// allows it, else a re-INVITE with the last SDP the leg was given.
    fn send_refresh(&mut self, cid: CallId, lid: LegId, now: Instant) {
        let Some(call) = self.calls.get(&cid) else { return };
        let leg = &call.legs[lid];
        if leg.offer_pending {
            // An offer is in flight; it refreshes the session when answered.
            let due = now + Duration::from_secs(2);
            self.arm(cid, due, CallTimer::SessionTimer(lid));
            return;
        }
        let use_update = leg.allows_update;
        let interval = leg.se.as_ref().map(|s| s.interval).unwrap_or(self.cfg.session_expires);
        let sdp = if self.media.is_some() {
            leg.last_sent.clone()
        } else {
            Self::other_leg(call, lid).map(|o| call.legs[o].remote_sdp.clone()).unwrap_or_default()
        };
        let Some((mut req, hop)) = self.dialog_request(cid, lid, if use_update { Method::Update } else { Method::Invite }) else { return };
        req.headers.push("Supported", build::SUPPORTED);
        req.headers.push("Session-Expires", crate::fmt64!("{interval};refresher=uac"));
        if !use_update && !sdp.is_empty() {
            req.headers.push("Content-Type", "application/sdp");
            req.body = sdp;
        }
        self.stats.session_refreshes_sent += 1;
        if let Some(c) = self.calls.get_mut(&cid) {
            c.legs[lid].offer_pending = true;
        }
        self.send_in_dialog(cid, req, hop, Purpose::Refresh(lid), now);
    }

    fn send_options(&mut self, now: Instant) {
        if !self.keepalive {
            return;
        }
        for i in 0..self.proxies.len() {
            if self.proxies[i].next_options > now {
                continue;
            }
            self.proxies[i].next_options = now + self.cfg.options_interval;
            if self.proxies[i].probe.is_some() {
                continue;
            }
            let p = self.cfg.teams_proxies[i].clone();
            let mut req = Request::new(Method::Options, crate::fmt64!("sip:{}:{};transport=tls", p.host, p.port));
            let tag = new_tag();
            req.headers.push("Via", via(&self.cfg, Side::Teams, &new_branch()));
            req.headers.push("Max-Forwards", "70");
            req.headers.push("From", crate::fmt64!("<sip:{}:{}>;tag={tag}", self.cfg.fqdn, self.cfg.teams_contact_port));
            req.headers.push("To", crate::fmt64!("<sip:{}:{}>", p.host, p.port));
            req.headers.push("Call-ID", self.shard.call_id(&self.cfg.fqdn));
            req.headers.push("CSeq", "1 OPTIONS");
            req.headers.push("Contact", contact(&self.cfg, Side::Teams, None));
            req.headers.push("Accept", "application/sdp");
            req.headers.push("Supported", build::SUPPORTED);
            add_identity(&self.cfg, Side::Teams, &mut req.headers, true);
            let hop = Hop { peer: Peer { proto: Proto::Tls, addr: p.addr }, tls_name: Some(Arc::from(p.host.as_str())) };
            if let Ok(id) = self.txns.send_request(req, hop, true, now) {
                self.stats.options_sent += 1;
                self.options.insert(id, Some(i));
                self.proxies[i].probe = Some(id);
            }
        }
        if let Some(iv) = self.cfg.pbx_options_interval.filter(|_| self.pbx_health.next_options <= now) {
            self.pbx_health.next_options = now + iv;
            if self.pbx_health.probe.is_none() {
                let pbx = self.cfg.pbx;
                let mut req = Request::new(Method::Options, crate::fmt64!("sip:{}", self.cfg.pbx_domain));
                req.headers.push("Via", via(&self.cfg, Side::Pbx, &new_branch()));
                req.headers.push("Max-Forwards", "70");
                req.headers.push("From", crate::fmt64!("<sip:{}>;tag={}", self.cfg.pbx_local, new_tag()));
                req.headers.push("To", crate::fmt64!("<sip:{}>", self.cfg.pbx_domain));
                req.headers.push("Call-ID", self.shard.call_id("drbridge"));
                req.headers.push("CSeq", "1 OPTIONS");
                req.headers.push("Contact", contact(&self.cfg, Side::Pbx, None));
                add_identity(&self.cfg, Side::Pbx, &mut req.headers, true);
                if let Ok(id) = self.txns.send_request(req, Hop { peer: pbx, tls_name: None }, reliable(&pbx), now) {
                    self.stats.options_sent += 1;
                    self.options.insert(id, None);
                    self.pbx_health.probe = Some(id);
                }
            }
        }
    }

    // ----------------------------------------------------------------------------------------
    // Transfers (REFER from Teams) and Replaces
    // ----------------------------------------------------------------------------------------

    fn refer(&mut self, cid: CallId, lid: LegId, stx: ServerTxnId, req: Request, now: Instant) {
        let Some(call) = self.calls.get(&cid) else { return };
        let Some(remaining) = Self::other_leg(call, lid) else { return self.respond(stx, &req, 481, Side::Teams, now) };
        if call.state != CallState::Confirmed || call.refer.is_some() {
            return self.respond(stx, &req, 491, Side::Teams, now);
        }
        let Some(refer_to) = req.headers.get("Refer-To").and_then(|v| NameAddr::parse(v).ok()) else {
            return self.respond(stx, &req, 400, Side::Teams, now);
        };
        if refer_to.uri.headers.as_deref().is_some_and(|h| h.to_ascii_lowercase().contains("replaces")) {
            // Attended transfer through drbridge is not supported: Teams then handles it itself.
            return self.respond(stx, &req, 501, Side::Teams, now);
        }
        let number = number_of_uri(&refer_to.uri);
        let teams_user = refer_to.uri.params.has("x-m") || refer_to.uri.params.has("x-t");
        let target_e164 = number.as_deref().map(|n| self.plan.to_teams(n));
        let dest = match (&target_e164, teams_user) {
            (_, true) => Side::Teams,
            // A transfer target is routed like a call from the PBX side: numbers the routes give
            // to the PBX go there, everything else back to Teams (default for calls from Teams
            // would be the PBX, which is wrong for a Teams user's transfer to a Teams number).
            (Some(n), false) => self.plan.route(n, Side::Pbx),
            (None, false) => return self.respond(stx, &req, 400, Side::Teams, now),
        };
        // 202 Accepted, then NOTIFY 100 Trying.
        let mut r = req.response(202, None);
        add_identity(&self.cfg, Side::Teams, &mut r.headers, false);
        r.headers.set("Contact", contact(&self.cfg, Side::Teams, None));
        let _ = self.txns.send_response(stx, &r, now);
        self.stats.transfers += 1;
        let target = target_e164.clone().unwrap_or_else(|| refer_to.uri.to_string());
        tracing::info!(call = cid, target = %target, to = ?dest, "REFER accepted");
        if let Some(c) = self.calls.get_mut(&cid) {
            c.refer = Some(ReferState { transferor: lid, target_leg: None, target: target.clone() });
        }
        self.notify_sipfrag(cid, lid, "SIP/2.0 100 Trying", false, now);

        let call = &self.calls[&cid];
        let rem = &call.legs[remaining];
        let caller = normalize(&self.plan.to_teams(&rem.party), dest, &*self.plan);
        let sdp = rem.remote_sdp.clone();
        let callee = target_e164.as_deref().map(|n| normalize(n, dest, &*self.plan)).unwrap_or_default();
        let target_uri = if teams_user && dest == Side::Teams {
            let mut u = refer_to.uri.clone();
            u.headers = None;
            let p = &self.cfg.teams_proxies[0];
            u.host = p.host.clone();
            u.port = Some(p.port);
            Some(u)
        } else {
            None
        };
        let mut carried = crate::sip::msg::Headers::new();
        if let Some(rb) = req.headers.get("Referred-By") {
            if let Some(v) = super::interwork::rewrite_identity(rb, dest, &*self.plan, &build::local_host(&self.cfg, dest)) {
                carried.push("Referred-By", v);
            }
        }
        // The target gets its own media session with the remaining party; the remaining
        // party's last SDP is the offer made to the target.
        let c_idx = call.legs.len();
        if self.media.is_some() {
            if self.bind_next_media(cid, remaining, c_idx, dest).is_err() {
                self.transfer_failed(cid, 503, now);
                return;
            }
            if let (Some(c), Ok(offer)) = (self.calls.get_mut(&cid), Sdp::parse(sdp.clone())) {
                c.legs[remaining].offer_in = Some(offer);
            }
        }
        let new_leg = self.open_leg(cid, dest, &caller, None, &callee, target_uri, sdp, Some(remaining), &crate::sip::msg::Headers::new(), Side::Teams, now);
        if new_leg.is_none() {
            self.transfer_failed(cid, 488, now);
            return;
        }
        if let (Some(nl), Some(c)) = (new_leg, self.calls.get_mut(&cid)) {
            if let Some(r) = c.refer.as_mut() {
                r.target_leg = Some(nl);
            }
            // Referred-By toward the target, rewritten for its side.
            let _ = carried;
            if let Some(t) = self.cfg.ring_timeout {
                self.arm(cid, now + t, CallTimer::TargetRing(nl));
            }
        }
    }

    fn notify_sipfrag(&mut self, cid: CallId, lid: LegId, frag: &str, terminated: bool, now: Instant) {
        let Some((mut req, hop)) = self.dialog_request(cid, lid, Method::Notify) else { return };
        req.headers.push("Event", "refer");
        req.headers.push(
            "Subscription-State",
            if terminated { "terminated;reason=noresource".to_string() } else { "active;expires=60".to_string() },
        );
        req.headers.push("Content-Type", "message/sipfrag;version=2.0");
        req.body = Bytes::from(crate::fmt64!("{frag}\r\n"));
        self.send_in_dialog(cid, req, hop, Purpose::Notify, now);
    }

    /// The transfer target answered: report it to the transferor (NOTIFY 200, its leg ends)
    /// and connect the remaining party to the target with a re-INVITE.
    fn transfer_target_answered(&mut self, cid: CallId, new_leg: LegId, resp: &Response, now: Instant) {
        let Some(call) = self.calls.get_mut(&cid) else { return };
        let Some(refer) = call.refer.take() else { return };
        let Some(remaining) = Self::other_leg(call, refer.transferor) else { return };
        call.pair = (remaining, new_leg);
        self.notify_sipfrag(cid, refer.transferor, "SIP/2.0 200 OK", true, now);
        self.bye_leg(cid, refer.transferor, now);
        tracing::info!(call = cid, target = %refer.target, "transfer answered; reconnecting the remaining party");
        let transferor = self.calls.get(&cid).map(|c| self.plan.to_teams(&c.legs[refer.transferor].party)).unwrap_or_default();
        self.events.push_back(CallEvent::Transferred { call: cid, target: refer.target, transferor });
        let sdp = match self.media_answer(cid, new_leg, remaining, &resp.body) {
            Ok(b) => b,
            Err(code) => {
                self.end_call(cid, None, EndReason::Rejected(code), now);
                return;
            }
        };
        self.switch_media(cid);
        self.send_reconnect(cid, remaining, new_leg, sdp, None, now);
    }

    /// A re-INVITE to the remaining party `to_leg` with the SDP of the leg that takes over
    /// (transfer target, or the INVITE with Replaces answered on `answer`).
    fn send_reconnect(&mut self, cid: CallId, to_leg: LegId, new_leg: LegId, sdp: Bytes, answer: Option<(ServerTxnId, Request)>, now: Instant) {
        let Some((mut req, hop)) = self.dialog_request(cid, to_leg, Method::Invite) else { return };
        req.headers.push("Supported", build::SUPPORTED);
        if !sdp.is_empty() {
            req.headers.push("Content-Type", "application/sdp");
            req.body = sdp;
        }
        if let Some(c) = self.calls.get_mut(&cid) {
            c.legs[to_leg].offer_pending = true;
        }
        self.send_in_dialog(cid, req, hop, Purpose::Reconnect { to_leg, new_leg, answer: answer.map(Box::new) }, now);
    }

    fn reconnect_response(&mut self, cid: CallId, to_leg: LegId, new_leg: LegId, answer: Option<(ServerTxnId, Request)>, resp: Response, now: Instant) {
        if resp.status < 200 {
            return;
        }
        if let Some(c) = self.calls.get_mut(&cid) {
            c.legs[to_leg].offer_pending = false;
        }
        let Some(call) = self.calls.get(&cid) else { return };
        if resp.is_success() && call.legs[to_leg].last_ack.is_some() && call.pair == (to_leg, new_leg) && answer.is_some() {
            // Retransmitted 2xx.
            if let Some(data) = call.legs[to_leg].last_ack.clone() {
                let hop = call.legs[to_leg].hop.clone();
                self.out.push_back(Transmit { hop, data });
            }
            return;
        }
        if !resp.is_success() {
            match answer {
                Some((stx, req)) => {
                    self.respond(stx, &req, resp.status.max(400), Side::Teams, now);
                    if let Some(c) = self.calls.get_mut(&cid) {
                        c.legs[new_leg].ended = true;
                    }
                }
                None => {
                    // The remaining party refused the new media: the call cannot go on.
                    self.end_call(cid, None, EndReason::Rejected(resp.status), now);
                }
            }
            return;
        }
        let old = match &answer {
            Some(_) => Self::other_leg(call, to_leg),
            None => call.refer.as_ref().map(|r| r.transferor),
        };
        if !resp.body.is_empty() {
            if let Some(c) = self.calls.get_mut(&cid) {
                c.legs[to_leg].remote_sdp = resp.body.clone();
            }
        }
        let answer_body = match &answer {
            // INVITE with Replaces: the remaining party's answer goes to the new leg.
            Some(_) => match self.media_answer(cid, to_leg, new_leg, &resp.body) {
                Ok(b) => Some(b),
                Err(code) => {
                    self.send_ack(cid, to_leg, &resp, None);
                    if let Some((stx, req)) = answer {
                        self.respond(stx, &req, code, Side::Teams, now);
                    }
                    return;
                }
            },
            None => {
                self.media_learn(cid, to_leg, &resp.body);
                None
            }
        };
        self.switch_media(cid);
        self.send_ack(cid, to_leg, &resp, None);
        if let Some(c) = self.calls.get_mut(&cid) {
            c.pair = (to_leg, new_leg);
        }
        match answer {
            Some((stx, req)) => {
                // INVITE with Replaces: answer the new leg with the remaining party's SDP.
                let call = &self.calls[&cid];
                let mut r = self.relayed_response(call, new_leg, &req, &resp);
                if let Some(b) = answer_body {
                    r.body = b;
                }
                self.answer_session_timer(cid, new_leg, &req, &mut r, now);
                if let Some(c) = self.calls.get_mut(&cid) {
                    c.open_stx.retain(|(s, _)| *s != stx);
                }
                self.retransmit_2xx(cid, new_leg, &r, now);
                let _ = self.txns.send_response(stx, &r, now);
                let (mut target, mut transferor) = (String::new(), String::new());
                if let Some(c) = self.calls.get(&cid) {
                    target = self.plan.to_teams(&c.legs[new_leg].party);
                    transferor = old.map(|o| self.plan.to_teams(&c.legs[o].party)).unwrap_or_default();
                }
                if let Some(o) = old {
                    self.bye_leg(cid, o, now);
                }
                self.events.push_back(CallEvent::Transferred { call: cid, target, transferor });
            }
            None => tracing::info!(call = cid, "transfer completed"),
        }
    }

    fn transfer_failed(&mut self, cid: CallId, status: u16, now: Instant) {
        let Some(refer) = self.calls.get_mut(&cid).and_then(|c| c.refer.take()) else { return };
        let frag = crate::fmt64!("SIP/2.0 {} {}", status, crate::sip::msg::reason_phrase(status));
        tracing::info!(call = cid, status, "transfer failed");
        self.notify_sipfrag(cid, refer.transferor, &frag, true, now);
    }

    fn invite_with_replaces(&mut self, stx: ServerTxnId, req: Request, peer: Peer, side: Side, rep: &str, now: Instant) {
        let mut parts = rep.split(';');
        let call_id = parts.next().unwrap_or("").trim().to_string();
        let mut tags = Vec::new();
        for p in parts {
            if let Some((k, v)) = p.trim().split_once('=') {
                if k.eq_ignore_ascii_case("to-tag") || k.eq_ignore_ascii_case("from-tag") {
                    tags.push(v.trim().to_string());
                }
            }
        }
        let found = tags.iter().find_map(|t| self.dialog(&call_id, t));
        let Some((cid, old)) = found else {
            return self.respond(stx, &req, 481, side, now);
        };
        let Some(call) = self.calls.get(&cid) else { return self.respond(stx, &req, 481, side, now) };
        if call.state != CallState::Confirmed {
            return self.respond(stx, &req, 481, side, now);
        }
        let Some(remaining) = Self::other_leg(call, old) else { return self.respond(stx, &req, 481, side, now) };
        let mut trying = req.response(100, None);
        add_identity(&self.cfg, side, &mut trying.headers, false);
        let _ = self.txns.send_response(stx, &trying, now);
        let leg = self.uas_leg(&req, peer, side);
        let Some(call) = self.calls.get_mut(&cid) else { return };
        let new_leg = call.legs.len();
        self.dialogs.insert(&(&leg.call_id, &leg.local_tag), (cid, new_leg));
        call.legs.push(leg);
        call.open_stx.push((stx, req.clone()));
        tracing::info!(call = cid, "INVITE with Replaces: reconnecting");
        if let Err(code) = self.bind_next_media(cid, remaining, new_leg, side) {
            return self.respond(stx, &req, code, side, now);
        }
        let sdp = match self.media_offer(cid, new_leg, remaining, &req.body) {
            Ok(b) => b,
            Err(code) => return self.respond(stx, &req, code, side, now),
        };
        self.send_reconnect(cid, remaining, new_leg, sdp, Some((stx, req)), now);
    }
}

/// Status codes that must not cross as they are: redirects would expose the other side's
/// contacts, authentication challenges belong to the leg that asked.
fn map_status(status: u16) -> u16 {
    match status {
        300..=399 => 480,
        401 | 407 => 403,
        _ => status,
    }
}

/// True if an SDP body puts the call on hold (sendonly / inactive, or c=0.0.0.0).
/// An offer that puts the far end on hold: the first media section (or the session) is
/// sendonly or inactive, or its connection address is 0.0.0.0 (RFC 2543 style).
fn sdp_is_hold(body: &Bytes) -> bool {
    let Ok(sdp) = Sdp::parse(body.clone()) else { return false };
    matches!(sdp.media_direction(0), Direction::SendOnly | Direction::Inactive)
        || sdp.media_connection(0).is_some_and(|c| &*c.address == "0.0.0.0")
}

/// Call state is kept for 64*T1 after a call ends, at thousands of calls per second: a `Leg`
/// was 2,016 bytes and a `Request` 568 (DHAT: 4 KB per call in the legs' vector alone) until
/// the rarely set parts were boxed. These bounds keep them from growing back unnoticed.
#[cfg(test)]
mod size_bounds {
    #[test]
    fn call_state_stays_small() {
        use std::mem::size_of;
        assert!(size_of::<crate::sip::msg::Request>() <= 256, "Request: {} bytes", size_of::<crate::sip::msg::Request>());
        assert!(size_of::<super::Leg>() <= 768, "Leg: {} bytes", size_of::<super::Leg>());
        assert!(size_of::<super::Call>() <= 384, "Call: {} bytes", size_of::<super::Call>());
    }
}

/// Where in-dialog requests of a leg on `side` go: the PBX trunk, or the Teams proxy named by
/// the first route (else the remote target), else `fallback`.
fn dialog_hop(cfg: &CoreConfig, side: Side, route_set: &[String], target: &str, fallback: Hop) -> Hop {
    match side {
        Side::Pbx => Hop { peer: cfg.pbx, tls_name: None },
        Side::Teams => {
            let host = route_set
                .first()
                .and_then(|r| NameAddr::parse(r).ok())
                .map(|n| n.uri.host)
                .or_else(|| Uri::parse(target).ok().map(|u| u.host));
            if let Some(h) = host {
                if let Some(p) = cfg.teams_proxies.iter().find(|p| p.host.eq_ignore_ascii_case(&h)) {
                    return Hop { peer: Peer { proto: Proto::Tls, addr: p.addr }, tls_name: Some(Arc::from(p.host.as_str())) };
                }
            }
            fallback
        }
    }
}
