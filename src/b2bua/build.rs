//! How drbridge writes itself into messages on each side: Via, Contact, Allow, Supported,
//! User-Agent / X-MS-SBC. Toward Teams every self-reference is the SBC FQDN, never an IP
//! (Microsoft rejects an IP in Contact with 403); toward the PBX it is drbridge's trunk address.

use super::{CoreConfig, Side};
use crate::sip::msg::{Headers, NameAddr, Uri};
use crate::sip::transport::Proto;

/// Methods drbridge accepts toward Teams. REFER is listed so Microsoft sends transfers to the
/// SBC instead of handling them itself; NOTIFY and UPDATE are required for it and for session
/// timers (see REFERENCE.md, field complaints about SBCs missing them).
pub const ALLOW_TEAMS: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, REFER, NOTIFY, UPDATE, PRACK";
pub const ALLOW_PBX: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO, NOTIFY";
/// 100rel is not offered: provisional responses are relayed unreliably, so PRACK never has to
/// cross the B2BUA; `timer` is RFC 4028, `replaces` RFC 3891.
pub const SUPPORTED: &str = "timer, replaces";

pub fn via(cfg: &CoreConfig, side: Side, branch: &str) -> String {
    match side {
        Side::Teams => crate::fmt64!("SIP/2.0/TLS {}:{};branch={}", cfg.fqdn, cfg.teams_contact_port, branch),
        Side::Pbx => crate::fmt64!(
            "SIP/2.0/{} {};branch={};rport",
            cfg.pbx.proto.as_str(),
            cfg.pbx_local,
            branch
        ),
    }
}

/// Our host:port as written in URIs on a side.
pub fn local_host(cfg: &CoreConfig, side: Side) -> String {
    match side {
        Side::Teams => crate::fmt64!("{}:{}", cfg.fqdn, cfg.teams_contact_port),
        Side::Pbx => cfg.pbx_local.to_string(),
    }
}

pub fn contact(cfg: &CoreConfig, side: Side, user: Option<&str>) -> String {
    let user = user.map(|u| crate::fmt64!("{u}@")).unwrap_or_default();
    match side {
        Side::Teams => crate::fmt64!("<sip:{user}{}:{};transport=tls>", cfg.fqdn, cfg.teams_contact_port),
        Side::Pbx => match cfg.pbx.proto {
            Proto::Udp => crate::fmt64!("<sip:{user}{}>", cfg.pbx_local),
            p => crate::fmt64!("<sip:{user}{};transport={}>", cfg.pbx_local, p.as_str().to_ascii_lowercase()),
        },
    }
}

/// Headers drbridge puts in every request and response it writes on a side.
pub fn add_identity(cfg: &CoreConfig, side: Side, h: &mut Headers, is_request: bool) {
    match side {
        Side::Teams => {
            h.set("Allow", ALLOW_TEAMS);
            h.set("X-MS-SBC", crate::fmt64!("{}/drbridge/{}", cfg.user_agent, env!("CARGO_PKG_VERSION")));
        }
        Side::Pbx => h.set("Allow", ALLOW_PBX),
    }
    let ua = crate::fmt64!("{}/{}", cfg.user_agent, env!("CARGO_PKG_VERSION"));
    if is_request {
        h.set("User-Agent", ua);
    } else {
        h.set("Server", ua);
    }
}

/// The URI of a party (caller or callee) as written on a side: toward Teams
/// `sip:+E164@host;user=phone`, toward the PBX `sip:number@pbx_domain` (or our own host for
/// From).
pub fn party_uri(number: &str, host: &str, side: Side) -> Uri {
    let mut u = Uri::sip(Some(number), host, None);
    if let Some((h, p)) = host.rsplit_once(':') {
        if let Ok(port) = p.parse() {
            if !h.contains(':') || h.ends_with(']') {
                u.host = h.to_string();
                u.port = Some(port);
            }
        }
    }
    if side == Side::Teams && number.starts_with('+') {
        u.params.set("user", Some("phone"));
    }
    u
}

/// The number in a name-addr/URI header value: the user part without parameters, or the
/// telephone-subscriber of a tel: URI. Visual separators are removed.
pub fn number_of(value: &str) -> Option<String> {
    let na = NameAddr::parse(value).ok()?;
    number_of_uri(&na.uri)
}

pub fn number_of_uri(uri: &Uri) -> Option<String> {
    let user = uri.user.as_deref()?;
    let user = user.split(';').next().unwrap_or(user);
    let n: String = user.chars().filter(|c| !matches!(c, '-' | '.' | '(' | ')' | ' ')).collect();
    if n.is_empty() {
        None
    } else {
        Some(n)
    }
}

pub fn new_tag() -> String {
    use rand::Rng;
    let mut r = rand::rng();
    crate::fmt64!("{:016x}", r.random::<u64>())
}
