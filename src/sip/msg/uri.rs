//! Typed views of the header values a B2BUA edits: SIP URI, name-addr (From/To/Contact/...),
//! Via and CSeq. Each parses from `&str` into owned parts and writes back with `Display`.

use super::Method;
use super::ParseError;
use super::text::{find_byte, is_token, is_token_str, rfind_byte};
use std::fmt;

/// `;name=value` parameters, order kept, names compared case-insensitively. Kept as their
/// text (`;a=b;c`, each part trimmed, empty parts dropped) in one string and read by scanning
/// it: a Via, From or To is parsed for every message, and one allocation per parameter list
/// instead of two per parameter showed in the profile (bench/PROFILE.md, fourth pass).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Params {
    raw: String,
}

/// Appends `;name[=value]` to a parameter string.
fn push_param(raw: &mut String, name: &str, value: Option<&str>) {
    raw.push(';');
    raw.push_str(name);
    if let Some(v) = value {
        raw.push('=');
        raw.push_str(v);
    }
}

/// One parameter: name and value (None for a flag such as `lr`).
fn split_param(p: &str) -> (&str, Option<&str>) {
    match split_at_byte(p, b'=') {
        Some((n, v)) => (n.trim_ascii(), Some(v.trim_ascii())),
        None => (p, None),
    }
}

impl Params {
    /// Parses `;a=b;c` (leading `;` optional).
    pub fn parse(s: &str) -> Params {
        // Already in the stored form (`a=b;c`: ASCII, no whitespace, no empty part)? Then it
        // is kept as it is, without splitting it (most parameter lists received are).
        let body = s.strip_prefix(';').unwrap_or(s);
        let plain = body.bytes().all(|b| b.is_ascii() && !b.is_ascii_whitespace() && b != 0x0b);
        if plain
            && !body.is_empty()
            && !body.starts_with(';')
            && !body.ends_with(';')
            && memchr::memmem::find(body.as_bytes(), b";;").is_none()
        {
            let mut raw = String::with_capacity(body.len() + 1);
            raw.push(';');
            raw.push_str(body);
            return Params { raw };
        }
        Params::parse_parts(s)
    }
    /// `parse` part by part: each trimmed, empty ones dropped.
    fn parse_parts(s: &str) -> Params {
        let mut raw = String::with_capacity(s.len() + 1);
        for p in split_semis(s) {
            let p = p.trim_ascii();
            if p.is_empty() {
                continue;
            }
            let (n, v) = split_param(p);
            push_param(&mut raw, n, v);
        }
        Params { raw }
    }
    /// The parameters as written (`name[=value]`), in order.
    fn parts(&self) -> impl Iterator<Item = &str> {
        split_semis(self.raw.strip_prefix(';').unwrap_or("")).filter(|p| !p.is_empty())
    }
    /// The parameters in order: name and value.
    pub fn iter(&self) -> impl Iterator<Item = (&str, Option<&str>)> {
        self.parts().map(split_param)
    }
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }
    pub fn get(&self, name: &str) -> Option<&str> {
        self.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.unwrap_or(""))
    }
    pub fn has(&self, name: &str) -> bool {
        self.iter().any(|(n, _)| n.eq_ignore_ascii_case(name))
    }
    /// Sets `name` (in place if present, else appended).
    pub fn set(&mut self, name: &str, value: Option<&str>) {
        let mut raw = String::with_capacity(self.raw.len() + name.len() + value.map_or(0, |v| v.len() + 1) + 1);
        let mut done = false;
        for (n, v) in self.iter() {
            if !done && n.eq_ignore_ascii_case(name) {
                push_param(&mut raw, n, value);
                done = true;
            } else {
                push_param(&mut raw, n, v);
            }
        }
        if !done {
            push_param(&mut raw, name, value);
        }
        self.raw = raw;
    }
    pub fn remove(&mut self, name: &str) {
        if !self.has(name) {
            return;
        }
        let mut raw = String::with_capacity(self.raw.len());
        for p in self.parts() {
            if !split_param(p).0.eq_ignore_ascii_case(name) {
                raw.push(';');
                raw.push_str(p);
            }
        }
        self.raw = raw;
    }
}

