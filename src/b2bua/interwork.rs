//! Headers that carry meaning from one leg to the other, rebuilt for the receiving side:
//! identities with normalized numbers and our own host (topology hiding), Diversion (PBX,
//! RFC 5806) <-> History-Info (Teams, RFC 7044 with RFC 4458 `cause`), and a short list of
//! headers copied verbatim because they hold no topology.

use super::build::{number_of, number_of_uri, party_uri};
use super::{Dialplan, Side};
use crate::sip::msg::{Headers, NameAddr};

/// Headers copied as they are, when present (no addresses in them).
const COPIED: &[&str] = &["Content-Type", "Content-Disposition", "Subject", "Priority", "Privacy", "Reason", "Accept"];

/// Copies and rewrites what crosses from `src` (received from `from`) into `dst` (sent toward
/// `from.other()`). `host` is our host on the receiving side.
pub fn carry_headers(src: &Headers, dst: &mut Headers, from: Side, plan: &dyn Dialplan, host: &str) {
    let to = from.other();
    for name in COPIED {
        for v in src.get_all(name) {
            dst.push(name, v);
        }
    }
    for name in ["P-Asserted-Identity", "P-Preferred-Identity"] {
        for v in src.values(name) {
            if let Some(n) = rewrite_identity(v, to, plan, host) {
                dst.push(name, n);
            }
        }
    }
    match from {
        Side::Pbx => {
            let hi = diversion_to_history_info(&src.values("Diversion"), plan, host);
            for v in hi {
                dst.push("History-Info", v);
            }
        }
        Side::Teams => {
            for v in history_info_to_diversion(&src.values("History-Info"), plan, host) {
                dst.push("Diversion", v);
            }
        }
    }
}

pub fn normalize(number: &str, to: Side, plan: &dyn Dialplan) -> String {
    match to {
        Side::Teams => plan.to_teams(number),
        Side::Pbx => plan.to_pbx(number),
    }
}

/// A name-addr identity rewritten for side `to`: number normalized, host = ours, display kept.
pub fn rewrite_identity(value: &str, to: Side, plan: &dyn Dialplan, host: &str) -> Option<String> {
    let na = NameAddr::parse(value).ok()?;
    let num = number_of_uri(&na.uri)?;
    let mut out = NameAddr::new(party_uri(&normalize(&num, to, plan), host, to));
    out.display = na.display.clone();
    Some(out.to_string())
}

fn cause_to_reason(cause: u16) -> &'static str {
    match cause {
        302 => "unconditional",
        486 | 600 => "user-busy",
        408 | 480 | 487 => "no-answer",
        503 => "unavailable",
        404 => "unknown",
        _ => "unknown",
    }
}

fn reason_to_cause(reason: &str) -> u16 {
    match reason.to_ascii_lowercase().as_str() {
        "user-busy" => 486,
        "no-answer" => 408,
        "unavailable" => 503,
        "deflection" | "follow-me" => 480,
        "time-of-day" | "do-not-disturb" => 480,
        _ => 302,
    }
}

/// PBX Diversion (most recent first) -> Teams History-Info (chronological, indexed).
pub fn diversion_to_history_info(div: &[&str], plan: &dyn Dialplan, host: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut index = String::from("1");
    for d in div.iter().rev().take(8) {
        let Ok(na) = NameAddr::parse(d) else { continue };
        let Some(num) = number_of(d) else { continue };
        let cause = na.params.get("reason").map(reason_to_cause).unwrap_or(302);
        let uri = party_uri(&plan.to_teams(&num), host, Side::Teams);
        out.push(format!("<{uri}?Reason=SIP%3Bcause%3D{cause}>;index={index}"));
        index.push_str(".1");
    }
    out
}

/// Teams History-Info -> PBX Diversion (most recent first). An entry whose URI has a `cause`
/// parameter (RFC 4458) was reached by a diversion from the entry before it.
pub fn history_info_to_diversion(hi: &[&str], plan: &dyn Dialplan, host: &str) -> Vec<String> {
    let entries: Vec<NameAddr> = hi.iter().take(16).filter_map(|v| NameAddr::parse(v).ok()).collect();
    let mut out = Vec::new();
    for i in 1..entries.len() {
        let Some(cause) = entries[i].uri.params.get("cause").and_then(|c| c.parse::<u16>().ok()) else { continue };
        let Some(num) = super::build::number_of_uri(&entries[i - 1].uri) else { continue };
        let uri = party_uri(&plan.to_pbx(&num), host, Side::Pbx);
        out.push(format!("<{uri}>;reason={};counter=1", cause_to_reason(cause)));
    }
    out.reverse();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Plan;
    impl Dialplan for Plan {
        fn to_teams(&self, n: &str) -> String {
            if n.len() == 4 { format!("+468123{n}") } else { n.to_string() }
        }
        fn to_pbx(&self, n: &str) -> String {
            n.strip_prefix("+468123").unwrap_or(n).to_string()
        }
        fn route(&self, _: &str, from: Side) -> Side {
            from.other()
        }
    }

    #[test]
    fn diversion_becomes_history_info() {
        let hi = diversion_to_history_info(&["<sip:4711@10.0.0.5>;reason=no-answer;counter=1"], &Plan, "sbc.example.com");
        assert_eq!(hi, vec!["<sip:+4681234711@sbc.example.com;user=phone?Reason=SIP%3Bcause%3D408>;index=1"]);
    }

    #[test]
    fn history_info_becomes_diversion() {
        let d = history_info_to_diversion(
            &[
                "<sip:+4681234711@sip.pstnhub.microsoft.com;user=phone?Reason=SIP%3Bcause%3D302>;index=1",
                "<sip:+4681234712@sip.pstnhub.microsoft.com;user=phone;cause=486>;index=1.1;mp=1",
            ],
            &Plan,
            "127.0.0.1:5060",
        );
        assert_eq!(d, vec!["<sip:4711@127.0.0.1:5060>;reason=user-busy;counter=1"]);
    }

    #[test]
    fn identity_rewritten_without_foreign_host() {
        let v = rewrite_identity("\"Alice\" <sip:4711@10.1.1.1;user=phone>", Side::Teams, &Plan, "sbc.example.com").unwrap();
        assert_eq!(v, "\"Alice\" <sip:+4681234711@sbc.example.com;user=phone>");
    }
}
