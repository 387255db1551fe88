//! Header names (case-insensitive, compact forms) and the ordered header list.

use super::text::{comma_parts, is_token, is_token_str, SipStr};
use super::uri::{NameAddr, Via};
use std::sync::{Arc, OnceLock};

/// Compact form (RFC 3261 7.3.3 and extensions) -> full name.
const COMPACT: &[(u8, &str)] = &[
    (b'a', "Accept-Contact"),
    (b'b', "Referred-By"),
    (b'c', "Content-Type"),
    (b'd', "Request-Disposition"),
    (b'e', "Content-Encoding"),
    (b'f', "From"),
    (b'i', "Call-ID"),
    (b'j', "Reject-Contact"),
    (b'k', "Supported"),
    (b'l', "Content-Length"),
    (b'm', "Contact"),
    (b'n', "Identity-Info"),
    (b'o', "Event"),
    (b'r', "Refer-To"),
    (b's', "Subject"),
    (b't', "To"),
    (b'u', "Allow-Events"),
    (b'v', "Via"),
    (b'x', "Session-Expires"),
    (b'y', "Identity"),
];

/// Names written with a canonical spelling (for well-known headers), sorted ignoring case
/// (`canonical_name` looks them up by length, `BY_LENGTH`).
const CANONICAL: &[&str] = &[
    "Accept", "Accept-Contact", "Accept-Encoding", "Accept-Language", "Alert-Info", "Allow",
    "Allow-Events", "Authentication-Info", "Authorization", "Call-ID", "Call-Info", "Contact",
    "Content-Disposition", "Content-Encoding", "Content-Language", "Content-Length",
    "Content-Type", "CSeq", "Date", "Diversion", "Error-Info", "Event", "Expires", "From",
    "History-Info", "Identity", "Identity-Info", "In-Reply-To", "Max-Forwards", "MIME-Version",
    "Min-Expires", "Min-SE", "Organization", "P-Asserted-Identity", "P-Preferred-Identity",
    "Priority", "Privacy", "Proxy-Authenticate", "Proxy-Authorization", "Proxy-Require", "RAck",
    "Reason", "Record-Route", "Refer-To", "Referred-By", "Reject-Contact", "Replaces", "Reply-To",
    "Request-Disposition", "Require", "Retry-After", "Route", "RSeq", "Server", "Session-Expires",
    "Subject", "Subscription-State", "Supported", "Timestamp", "To", "Unsupported", "User-Agent",
    "Via", "Warning", "WWW-Authenticate", "X-MS-SBC",
];

/// Returns the canonical spelling for a header name given in any case or compact form.
pub fn canonical_name(name: &str) -> Option<&'static str> {
    if name.len() == 1 {
        let c = name.as_bytes()[0].to_ascii_lowercase();
        if let Some((_, full)) = COMPACT.iter().find(|(k, _)| *k == c) {
            return Some(full);
        }
    }
    // Among the names of one length (seven at most): an exact match first, which nearly every
    // name is (SIPp, Teams, Mitel, every lookup and push of drbridge's own), then ignoring
    // case. This runs for every header line parsed and every lookup (`Wanted`): a search by
    // halves of the whole table cost ~700 instructions for a name outside a short list.
    let same_length = BY_LENGTH.get(name.len())?;
    let first = *name.as_bytes().first()?;
    same_length
        .iter()
        .copied()
        .find(|c| c.as_bytes()[0] == first && *c == name)
        .or_else(|| same_length.iter().copied().find(|c| c.eq_ignore_ascii_case(name)))
}

/// `CANONICAL` by name length.
static BY_LENGTH: std::sync::LazyLock<Vec<Vec<&'static str>>> = std::sync::LazyLock::new(|| {
    let mut by = vec![Vec::new(); CANONICAL.iter().map(|c| c.len()).max().unwrap_or(0) + 1];
    for c in CANONICAL {
        by[c.len()].push(*c);
    }
    by
});

/// A header name: canonical for known headers, as received otherwise. Comparison ignores case
/// and understands compact forms.
///
/// Every constructor goes through [`canonical_name`], so a known header's name is always
/// spelled exactly as `CANONICAL` spells it: a lookup by a known name compares bytes
/// ([`Wanted`]), and `match name.as_str() { "Via" => .. }` is a valid test for a known name.
#[derive(Clone, Debug)]
pub struct HeaderName(SipStr);

/// A name looked up: a compact form resolved once per lookup (stored names never are one:
/// they are canonical), then compared with each stored name, exactly first (a lookup by a
/// known name spells it as it is stored), ignoring case after.
#[derive(Clone, Copy)]
struct Wanted<'a>(&'a str);