impl fmt::Display for Params {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// Splits at `;` outside quotes (every part, empty ones too).
fn split_semis(s: &str) -> impl Iterator<Item = &str> {
    super::text::split_where(s, |b| super::text::top_level(b, b';', false))
}

/// A `sip:`/`sips:`/`tel:` URI: `scheme:user@host:port;params?headers`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uri {
    pub scheme: String,
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
    pub params: Params,
    pub headers: Option<String>,
}

/// A URI's parts as written, checked: what [`Uri::parse`] keeps, without copying it (the
/// parser checks the From and To of every message received, and most are never read whole).
struct UriParts<'a> {
    scheme: &'a str,
    user: Option<&'a str>,
    host: &'a str,
    port: Option<u16>,
    params: Option<&'a str>,
    headers: Option<&'a str>,
}

impl<'a> UriParts<'a> {
    fn split(s: &'a str) -> Result<UriParts<'a>, ParseError> {
        let s = s.trim_ascii();
        let (scheme, rest) = split_at_byte(s, b':').ok_or(ParseError::BadHeader)?;
        if scheme.is_empty() || !scheme.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'-' || b == b'.') {
            return Err(ParseError::BadHeader);
        }
        if !scheme.eq_ignore_ascii_case("sip") && !scheme.eq_ignore_ascii_case("sips") {
            // tel:, urn:, and any other scheme: opaque part kept in `user`, params after ';'.
            let (rest, headers) = match split_at_byte(rest, b'?') {
                Some((a, h)) => (a, Some(h)),
                None => (rest, None),
            };
            let (num, params) = match split_at_byte(rest, b';') {
                Some((n, p)) => (n, Some(p)),
                None => (rest, None),
            };
            if num.is_empty() || has_space_or(num, &NOT_IN_USER) {
                return Err(ParseError::BadHeader);
            }
            return Ok(UriParts { scheme, user: Some(num), host: "", port: None, params, headers });
        }
        // The user part may hold ';' '?' '/' (RFC 3261 25.1 user-unreserved): split at the '@'
        // first (the last one before the first '?', else the last one), then params and
        // headers in the host part.
        // (bytes, not chars, from here on: every delimiter is ASCII, so the split points are
        // char boundaries; this runs for every From, To and Contact received)
        let rb = rest.as_bytes();
        let at = match find_byte(b'?', rb) {
            Some(q) => rfind_byte(b'@', &rb[..q]).or_else(|| rfind_byte(b'@', rb)),
            None => rfind_byte(b'@', rb),
        };
        let (userinfo, hostpart) = match at {
            Some(i) => (Some(&rest[..i]), &rest[i + 1..]),
            None => (None, rest),
        };
        let (hostpart, headers) = match split_at_byte(hostpart, b'?') {
            Some((a, h)) => (a, Some(h)),
            None => (hostpart, None),
        };
        let (hostport, params) = match split_at_byte(hostpart, b';') {
            Some((h, p)) => (h, Some(p)),
            None => (hostpart, None),
        };
        if let Some(u) = userinfo {
            if u.is_empty() || has_space_or(u, &NOT_IN_USER) {
                return Err(ParseError::BadHeader);
            }
        }
        let (host, port) = host_port_parts(hostport)?;
        if host.is_empty() || has_space_or(host, &NOT_IN_HOST) {
            return Err(ParseError::BadHeader);
        }
        Ok(UriParts { scheme, user: userinfo.map(|u| u.split(':').next().unwrap_or("")), host, port, params, headers })
    }

    fn to_uri(&self) -> Uri {
        Uri {
            scheme: self.scheme.to_ascii_lowercase(),
            user: self.user.map(str::to_string),
            host: self.host.to_string(),
            port: self.port,
            params: self.params.map(Params::parse).unwrap_or_default(),
            headers: self.headers.map(str::to_string),
        }
    }
}

impl Uri {
    pub fn parse(s: &str) -> Result<Uri, ParseError> {
        UriParts::split(s).map(|p| p.to_uri())
    }

    pub fn sip(user: Option<&str>, host: &str, port: Option<u16>) -> Uri {
        Uri { scheme: "sip".into(), user: user.map(str::to_string), host: host.to_string(), port, params: Params::default(), headers: None }
    }

    /// `host:port` as written (IPv6 in brackets).
    pub fn host_port(&self) -> String {
        match self.port {
            Some(p) => format!("{}:{}", self.host, p),
            None => self.host.clone(),
        }
    }
}

