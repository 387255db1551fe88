//! Number normalization: ordered regex -> replacement rules (first match wins, no match leaves
//! the number unchanged), applied to the user part of SIP/tel URIs and of name-addr header values,
//! and builders of the URIs each side expects.

use super::RoutingError;
use crate::config::{NumberRule, Numbers, TeamsProxy, Trunk};
use crate::sip::msg::{comma_parts, Headers, NameAddr, Params, Uri};
use regex::Regex;

/// One direction's rules (`[[numbers.to_teams]]` or `[[numbers.to_pbx]]`).
#[derive(Debug, Clone, Default)]
pub struct NumberRules {
    rules: Vec<(Regex, String)>,
}

impl NumberRules {
    pub fn new(rules: &[NumberRule]) -> NumberRules {
        NumberRules { rules: rules.iter().map(|r| (r.pattern.0.clone(), r.replace.clone())).collect() }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Applies the first rule whose pattern matches `number` (its first match is replaced,
    /// `$1`/`${name}` expand); no match returns `number` unchanged.
    pub fn apply(&self, number: &str) -> String {
        for (re, rep) in &self.rules {
            if re.is_match(number) {
                return re.replace(number, rep.as_str()).into_owned();
            }
        }
        number.to_string()
    }

    /// Normalizes the number in the user part of a `sip:`/`sips:` URI or the number of a `tel:`
    /// URI, keeping user parameters (`;phone-context=..`, `;isub=..`), host and URI parameters.
    /// A user part that is not a phone number (`anonymous`, `alice`) is left alone. Visual
    /// separators (`-`, `.`, `(`, `)`, space) are removed before the rules apply. Returns whether
    /// the URI changed.
    pub fn normalize_uri(&self, uri: &mut Uri) -> bool {
        let Some(user) = uri.user.as_deref() else { return false };
        let (num, rest) = match user.find(';') {
            Some(i) => (&user[..i], &user[i..]),
            None => (user, ""),
        };
        let Some(clean) = phone_number(num) else { return false };
        let new = self.apply(&clean);
        if new == num {
            return false;
        }
        uri.user = Some(format!("{new}{rest}"));
        true
    }

    /// [`normalize_uri`](Self::normalize_uri) on a URI written as text; `None` if unparseable.
    pub fn normalize_uri_str(&self, uri: &str) -> Option<String> {
        let mut u = Uri::parse(uri).ok()?;
        self.normalize_uri(&mut u);
        Some(u.to_string())
    }

    /// Normalizes the URI number of one name-addr header value (From, To, P-Asserted-Identity,
    /// Diversion, History-Info entry, Refer-To), keeping display name, tag and other parameters.
    pub fn normalize_name_addr(&self, value: &str) -> Result<String, RoutingError> {
        let mut na = NameAddr::parse(value).map_err(|_| RoutingError::BadHeader(truncate(value)))?;
        self.normalize_uri(&mut na.uri);
        Ok(na.to_string())
    }

    /// Normalizes every value of every `name` header line (comma lists such as History-Info and
    /// Diversion included). Values that do not parse are kept as they are. If anything changed,
    /// the lines are replaced by one comma-joined line in the place of the first. Returns how
    /// many values changed.
    pub fn normalize_header(&self, headers: &mut Headers, name: &str) -> usize {
        let mut changed = 0;
        let mut out = Vec::new();
        for line in headers.get_all(name) {
            for v in comma_parts(line) {
                match NameAddr::parse(v) {
                    Ok(mut na) => {
                        if self.normalize_uri(&mut na.uri) {
                            changed += 1;
                            out.push(na.to_string());
                        } else {
                            out.push(v.to_string());
                        }
                    }
                    Err(_) => out.push(v.to_string()),
                }
            }
        }
        if changed > 0 {
            headers.set(name, out.join(", "));
        }
        changed
    }
}

/// Both directions' rules.
#[derive(Debug, Clone, Default)]
pub struct NumberPlan {
    pub to_teams: NumberRules,
    pub to_pbx: NumberRules,
}

impl NumberPlan {
    pub fn new(numbers: &Numbers) -> NumberPlan {
        NumberPlan { to_teams: NumberRules::new(&numbers.to_teams), to_pbx: NumberRules::new(&numbers.to_pbx) }
    }
    /// The rules for numbers going toward `trunk`.
    pub fn toward(&self, trunk: Trunk) -> &NumberRules {
        match trunk {
            Trunk::Teams => &self.to_teams,
            Trunk::Pbx => &self.to_pbx,
        }
    }
}

/// The dialable form of a user part: digits with an optional leading `+` (also `*` and `#`
/// for feature codes), visual separators removed. `None` if it is not a phone number.
pub fn phone_number(user: &str) -> Option<String> {
    let mut out = String::with_capacity(user.len());
    let mut digits = 0;
    for (i, c) in user.chars().enumerate() {
        match c {
            '0'..='9' => {
                digits += 1;
                out.push(c);
            }
            '+' if i == 0 => out.push(c),
            '*' | '#' => out.push(c),
            '-' | '.' | '(' | ')' | ' ' => {}
            _ => return None,
        }
    }
    (digits > 0).then_some(out)
}

/// `+` followed by 1 to 15 digits (ITU-T E.164).
pub fn is_e164(number: &str) -> bool {
    number.strip_prefix('+').is_some_and(|d| (1..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()))
}

/// The URI form Teams expects for a number: `sip:+E164@host;user=phone` (no port: the proxy is
/// reached over the TLS connection, the host only names it). Errors if `e164` is not E.164.
pub fn teams_uri(e164: &str, host: &str) -> Result<Uri, RoutingError> {
    if !is_e164(e164) {
        return Err(RoutingError::NotE164(truncate(e164)));
    }
    let mut u = Uri::sip(Some(e164), host, None);
    u.params.set("user", Some("phone"));
    Ok(u)
}

/// Request-URI of an INVITE (or REFER-triggered INVITE) toward a Teams proxy:
/// `number` is normalized with `to_teams` and must then be E.164;
/// result `sip:+E164@<proxy host>;user=phone`.
pub fn teams_request_uri(number: &str, to_teams: &NumberRules, proxy: &TeamsProxy) -> Result<Uri, RoutingError> {
    let n = phone_number(number).ok_or_else(|| RoutingError::NotE164(truncate(number)))?;
    teams_uri(&to_teams.apply(&n), &proxy.host)
}

/// A From / To / P-Asserted-Identity value toward Teams: the number normalized with `to_teams`;
/// if it is then E.164 the URI becomes `sip:+E164@host;user=phone` (`host`: the SBC FQDN for
/// From/P-Asserted-Identity, the proxy host for To), otherwise (`anonymous`, a name) the user is
/// kept with `host` unless the host is `anonymous.invalid`. PBX-side URI parameters (transport,
/// maddr, ports) are dropped; display name and header parameters (tag) are kept.
pub fn teams_party(party: &NameAddr, to_teams: &NumberRules, host: &str) -> NameAddr {
    rebuild_party(party, to_teams, host, None, Trunk::Teams)
}

/// A From / To / P-Asserted-Identity value toward the PBX: number normalized with `to_pbx`,
/// URI `sip:<number>@<domain>[:port]` (`;user=phone` when the result starts with `+`),
/// display name and header parameters kept.
pub fn pbx_party(party: &NameAddr, to_pbx: &NumberRules, domain: &str, port: Option<u16>) -> NameAddr {
    rebuild_party(party, to_pbx, domain, port, Trunk::Pbx)
}

/// Request-URI toward the PBX: `sip:<number normalized with to_pbx>@<domain>[:port]`.
pub fn pbx_request_uri(number: &str, to_pbx: &NumberRules, domain: &str, port: Option<u16>) -> Uri {
    let n = phone_number(number).map(|n| to_pbx.apply(&n)).unwrap_or_else(|| number.to_string());
    let mut u = Uri::sip(Some(&n), domain, port);
    if n.starts_with('+') {
        u.params.set("user", Some("phone"));
    }
    u
}

fn rebuild_party(party: &NameAddr, rules: &NumberRules, host: &str, port: Option<u16>, toward: Trunk) -> NameAddr {
    let mut out = party.clone();
    if party.uri.host.eq_ignore_ascii_case("anonymous.invalid") {
        return out;
    }
    let mut uri = party.uri.clone();
    rules.normalize_uri(&mut uri);
    let user = uri.user.clone();
    let number = user.as_deref().and_then(|u| phone_number(u.split(';').next().unwrap_or(u)));
    let mut new = Uri::sip(user.as_deref(), host, port);
    new.params = Params::default();
    match (toward, number) {
        (Trunk::Teams, Some(n)) if is_e164(&n) => new = teams_uri(&n, host).unwrap_or(new),
        (Trunk::Pbx, Some(n)) if n.starts_with('+') => new.params.set("user", Some("phone")),
        _ => {}
    }
    out.uri = new;
    out
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Pattern;

    fn rules(list: &[(&str, &str)]) -> NumberRules {
        let r: Vec<NumberRule> = list.iter().map(|(m, r)| NumberRule { pattern: Pattern::new(m).unwrap(), replace: r.to_string() }).collect();
        NumberRules::new(&r)
    }

    fn mx_one_to_teams() -> NumberRules {
        rules(&[(r"^(47\d\d)$", "+468123$1"), (r"^00(\d+)$", "+$1"), (r"^0(\d+)$", "+46$1")])
    }

    fn to_pbx() -> NumberRules {
        rules(&[(r"^\+468123(47\d\d)$", "$1"), (r"^\+46(\d+)$", "0$1"), (r"^\+(\d+)$", "00$1")])
    }

    #[test]
    fn first_match_wins_and_no_match_is_unchanged() {
        let r = mx_one_to_teams();
        assert_eq!(r.apply("4711"), "+4681234711");
        assert_eq!(r.apply("0046701234567"), "+46701234567");
        assert_eq!(r.apply("0701234567"), "+46701234567");
        assert_eq!(r.apply("+4470000000"), "+4470000000");
        assert_eq!(r.apply("123"), "123");
        let p = to_pbx();
        assert_eq!(p.apply("+4681234711"), "4711");
        assert_eq!(p.apply("+46701234567"), "0701234567");
        assert_eq!(p.apply("+4420000000"), "004420000000");
        assert!(NumberRules::default().is_empty());
        assert_eq!(NumberRules::default().apply("4711"), "4711");
    }

    #[test]
    fn phone_numbers() {
        assert_eq!(phone_number("+46 (8) 123-47.11").as_deref(), Some("+4681234711"));
        assert_eq!(phone_number("*21#").as_deref(), Some("*21#"));
        assert_eq!(phone_number("anonymous"), None);
        assert_eq!(phone_number("4+7"), None);
        assert_eq!(phone_number("+"), None);
        assert!(is_e164("+4681234711"));
        assert!(!is_e164("4681234711"));
        assert!(!is_e164("+1234567890123456"));
        assert!(!is_e164("+"));
    }

    #[test]
    fn uris() {
        let r = mx_one_to_teams();
        let mut u = Uri::parse("sip:4711;phone-context=pbx@10.0.0.5:5060;transport=tcp").unwrap();
        assert!(r.normalize_uri(&mut u));
        assert_eq!(u.to_string(), "sip:+4681234711;phone-context=pbx@10.0.0.5:5060;transport=tcp");
        let mut t = Uri::parse("tel:0701234567;phone-context=+46").unwrap();
        assert!(r.normalize_uri(&mut t));
        assert_eq!(t.to_string(), "tel:+46701234567;phone-context=+46");
        let mut a = Uri::parse("sip:anonymous@anonymous.invalid").unwrap();
        assert!(!r.normalize_uri(&mut a));
        let mut n = Uri::parse("sip:10.0.0.5").unwrap();
        assert!(!r.normalize_uri(&mut n));
        assert_eq!(r.normalize_uri_str("sip:47-11@pbx").as_deref(), Some("sip:+4681234711@pbx"));
        assert_eq!(r.normalize_uri_str("not a uri"), None);
    }

    #[test]
    fn name_addrs_keep_display_and_params() {
        let r = mx_one_to_teams();
        assert_eq!(
            r.normalize_name_addr("\"Alice, A\" <sip:4711@10.0.0.5;user=phone>;tag=abc").unwrap(),
            "\"Alice, A\" <sip:+4681234711@10.0.0.5;user=phone>;tag=abc"
        );
        assert_eq!(r.normalize_name_addr("sip:4711@pbx;tag=x").unwrap(), "<sip:+4681234711@pbx>;tag=x");
        assert_eq!(
            r.normalize_name_addr("<sip:4712@pbx?Replaces=abc%40x%3Bto-tag%3D1%3Bfrom-tag%3D2>").unwrap(),
            "<sip:+4681234712@pbx?Replaces=abc%40x%3Bto-tag%3D1%3Bfrom-tag%3D2>"
        );
        assert!(matches!(r.normalize_name_addr("<>"), Err(RoutingError::BadHeader(_))));
    }

    #[test]
    fn header_lists() {
        let p = to_pbx();
        let mut h = Headers::new();
        h.push("History-Info", "<sip:+4681234711@sip.pstnhub.microsoft.com?Reason=SIP%3Bcause%3D302>;index=1");
        h.push("History-Info", "<sip:+46701234567@sip.pstnhub.microsoft.com>;index=1.1, <sip:alice@x>;index=1.2");
        h.push("Diversion", "<sip:+4681234712@sip.pstnhub.microsoft.com>;reason=unconditional;counter=1");
        h.push("P-Asserted-Identity", "garbage<");
        assert_eq!(p.normalize_header(&mut h, "History-Info"), 2);
        assert_eq!(
            h.get_all("History-Info").collect::<Vec<_>>(),
            vec!["<sip:4711@sip.pstnhub.microsoft.com?Reason=SIP%3Bcause%3D302>;index=1, <sip:0701234567@sip.pstnhub.microsoft.com>;index=1.1, <sip:alice@x>;index=1.2"]
        );
        assert_eq!(p.normalize_header(&mut h, "Diversion"), 1);
        assert_eq!(h.get("Diversion"), Some("<sip:4712@sip.pstnhub.microsoft.com>;reason=unconditional;counter=1"));
        assert_eq!(p.normalize_header(&mut h, "P-Asserted-Identity"), 0);
        assert_eq!(h.get("P-Asserted-Identity"), Some("garbage<"));
        assert_eq!(p.normalize_header(&mut h, "Refer-To"), 0);
    }

    #[test]
    fn toward_teams() {
        let r = mx_one_to_teams();
        let proxy = TeamsProxy { host: "sip2.pstnhub.microsoft.com".into(), port: 5061, address: None };
        assert_eq!(teams_request_uri("0701234567", &r, &proxy).unwrap().to_string(), "sip:+46701234567@sip2.pstnhub.microsoft.com;user=phone");
        assert!(matches!(teams_request_uri("123", &r, &proxy), Err(RoutingError::NotE164(_))));
        assert!(matches!(teams_request_uri("alice", &r, &proxy), Err(RoutingError::NotE164(_))));
        let from = NameAddr::parse("\"Bob\" <sip:4711@10.0.0.5:5060;transport=udp>;tag=f1").unwrap();
        assert_eq!(teams_party(&from, &r, "sbc.contoso.com").to_string(), "\"Bob\" <sip:+4681234711@sbc.contoso.com;user=phone>;tag=f1");
        let anon = NameAddr::parse("\"Anonymous\" <sip:anonymous@anonymous.invalid>;tag=a").unwrap();
        assert_eq!(teams_party(&anon, &r, "sbc.contoso.com"), anon);
        let name = NameAddr::parse("<sip:operator@10.0.0.5>").unwrap();
        assert_eq!(teams_party(&name, &r, "sbc.contoso.com").to_string(), "<sip:operator@sbc.contoso.com>");
    }

    #[test]
    fn toward_pbx() {
        let p = to_pbx();
        let to = NameAddr::parse("<sip:+4681234711@sbc.contoso.com;user=phone>").unwrap();
        assert_eq!(pbx_party(&to, &p, "10.0.0.5", Some(5060)).to_string(), "<sip:4711@10.0.0.5:5060>");
        let unknown = NameAddr::parse("<sip:+4470000000@sbc.contoso.com;user=phone>;tag=1").unwrap();
        let plan = NumberPlan { to_teams: NumberRules::default(), to_pbx: NumberRules::default() };
        assert_eq!(pbx_party(&unknown, plan.toward(Trunk::Pbx), "mx1.local", None).to_string(), "<sip:+4470000000@mx1.local;user=phone>;tag=1");
        assert_eq!(pbx_request_uri("+4681234711", &p, "10.0.0.5", None).to_string(), "sip:4711@10.0.0.5");
        assert_eq!(pbx_request_uri("+4420000000", &NumberRules::default(), "10.0.0.5", Some(5080)).to_string(), "sip:+4420000000@10.0.0.5:5080;user=phone");
    }
}
