//! How drbridge writes itself into messages on each side: Via, Contact, Allow, Supported,
//! User-Agent / X-MS-SBC. Toward Teams every self-reference is the SBC FQDN, never an IP
//! (Microsoft rejects an IP in Contact with 403); toward the PBX it is drbridge's trunk address.

use super::{CoreConfig, Side};
use crate::sip::msg::{Headers, NameAddr, SipStr, Uri};
use crate::sip::transport::Proto;

/// Methods drbridge accepts toward Teams. REFER is listed so Microsoft sends transfers to the
/// SBC instead of handling them itself; NOTIFY and UPDATE are required for it and for session
/// timers (see REFERENCE.md, field complaints about SBCs missing them).
pub const ALLOW_TEAMS: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, REFER, NOTIFY, UPDATE, PRACK";
pub const ALLOW_PBX: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO, NOTIFY";
/// 100rel is not offered: provisional responses are relayed unreliably, so PRACK never has to
/// cross the B2BUA; `timer` is RFC 4028, `replaces` RFC 3891.
pub const SUPPORTED: &str = "timer, replaces";

/// drbridge's self-references on each side, written once per configuration instead of
/// formatted for every message (they were ~3 % of the instructions per call).
#[derive(Clone, Debug)]
pub struct Written {
    /// `SIP/2.0/TLS fqdn:port;branch=` / `SIP/2.0/UDP addr;branch=`.
    via_teams: String,
    via_pbx: String,
    host_teams: String,
    host_pbx: String,
    /// A Contact after `<sip:` and the user part: `fqdn:port;transport=tls>` / `addr>`.
    contact_teams: String,
    contact_pbx: String,
    allow_teams: SipStr,
    allow_pbx: SipStr,
    x_ms_sbc: SipStr,
    user_agent: SipStr,
}

fn written(cfg: &CoreConfig) -> &Written {
    cfg.written.get_or_init(|| {
        let host_teams = format!("{}:{}", cfg.fqdn, cfg.teams_contact_port);
        let host_pbx = cfg.pbx_local.to_string();
        Written {
            via_teams: format!("SIP/2.0/TLS {host_teams};branch="),
            via_pbx: format!("SIP/2.0/{} {host_pbx};branch=", cfg.pbx.proto.as_str()),
            contact_teams: format!("{host_teams};transport=tls>"),
            contact_pbx: match cfg.pbx.proto {
                Proto::Udp => format!("{host_pbx}>"),
                p => format!("{host_pbx};transport={}>", p.as_str().to_ascii_lowercase()),
            },
            host_teams,
            host_pbx,
            allow_teams: SipStr::from_static(ALLOW_TEAMS),
            allow_pbx: SipStr::from_static(ALLOW_PBX),
            x_ms_sbc: SipStr::from(format!("{}/drbridge/{}", cfg.user_agent, env!("CARGO_PKG_VERSION"))),
            user_agent: SipStr::from(format!("{}/{}", cfg.user_agent, env!("CARGO_PKG_VERSION"))),
        }
    })
}

/// `parts` joined into a `String` of exactly their length.
fn concat(parts: &[&str]) -> String {
    let mut s = String::with_capacity(parts.iter().map(|p| p.len()).sum());
    parts.iter().for_each(|p| s.push_str(p));
    s
}

pub fn via(cfg: &CoreConfig, side: Side, branch: &str) -> String {
    let w = written(cfg);
    match side {
        Side::Teams => concat(&[&w.via_teams, branch]),
        Side::Pbx => concat(&[&w.via_pbx, branch, ";rport"]),
    }
}

/// Our host:port as written in URIs on a side.
pub fn local_host(cfg: &CoreConfig, side: Side) -> String {
    let w = written(cfg);
    match side {
        Side::Teams => w.host_teams.clone(),
        Side::Pbx => w.host_pbx.clone(),
    }
}

pub fn contact(cfg: &CoreConfig, side: Side, user: Option<&str>) -> String {
    let w = written(cfg);
    let rest = match side {
        Side::Teams => &w.contact_teams,
        Side::Pbx => &w.contact_pbx,
    };
    match user {
        Some(u) => concat(&["<sip:", u, "@", rest]),
        None => concat(&["<sip:", rest]),
    }
}

/// Headers drbridge puts in every request and response it writes on a side.
pub fn add_identity(cfg: &CoreConfig, side: Side, h: &mut Headers, is_request: bool) {
    let w = written(cfg);
    match side {
        Side::Teams => {
            h.set("Allow", w.allow_teams.clone());
            h.set("X-MS-SBC", w.x_ms_sbc.clone());
        }
        Side::Pbx => h.set("Allow", w.allow_pbx.clone()),
    }
    h.set(if is_request { "User-Agent" } else { "Server" }, w.user_agent.clone());
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