/// Splits `host[:port]`, IPv6 `[..]` aware. The host keeps its brackets.
pub(crate) fn split_host_port(hp: &str) -> Result<(String, Option<u16>), ParseError> {
    host_port_parts(hp).map(|(h, p)| (h.to_string(), p))
}

fn host_port_parts(hp: &str) -> Result<(&str, Option<u16>), ParseError> {
    let hp = hp.trim_ascii();
    if hp.starts_with('[') {
        let end = hp.find(']').ok_or(ParseError::BadHeader)?;
        let rest = &hp[end + 1..];
        let port = match rest.strip_prefix(':') {
            Some(p) => Some(p.parse().map_err(|_| ParseError::BadHeader)?),
            None if rest.is_empty() => None,
            None => return Err(ParseError::BadHeader),
        };
        return Ok((&hp[..=end], port));
    }
    match split_at_byte(hp, b':') {
        Some((h, p)) => Ok((h.trim_ascii(), Some(p.trim_ascii().parse().map_err(|_| ParseError::BadHeader)?))),
        None => Ok((hp, None)),
    }
}

/// `s.split_once(c)` for an ASCII `c`, by `memchr`.
fn split_at_byte(s: &str, c: u8) -> Option<(&str, &str)> {
    let i = find_byte(c, s.as_bytes())?;
    Some((&s[..i], &s[i + 1..]))
}

/// True if `s` holds whitespace (any Unicode whitespace) or one of the ASCII bytes of `bad`
/// (a [`byte_set`]: one table lookup per byte; this runs over the user and host of every URI
/// checked).
fn has_space_or(s: &str, bad: &[bool; 256]) -> bool {
    s.bytes().any(|b| bad[b as usize]) || (!s.is_ascii() && s.chars().any(char::is_whitespace))
}

/// ASCII whitespace and `extra`, as a table for [`has_space_or`].
const fn byte_set(extra: &[u8]) -> [bool; 256] {
    let mut t = [false; 256];
    let ws = [b' ', b'\t', b'\n', 0x0b, 0x0c, b'\r'];
    let mut i = 0;
    while i < ws.len() {
        t[ws[i] as usize] = true;
        i += 1;
    }
    let mut i = 0;
    while i < extra.len() {
        t[extra[i] as usize] = true;
        i += 1;
    }
    t
}

const NOT_IN_USER: [bool; 256] = byte_set(b"<>\"");
const NOT_IN_HOST: [bool; 256] = byte_set(b"<>\",");
const NOT_IN_VIA_HOST: [bool; 256] = byte_set(b",\"");

impl fmt::Display for Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.scheme)?;
        f.write_str(":")?;
        if self.scheme != "sip" && self.scheme != "sips" {
            f.write_str(self.user.as_deref().unwrap_or(""))?;
        } else {
            if let Some(u) = &self.user {
                f.write_str(u)?;
                f.write_str("@")?;
            }
            f.write_str(&self.host)?;
            if let Some(p) = self.port {
                write!(f, ":{p}")?;
            }
        }
        f.write_str(&self.params.raw)?;
        if let Some(h) = &self.headers {
            f.write_str("?")?;
            f.write_str(h)?;
        }
        Ok(())
    }
}

/// `"Display" <uri>;params` or `uri;params` (From, To, Contact, Refer-To, P-Asserted-Identity,
/// Diversion, History-Info, Route, Record-Route).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameAddr {
    pub display: Option<String>,
    pub uri: Uri,
    pub params: Params,
}

/// A name-addr's parts as written, checked: the display name (still quoted), the URI and the
/// header parameters. [`NameAddr::check`] stops here, [`NameAddr::parse`] copies them out.
struct NameAddrParts<'a> {
    display: &'a str,
    uri: UriParts<'a>,
    params: &'a str,
}