impl<'a> Wanted<'a> {
    fn of(name: &'a str) -> Wanted<'a> {
        match name.len() {
            1 => Wanted(canonical_name(name).unwrap_or(name)),
            _ => Wanted(name),
        }
    }
    fn matches(self, h: &HeaderName) -> bool {
        let n = h.0.as_str();
        n.len() == self.0.len() && (n == self.0 || n.eq_ignore_ascii_case(self.0))
    }
}

impl HeaderName {
    pub fn new(name: SipStr) -> HeaderName {
        match canonical_name(&name) {
            Some(c) => HeaderName(SipStr::from_static(c)),
            None => HeaderName(name),
        }
    }
    /// The name of a parsed line: the static spelling of a known name, else a slice of the
    /// message (no copy of a name that is then thrown away).
    pub(crate) fn parsed(name: &str, whole: &SipStr) -> HeaderName {
        match canonical_name(name) {
            Some(c) => HeaderName(SipStr::from_static(c)),
            None => HeaderName(whole.slice_ref(name)),
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// True if this is `name` (any case, compact form accepted).
    pub fn is(&self, name: &str) -> bool {
        Wanted::of(name).matches(self)
    }
}

#[derive(Clone, Debug)]
pub struct Header {
    pub name: HeaderName,
    pub value: SipStr,
}

/// The ordered list of headers of a message. Order is preserved (it matters for Via, Route,
/// Record-Route); lookups are by name, case-insensitive, compact forms understood.
#[derive(Clone, Debug, Default)]
pub struct Headers {
    list: Vec<Header>,
    parsed: Parsed,
}

/// From, To and the top Via, parsed on first use and kept until the headers change. The
/// transaction layer reads the top Via of every message (the parser fills it while checking
/// it); From and To are checked by the parser without being built (`NameAddr::check`), their
/// tags read from the text (`tag_of`), and built here only when a new INVITE's caller is read
/// (callgrind: 31 name-addr parses per call, 11 % of all instructions, before this cache).
///
/// Behind an `Arc`, so that the cache adds 48 bytes to a message, not ~450 (messages and
/// requests kept in call state are moved by value), and a clone of the headers (a request
/// kept for CANCEL, ACK or a retransmission) shares what was parsed instead of copying it.
/// `OnceLock`, not `OnceCell`: a `OnceCell` would make every message `!Sync`, and the test peer
/// (like any user of the library) holds messages across awaits in spawned tasks.
#[derive(Clone, Debug, Default)]
struct Parsed {
    from: OnceLock<Option<Arc<NameAddr>>>,
    to: OnceLock<Option<Arc<NameAddr>>>,
    top_via: OnceLock<Option<Arc<Via>>>,
}

impl Headers {
    pub fn new() -> Headers {
        Headers::default()
    }
    pub fn with_capacity(n: usize) -> Headers {
        Headers { list: Vec::with_capacity(n), parsed: Parsed::default() }
    }
    /// The From header as a name-addr (`None` if absent or malformed).
    pub fn from_addr(&self) -> Option<&NameAddr> {
        self.parsed.from.get_or_init(|| self.get("From").and_then(|v| NameAddr::parse(v).ok()).map(Arc::new)).as_deref()
    }
    /// The To header as a name-addr (`None` if absent or malformed).
    pub fn to_addr(&self) -> Option<&NameAddr> {
        self.parsed.to.get_or_init(|| self.get("To").and_then(|v| NameAddr::parse(v).ok()).map(Arc::new)).as_deref()
    }
    /// The topmost Via value (first value of the first Via line), parsed.
    pub fn top_via(&self) -> Option<&Via> {
        self.parsed.top_via.get_or_init(|| self.get("Via").and_then(|l| comma_parts(l).next().and_then(|v| Via::parse(v).ok())).map(Arc::new)).as_deref()
    }
    /// Every change of the list forgets what was parsed from it.
    fn changed(&mut self) -> &mut Vec<Header> {
        self.parsed = Parsed::default();
        &mut self.list
    }
    pub fn len(&self) -> usize {
        self.list.len()
    }
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
    pub fn iter(&self) -> impl Iterator<Item = &Header> {
        self.list.iter()
    }
    /// Value of the first header line of that name.
    pub fn get(&self, name: &str) -> Option<&str> {
        let w = Wanted::of(name);
        self.list.iter().find(|h| w.matches(&h.name)).map(|h| h.value.as_str())
    }
    /// Every header line of that name, in order (not split at commas).
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        let w = Wanted::of(name);
        self.list.iter().filter(move |h| w.matches(&h.name)).map(|h| h.value.as_str())
    }
    /// Every value of that name: all lines, each split at top-level commas.
    /// Use only for headers whose grammar is a comma list (Via, Route, Record-Route, Contact,
    /// Allow, Supported, Require, History-Info, Diversion ...).
    pub fn values<'a>(&'a self, name: &'a str) -> Vec<&'a str> {
        self.get_all(name).flat_map(comma_parts).collect()
    }
    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
    /// True if a comma-list header of that name has `token` (case-insensitive), e.g. Supported: timer.
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.get_all(name).flat_map(comma_parts).any(|v| v.eq_ignore_ascii_case(token))
    }
    /// Appends a header line. Header injection is impossible by construction: CR and LF in
    /// `value` are replaced by a space, and a name keeps only token characters (any other
    /// character becomes `-`; an empty name becomes `X`). The same holds for every other
    /// method that adds or sets a header.
    pub fn push(&mut self, name: &str, value: impl Into<SipStr>) {
        self.changed().push(Header { name: header_name(name), value: sanitize_value(value.into()) });
    }
    pub fn push_header(&mut self, h: Header) {
        self.changed().push(sanitize_header(h));
    }
    /// Appends a line the parser checked: a token name, no CR or LF in the value.
    pub(crate) fn push_parsed(&mut self, h: Header) {
        debug_assert!(is_token_str(h.name.as_str()) && !super::text::has_line_end(h.value.as_bytes()));
        self.changed().push(h);
    }
    /// Inserts before every other header (for Via and Record-Route).
    pub fn push_front(&mut self, name: &str, value: impl Into<SipStr>) {
        self.changed().insert(0, Header { name: header_name(name), value: sanitize_value(value.into()) });
    }
    /// Inserts before the first header of the same name, or at the end if there is none.
    pub fn push_first_of_name(&mut self, name: &str, value: impl Into<SipStr>) {
        let h = Header { name: header_name(name), value: sanitize_value(value.into()) };
        let w = Wanted::of(name);
        match self.list.iter().position(|x| w.matches(&x.name)) {
            Some(i) => self.changed().insert(i, h),
            None => self.changed().push(h),
        }
    }
    /// Removes every line of that name; returns how many.
    pub fn remove(&mut self, name: &str) -> usize {
        let before = self.list.len();
        let w = Wanted::of(name);
        self.changed().retain(|h| !w.matches(&h.name));
        before - self.list.len()
    }
    /// Replaces every line of that name with one line (in the place of the first, or at the end).
    pub fn set(&mut self, name: &str, value: impl Into<SipStr>) {
        let value = sanitize_value(value.into());
        let w = Wanted::of(name);
        match self.list.iter().position(|h| w.matches(&h.name)) {
            Some(i) => {
                let list = self.changed();
                list[i].value = value;
                let mut n = 0;
                list.retain(|h| {
                    !w.matches(&h.name) || {
                        n += 1;
                        n == 1
                    }
                });
            }
            None => self.push(name, value),
        }
    }
    /// Removes the first value of a comma-list header (e.g. the top Via), whether it is a line of
    /// its own or the first of a comma-joined line. Returns it.
    pub fn pop_first_value(&mut self, name: &str) -> Option<String> {
        let w = Wanted::of(name);
        let i = self.list.iter().position(|h| w.matches(&h.name))?;
        let parts: Vec<String> = comma_parts(&self.list[i].value).map(String::from).collect();
        if parts.len() <= 1 {
            let h = self.changed().remove(i);
            return Some(h.value.to_string());
        }
        let first = parts[0].clone();
        self.changed()[i].value = SipStr::from(parts[1..].join(", "));
        Some(first)
    }
    pub fn retain(&mut self, mut f: impl FnMut(&Header) -> bool) {
        self.changed().retain(|h| f(h))
    }
}

/// CR and LF in a header value become a space (no header injection through a value).
pub(crate) fn sanitize_value(v: SipStr) -> SipStr {
    if super::text::has_line_end(v.as_bytes()) {
        SipStr::from(v.replace(['\r', '\n'], " "))
    } else {
        v
    }
}

/// A header name made of token characters only (others become `-`), never empty.
fn header_name(name: &str) -> HeaderName {
    let name = name.trim();
    // a known name (nearly every push) takes its static spelling: no copy of `name`
    if let Some(c) = canonical_name(name) {
        return HeaderName(SipStr::from_static(c));
    }
    if is_token_str(name) {
        return HeaderName(SipStr::from(name));
    }
    let clean: String = name.bytes().map(|b| if is_token(b) { b as char } else { '-' }).collect();
    HeaderName::new(SipStr::from(if clean.is_empty() { "X".to_string() } else { clean }))
}

fn sanitize_header(h: Header) -> Header {
    let name = if is_token_str(h.name.as_str()) { h.name } else { header_name(h.name.as_str()) };
    Header { name, value: sanitize_value(h.value) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The parsed From/To/top Via follow every change of the list, whichever method made it.
    #[test]
    fn parsed_cache_follows_changes() {
        let mut h = Headers::new();
        h.push("From", "<sip:a@x>;tag=1");
        h.push("Via", "SIP/2.0/UDP h1;branch=z9hG4bK1, SIP/2.0/UDP h2;branch=z9hG4bK2");
        assert_eq!(h.from_addr().and_then(|n| n.tag()), Some("1"));
        assert_eq!(h.top_via().map(|v| v.host.as_str()), Some("h1"));
        assert!(h.to_addr().is_none());
        h.set("From", "<sip:a@x>;tag=2");
        assert_eq!(h.from_addr().and_then(|n| n.tag()), Some("2"));
        h.push("To", "<sip:b@x>;tag=9");
        assert_eq!(h.to_addr().and_then(|n| n.tag()), Some("9"));
        assert_eq!(h.pop_first_value("Via").as_deref(), Some("SIP/2.0/UDP h1;branch=z9hG4bK1"));
        assert_eq!(h.top_via().map(|v| v.host.as_str()), Some("h2"));
        h.push_front("Via", "SIP/2.0/TLS h0;branch=z9hG4bK0");
        assert_eq!(h.top_via().map(|v| v.host.as_str()), Some("h0"));
        h.retain(|x| !x.name.is("To"));
        assert!(h.to_addr().is_none());
        h.remove("From");
        assert!(h.from_addr().is_none());
        h.push_first_of_name("From", "<sip:c@x>;tag=3");
        assert_eq!(h.from_addr().and_then(|n| n.tag()), Some("3"));
    }

    #[test]
    fn canonical_table_is_sorted_and_found() {
        // sorted and unique, ignoring case
        assert!(CANONICAL.windows(2).all(|w| w[0].to_ascii_lowercase() < w[1].to_ascii_lowercase()));
        for (_, full) in COMPACT {
            assert!(CANONICAL.contains(full), "{full}");
        }
        for c in CANONICAL {
            assert_eq!(canonical_name(c), Some(*c));
            assert_eq!(canonical_name(&c.to_ascii_lowercase()), Some(*c));
            assert_eq!(canonical_name(&c.to_ascii_uppercase()), Some(*c));
        }
        assert_eq!(canonical_name("X-Unknown"), None);
        assert_eq!(canonical_name(""), None);
        assert_eq!(canonical_name(&"v".repeat(200)), None);
        assert_eq!(canonical_name("i"), Some("Call-ID"));
    }

    #[test]
    fn compact_and_case() {
        let mut h = Headers::new();
        h.push("v", "SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/UDP b;branch=z9hG4bK2");
        h.push("VIA", "SIP/2.0/UDP c;branch=z9hG4bK3");
        h.push("i", "abc@x");
        assert_eq!(h.get("call-id"), Some("abc@x"));
        assert_eq!(h.values("Via").len(), 3);
        assert_eq!(h.pop_first_value("via").unwrap(), "SIP/2.0/UDP a;branch=z9hG4bK1");
        assert_eq!(h.values("Via").len(), 2);
        assert_eq!(h.iter().next().unwrap().name.as_str(), "Via");
    }

    #[test]
    fn no_header_injection() {
        let mut h = Headers::new();
        h.push("Subject", "hi\r\nVia: SIP/2.0/UDP evil");
        h.set("X-A", "a\nb\rc");
        h.push_front("Bad\r\nName: x", "v");
        h.push_first_of_name("Route", "<sip:a>\r\n\r\nbody");
        h.push_header(Header { name: HeaderName::new(SipStr::from("Y")), value: SipStr::from("1\r\n2") });
        h.push("", "empty name");
        for x in h.iter() {
            assert!(!x.value.contains(['\r', '\n']), "{x:?}");
            assert!(x.name.as_str().bytes().all(is_token), "{x:?}");
        }
        assert_eq!(h.get("Subject"), Some("hi  Via: SIP/2.0/UDP evil"));
        assert_eq!(h.get("X-A"), Some("a b c"));
        assert_eq!(h.get("Bad--Name--x"), Some("v"));
        assert_eq!(h.get("X"), Some("empty name"));
        assert_eq!(h.values("Via").len(), 0);
    }

    #[test]
    fn set_replaces_all() {
        let mut h = Headers::new();
        h.push("Contact", "<sip:a@b>");
        h.push("X", "1");
        h.push("m", "<sip:c@d>");
        h.set("contact", "<sip:e@f>");
        assert_eq!(h.get_all("Contact").collect::<Vec<_>>(), vec!["<sip:e@f>"]);
        assert_eq!(h.len(), 2);
    }
}