impl<'a> NameAddrParts<'a> {
    fn split(s: &'a str) -> Result<NameAddrParts<'a>, ParseError> {
        let s = s.trim_ascii();
        let (display, uri, params) = if let Some(lt) = find_unquoted(s, b'<') {
            let gt = find_byte(b'>', s[lt..].as_bytes()).ok_or(ParseError::BadHeader)? + lt;
            let display = s[..lt].trim_ascii();
            check_display(display)?;
            (display, UriParts::split(&s[lt + 1..gt])?, &s[gt + 1..])
        } else {
            // addr-spec form: parameters after ';' belong to the header, not the URI.
            let (u, p) = split_at_byte(s, b';').unwrap_or((s, ""));
            if u.contains(['"', '<', '>', ',']) || u.trim_ascii().contains([' ', '\t']) {
                return Err(ParseError::BadHeader);
            }
            ("", UriParts::split(u)?, p)
        };
        check_param_names(params)?;
        Ok(NameAddrParts { display, uri, params })
    }
}

/// Parameters as written (`;a=b ; c`): each part trimmed, empty ones skipped, as
/// [`Params::parse`] keeps them.
fn param_parts(s: &str) -> impl Iterator<Item = (&str, Option<&str>)> {
    split_semis(s).map(str::trim_ascii).filter(|p| !p.is_empty()).map(split_param)
}

/// The `tag` parameter of a From or To value, read from the text without parsing the rest
/// (the value was checked by the parser; a response's From and To are read for their tags
/// only).
pub fn tag_of(name_addr: &str) -> Option<&str> {
    let s = name_addr.trim_ascii();
    let params = match find_unquoted(s, b'<') {
        Some(lt) => &s[lt + find_byte(b'>', s[lt..].as_bytes())? + 1..],
        None => split_at_byte(s, b';')?.1,
    };
    param_parts(params).find(|(n, _)| n.eq_ignore_ascii_case("tag")).map(|(_, v)| v.unwrap_or(""))
}

impl NameAddr {
    pub fn parse(s: &str) -> Result<NameAddr, ParseError> {
        let p = NameAddrParts::split(s)?;
        let display = parse_display(p.display)?;
        Ok(NameAddr { display, uri: p.uri.to_uri(), params: Params::parse(p.params) })
    }
    /// What `parse` checks, without building the value.
    pub fn check(s: &str) -> Result<(), ParseError> {
        NameAddrParts::split(s).map(|_| ())
    }
    pub fn new(uri: Uri) -> NameAddr {
        NameAddr { display: None, uri, params: Params::default() }
    }
    pub fn tag(&self) -> Option<&str> {
        self.params.get("tag")
    }
    pub fn set_tag(&mut self, tag: &str) {
        self.params.set("tag", Some(tag));
    }
}

/// The first `ch` (ASCII) outside quoted strings.
fn find_unquoted(s: &str, ch: u8) -> Option<usize> {
    super::text::top_level(s.as_bytes(), ch, false)
}

/// Display name: a quoted string (escapes undone) or tokens separated by whitespace
/// (RFC 3261 25.1; RFC 4475 baddn, quotbal).
fn parse_display(d: &str) -> Result<Option<String>, ParseError> {
    if d.is_empty() {
        return Ok(None);
    }
    let mut out = String::new();
    display_chars(d, |c| out.push(c))?;
    Ok(Some(out))
}

/// Header parameter names (of `;a=b;c` as written) are tokens (RFC 4475 badinv01: `;;,;,,`).
fn check_param_names(p: &str) -> Result<(), ParseError> {
    if param_parts(p).all(|(n, _)| is_token_str(n)) {
        Ok(())
    } else {
        Err(ParseError::BadHeader)
    }
}

/// What `parse_display` checks.
fn check_display(d: &str) -> Result<(), ParseError> {
    display_chars(d, |_| ())
}

/// The characters of a display name, escapes undone, to `out`; an error if it is malformed.
fn display_chars(d: &str, mut out: impl FnMut(char)) -> Result<(), ParseError> {
    if let Some(inner) = d.strip_prefix('"') {
        let mut chars = inner.chars();
        loop {
            match chars.next() {
                None => return Err(ParseError::BadHeader),
                Some('\\') => out(chars.next().ok_or(ParseError::BadHeader)?),
                Some('"') => break,
                Some(c) => out(c),
            }
        }
        if !chars.as_str().trim_ascii().is_empty() {
            return Err(ParseError::BadHeader);
        }
        return Ok(());
    }
    if d.bytes().all(|b| b == b' ' || b == b'\t' || is_token(b)) {
        d.chars().for_each(out);
        Ok(())
    } else {
        Err(ParseError::BadHeader)
    }
}

impl fmt::Display for NameAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(d) = &self.display {
            // Quoted with escapes; CR/LF cannot appear in a header value.
            f.write_str("\"")?;
            for c in d.chars() {
                match c {
                    '"' | '\\' => write!(f, "\\{c}")?,
                    '\r' | '\n' => f.write_str(" ")?,
                    c => write!(f, "{c}")?,
                }
            }
            f.write_str("\" ")?;
        }
        write!(f, "<{}>{}", self.uri, self.params)
    }
}

/// One Via value: `SIP/2.0/UDP host:port;branch=..;received=..;rport=..`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Via {
    pub transport: String,
    pub host: String,
    pub port: Option<u16>,
    pub params: Params,
}

impl Via {
    pub fn parse(s: &str) -> Result<Via, ParseError> {
        // sent-protocol = name SLASH version SLASH transport, LWS allowed around each SLASH
        // (RFC 4475 wsinv: "SIP  /   2.0\r\n /UDP").
        let mut it = s.trim_ascii().splitn(3, '/');
        let name = it.next().ok_or(ParseError::BadHeader)?.trim_ascii();
        let version = it.next().ok_or(ParseError::BadHeader)?.trim_ascii();
        let rest = it.next().ok_or(ParseError::BadHeader)?.trim_start();
        if !name.eq_ignore_ascii_case("SIP") || version != "2.0" {
            return Err(ParseError::BadHeader);
        }
        let ws = rest.find([' ', '\t']).ok_or(ParseError::BadHeader)?;
        let transport = rest[..ws].to_ascii_uppercase();
        if !is_token_str(&transport) {
            return Err(ParseError::BadHeader);
        }
        let sent = rest[ws..].trim_start();
        let (hp, params) = match split_at_byte(sent, b';') {
            Some((h, p)) => {
                check_param_names(p)?;
                (h, Params::parse(p))
            }
            None => (sent, Params::default()),
        };
        let (host, port) = split_host_port(hp)?;
        if host.is_empty() || has_space_or(&host, &NOT_IN_VIA_HOST) {
            return Err(ParseError::BadHeader);
        }
        Ok(Via { transport, host, port, params })
    }
    pub fn branch(&self) -> Option<&str> {
        self.params.get("branch")
    }
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SIP/2.0/{} {}", self.transport, self.host)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        write!(f, "{}", self.params)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CSeq {
    pub seq: u32,
    pub method: Method,
}

impl CSeq {
    pub fn parse(s: &str) -> Result<CSeq, ParseError> {
        // CSeq = 1*DIGIT LWS Method (RFC 3261 25.1); the number fits 32 bits.
        let mut it = s.split_whitespace();
        let n = it.next().ok_or(ParseError::BadHeader)?;
        if n.len() > 10 || !n.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ParseError::BadHeader);
        }
        let seq = n.parse().map_err(|_| ParseError::BadHeader)?;
        let m = it.next().ok_or(ParseError::BadHeader)?;
        if it.next().is_some() || !m.bytes().all(is_token) {
            return Err(ParseError::BadHeader);
        }
        Ok(CSeq { seq, method: Method::parse(m) })
    }
}

impl fmt::Display for CSeq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.seq, self.method)
    }
}

#[cfg(test)]
mod tests {
    /// The parser checks From and To with `NameAddr::check` and reads their tags with `tag_of`:
    /// both must agree with the full parse.
    #[test]
    fn check_and_tag_of_agree_with_the_full_parse() {
        let cases = [
            "<sip:a@b>;tag=1", "\"A \\\"q\\\" B\" <sip:a@b;lr>;Tag = x ;y", "sip:a@b;tag=2", "sip:a@b", "Bob <sip:b@h:5060>",
            "<sip:a@b>;;tag=3", "<sip:a@b>;tag", "<sip:a@b>;tag=", "<tel:+4930;phone-context=x>;tag=9", "<sips:[::1]:5061>",
            "<sip:a@b", "\"unterminated <sip:a@b>", "bad\u{1} <sip:a@b>", "<sip:a@b>;;,;,,", "<sip:a@b>;t@g=1",
            "sip:a b@c", "<sip:a@b:99999>", "<sip:a@[::1>", "<:a@b>", "<sip:@b>", "x <sip:a@b> y", "<sip:a@b>junk;tag=5",
            "sip:a@b?x=1;tag=6", "\"a;tag=7\" <sip:a@b>;tag=8", "<sip:a@b;tag=uri>", "", "  <sip:a@b>;tag=t  ",
        ];
        for c in cases {
            let full = NameAddr::parse(c);
            assert_eq!(NameAddr::check(c).is_ok(), full.is_ok(), "{c:?}");
            if let Ok(n) = full {
                assert_eq!(super::tag_of(c), n.tag(), "{c:?}");
            }
        }
    }

    /// The shortcut for lists already in stored form gives what the part-by-part parse gives.
    #[test]
    fn params_shortcut_matches_the_full_parse() {
        let cases = [
            "tag=1", ";tag=1", "a=b;c;d=e", ";;a", "a;;b", "a;", ";", "", "a=\"x;y\";b", "a=\"x;;y\"",
            " a=b", "a = b", "a=b\t", "lr;transport=tls;maddr=[::1]", "a==b", "a=", "x=\u{e9}", "\u{a0}a=b",
        ];
        for c in cases {
            assert_eq!(super::Params::parse(c), super::Params::parse_parts(c), "{c:?}");
        }
    }

    #[test]
    fn params_keep_order_and_edit_in_place() {
        let mut p = Params::parse(" ; Transport = tls ;lr;; x=\"a;b\" ;maddr=1.2.3.4");
        assert_eq!(p.to_string(), ";Transport=tls;lr;x=\"a;b\";maddr=1.2.3.4");
        assert_eq!(p.iter().collect::<Vec<_>>(), vec![("Transport", Some("tls")), ("lr", None), ("x", Some("\"a;b\"")), ("maddr", Some("1.2.3.4"))]);
        assert_eq!((p.get("transport"), p.get("LR"), p.get("x")), (Some("tls"), Some(""), Some("\"a;b\"")));
        assert!(p.has("MADDR") && !p.has("ttl"));
        p.set("TRANSPORT", Some("udp"));
        p.set("ttl", Some("1"));
        p.set("lr", None);
        assert_eq!(p.to_string(), ";Transport=udp;lr;x=\"a;b\";maddr=1.2.3.4;ttl=1", "the name keeps its spelling");
        p.remove("x");
        p.remove("nothing");
        assert_eq!(p.to_string(), ";Transport=udp;lr;maddr=1.2.3.4;ttl=1");
        for n in ["transport", "lr", "maddr", "ttl"] {
            p.remove(n);
        }
        assert!(p.is_empty());
        assert_eq!(p, Params::default());
        assert!(Params::parse(" ; ;").is_empty());
    }

    use super::*;

    #[test]
    fn uri_roundtrip() {
        let u = Uri::parse("sip:+4681234711@sip.pstnhub.microsoft.com:5061;user=phone;transport=tls").unwrap();
        assert_eq!(u.user.as_deref(), Some("+4681234711"));
        assert_eq!(u.port, Some(5061));
        assert_eq!(u.params.get("user"), Some("phone"));
        assert_eq!(u.to_string(), "sip:+4681234711@sip.pstnhub.microsoft.com:5061;user=phone;transport=tls");
        let v6 = Uri::parse("sip:a@[::1]:5060").unwrap();
        assert_eq!(v6.host, "[::1]");
    }

    #[test]
    fn name_addr() {
        let n = NameAddr::parse("\"Alice, A\" <sip:4711@pbx;user=phone>;tag=abc").unwrap();
        assert_eq!(n.display.as_deref(), Some("Alice, A"));
        assert_eq!(n.tag(), Some("abc"));
        assert_eq!(n.uri.params.get("user"), Some("phone"));
        let b = NameAddr::parse("sip:4711@pbx;tag=x").unwrap();
        assert_eq!(b.tag(), Some("x"));
        assert!(b.uri.params.is_empty());
    }

    #[test]
    fn via() {
        let v = Via::parse("SIP/2.0/udp 10.0.0.1:5060;branch=z9hG4bK1;rport").unwrap();
        assert_eq!(v.transport, "UDP");
        assert_eq!(v.branch(), Some("z9hG4bK1"));
        assert!(v.params.has("rport"));
        assert_eq!(v.to_string(), "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1;rport");
    }
}
