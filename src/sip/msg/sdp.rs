//! SDP (RFC 8866, formerly RFC 4566): parse and write, zero-copy over the body `Bytes`.
//!
//! An [`Sdp`] is a session section (the lines before the first `m=`) and a list of [`Media`]
//! sections. Every line is kept as a `SipStr` slice of the received body, in order, unknown
//! lines included, so an SDP that is parsed and written again without edits keeps every line
//! (line ends become CRLF, and lines that were out of RFC order are put in order). The typed
//! views an SBC edits (connection, port, direction, rtpmap/fmtp, crypto, ICE, rtcp, ptime) are
//! parsed on demand from those lines and written back as lines.
//!
//! Order on write: session `v o s i u e p c b t r z k a` (a `t=` keeps its `r=` lines after it),
//! then each media section `m i c b k a`. A line of an unknown type stays after the line it
//! followed when it was received.
//!
//! Robustness: LF-only line ends and blank lines are accepted; malformed input is an
//! [`SdpError`], never a panic; the number of lines and media sections is capped
//! ([`SdpLimits`]). Values given to the setters have CR and LF replaced by a space, so an edit
//! can never add a line.
//!
//! Secrets: `Debug` of [`Sdp`], [`Media`] and [`Crypto`] never shows an SRTP key (the text
//! after `inline:`) nor an `a=ice-pwd` value; use [`redact_secrets`] for any other SDP text that
//! may be logged.

use super::headers::sanitize_value;
use super::text::{find_byte, SipStr};
use bytes::{BufMut, Bytes, BytesMut};
use std::fmt;
use std::net::IpAddr;

/// Caps applied to an SDP from the network.
#[derive(Clone, Copy, Debug)]
pub struct SdpLimits {
    /// Most lines (all sections together, blank lines not counted).
    pub max_lines: usize,
    /// Most `m=` sections.
    pub max_media: usize,
}

impl Default for SdpLimits {
    fn default() -> Self {
        SdpLimits { max_lines: 1024, max_media: 32 }
    }
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum SdpError {
    #[error("SDP is empty")]
    Empty,
    #[error("SDP is not UTF-8")]
    NotUtf8,
    #[error("more than {0} SDP lines")]
    TooManyLines(usize),
    #[error("more than {0} media sections")]
    TooManyMedia(usize),
    #[error("SDP does not start with v=0")]
    BadVersion,
    #[error("malformed SDP line {0}")]
    BadLine(usize),
    #[error("malformed m= line {0}")]
    BadMediaLine(usize),
}

/// One `x=value` line. `kind` is the type letter.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Line {
    kind: u8,
    value: SipStr,
}

impl Line {
    pub fn kind(&self) -> char {
        self.kind as char
    }
    pub fn value(&self) -> &str {
        &self.value
    }
    /// An `a=` line whose attribute name is `name` (any case).
    fn is_attr(&self, name: &str) -> bool {
        self.kind == b'a' && attr_value(&self.value, name).is_some()
    }
}

impl fmt::Debug for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = if self.kind == b'a' { redact_attr(&self.value) } else { self.value.to_string() };
        write!(f, "{}={}", self.kind as char, v)
    }
}

/// `a=` direction attributes (RFC 8866 6.7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }
    pub fn parse(s: &str) -> Option<Direction> {
        let s = s.trim_ascii();
        [Direction::SendRecv, Direction::SendOnly, Direction::RecvOnly, Direction::Inactive]
            .into_iter()
            .find(|d| d.as_str().eq_ignore_ascii_case(s))
    }
    /// The direction an answerer uses for an offer with this one (RFC 3264 6.1).
    pub fn answer(self) -> Direction {
        match self {
            Direction::SendOnly => Direction::RecvOnly,
            Direction::RecvOnly => Direction::SendOnly,
            d => d,
        }
    }
    pub fn sends(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::SendOnly)
    }
    pub fn receives(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::RecvOnly)
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `c=<nettype> <addrtype> <address>` (the address may carry `/ttl[/count]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connection {
    pub net_type: SipStr,
    pub addr_type: SipStr,
    pub address: SipStr,
}

impl Connection {
    /// `IN IP4 a.b.c.d` or `IN IP6 ...`.
    pub fn from_ip(ip: IpAddr) -> Connection {
        Connection {
            net_type: SipStr::from_static("IN"),
            addr_type: SipStr::from_static(if ip.is_ipv4() { "IP4" } else { "IP6" }),
            address: SipStr::from_ip(ip),
        }
    }
    fn parse_sip(v: &SipStr) -> Option<Connection> {
        let mut it = v.split_ascii_whitespace();
        let (n, a, addr) = (it.next()?, it.next()?, it.next()?);
        if it.next().is_some() {
            return None;
        }
        Some(Connection { net_type: v.slice_ref(n), addr_type: v.slice_ref(a), address: v.slice_ref(addr) })
    }
    pub fn parse(s: &str) -> Option<Connection> {
        Connection::parse_sip(&SipStr::from(s))
    }
    /// The address as an IP (without `/ttl`), if it is one.
    pub fn ip(&self) -> Option<IpAddr> {
        self.address.split('/').next()?.parse().ok()
    }
}

impl fmt::Display for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.net_type, self.addr_type, self.address)
    }
}

/// `o=<username> <sess-id> <sess-version> <nettype> <addrtype> <unicast-address>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub username: SipStr,
    pub session_id: SipStr,
    pub session_version: u64,
    pub net_type: SipStr,
    pub addr_type: SipStr,
    pub address: SipStr,
}

impl Origin {
    fn parse_sip(v: &SipStr) -> Option<Origin> {
        let t: Vec<&str> = v.split_ascii_whitespace().collect();
        if t.len() != 6 {
            return None;
        }
        Some(Origin {
            username: v.slice_ref(t[0]),
            session_id: v.slice_ref(t[1]),
            session_version: t[2].parse().ok()?,
            net_type: v.slice_ref(t[3]),
            addr_type: v.slice_ref(t[4]),
            address: v.slice_ref(t[5]),
        })
    }
    pub fn parse(s: &str) -> Option<Origin> {
        Origin::parse_sip(&SipStr::from(s))
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} {} {} {}",
            self.username, self.session_id, self.session_version, self.net_type, self.addr_type, self.address
        )
    }
}

/// `a=rtpmap:<pt> <encoding>/<clock rate>[/<channels>]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RtpMap {
    pub payload_type: u8,
    pub encoding: SipStr,
    pub clock_rate: u32,
    pub channels: Option<u16>,
}

impl RtpMap {
    fn parse_sip(v: &SipStr) -> Option<RtpMap> {
        let v_str: &str = v;
        let (pt, rest) = v_str.trim_ascii().split_once([' ', '\t'])?;
        let mut parts = rest.trim_ascii().split('/');
        let enc = parts.next()?.trim_ascii();
        let clock_rate = parts.next()?.trim_ascii().parse().ok()?;
        let channels = match parts.next() {
            Some(c) => Some(c.trim_ascii().parse().ok()?),
            None => None,
        };
        if enc.is_empty() || parts.next().is_some() {
            return None;
        }
        Some(RtpMap { payload_type: pt.parse().ok()?, encoding: v.slice_ref(enc), clock_rate, channels })
    }
    pub fn parse(s: &str) -> Option<RtpMap> {
        RtpMap::parse_sip(&SipStr::from(s))
    }
}

impl fmt::Display for RtpMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.payload_type, self.encoding, self.clock_rate)?;
        if let Some(c) = self.channels {
            write!(f, "/{c}")?;
        }
        Ok(())
    }
}

/// The static payload types of RFC 3551 an SBC meets: (pt, encoding, clock rate).
pub const STATIC_PAYLOAD_TYPES: &[(u8, &str, u32)] = &[
    (0, "PCMU", 8000),
    (3, "GSM", 8000),
    (4, "G723", 8000),
    (8, "PCMA", 8000),
    (9, "G722", 8000),
    (13, "CN", 8000),
    (18, "G729", 8000),
];

/// The RFC 3551 mapping of a static payload type.
pub fn static_rtpmap(pt: u8) -> Option<RtpMap> {
    STATIC_PAYLOAD_TYPES.iter().find(|(p, _, _)| *p == pt).map(|&(p, e, r)| RtpMap {
        payload_type: p,
        encoding: SipStr::from_static(e),
        clock_rate: r,
        channels: None,
    })
}

/// `a=crypto:<tag> <crypto-suite> <key-params> [<session-params>]` (RFC 4568). The key
/// parameters stay text (`inline:<key||salt>[|lifetime][|MKI:length]`, `;`-separated when
/// there are several). `Debug` hides the keys; `Display` writes them (it is the wire form).
#[derive(Clone, PartialEq, Eq)]
pub struct Crypto {
    pub tag: u32,
    pub suite: SipStr,
    pub key_params: SipStr,
    pub session_params: Option<SipStr>,
}

impl Crypto {
    pub fn new(tag: u32, suite: &str, key_params: &str) -> Crypto {
        Crypto { tag, suite: sanitize(suite), key_params: sanitize(key_params), session_params: None }
    }
    fn parse_sip(v: &SipStr) -> Option<Crypto> {
        let s: &str = v;
        let mut it = s.split_ascii_whitespace();
        let tag_s = it.next()?;
        if tag_s.is_empty() || tag_s.len() > 9 || !tag_s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let suite = it.next()?;
        let key = it.next()?;
        let rest = after(s, key).trim_ascii();
        Some(Crypto {
            tag: tag_s.parse().ok()?,
            suite: v.slice_ref(suite),
            key_params: v.slice_ref(key),
            session_params: if rest.is_empty() { None } else { Some(v.slice_ref(rest)) },
        })
    }
    pub fn parse(s: &str) -> Option<Crypto> {
        Crypto::parse_sip(&SipStr::from(s))
    }
    /// The base64 key||salt of the first `inline:` key parameter. Secret: never log it.
    pub fn inline_key(&self) -> Option<&str> {
        let first = self.key_params.split(';').next()?;
        let k = first.trim_ascii().strip_prefix("inline:")?;
        Some(k.split('|').next().unwrap_or(k))
    }
    /// The lifetime of the first key parameter (`2^31` or a number), as written.
    pub fn lifetime(&self) -> Option<&str> {
        let first = self.key_params.split(';').next()?;
        first.split('|').nth(1).filter(|p| !p.contains(':'))
    }
}

impl fmt::Display for Crypto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.tag, self.suite, self.key_params)?;
        if let Some(p) = &self.session_params {
            write!(f, " {p}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Crypto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Crypto")
            .field("tag", &self.tag)
            .field("suite", &self.suite)
            .field("key_params", &redact_inline(&self.key_params))
            .field("session_params", &self.session_params)
            .finish()
    }
}

/// `a=candidate:<foundation> <component> <transport> <priority> <address> <port> typ <type>
/// [extensions]` (RFC 8839). Extensions (`raddr`, `rport`, `generation` ...) stay text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub foundation: SipStr,
    pub component: u16,
    pub transport: SipStr,
    pub priority: u32,
    pub address: SipStr,
    pub port: u16,
    pub typ: SipStr,
    pub extensions: SipStr,
}

impl Candidate {
    fn parse_sip(v: &SipStr) -> Option<Candidate> {
        let s: &str = v;
        let t: Vec<&str> = s.split_ascii_whitespace().take(8).collect();
        if t.len() < 8 || !t[6].eq_ignore_ascii_case("typ") {
            return None;
        }
        let rest = after(s, t[7]).trim_ascii();
        Some(Candidate {
            foundation: v.slice_ref(t[0]),
            component: t[1].parse().ok()?,
            transport: v.slice_ref(t[2]),
            priority: t[3].parse().ok()?,
            address: v.slice_ref(t[4]),
            port: t[5].parse().ok()?,
            typ: v.slice_ref(t[7]),
            extensions: v.slice_ref(rest),
        })
    }
    pub fn parse(s: &str) -> Option<Candidate> {
        Candidate::parse_sip(&SipStr::from(s))
    }
    fn ext(&self, name: &str) -> Option<&str> {
        let mut it = self.extensions.split_ascii_whitespace();
        while let Some(k) = it.next() {
            let v = it.next();
            if k.eq_ignore_ascii_case(name) {
                return v;
            }
        }
        None
    }
    pub fn raddr(&self) -> Option<&str> {
        self.ext("raddr")
    }
    pub fn rport(&self) -> Option<u16> {
        self.ext("rport")?.parse().ok()
    }
}

impl fmt::Display for Candidate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} {} {} {} typ {}",
            self.foundation, self.component, self.transport, self.priority, self.address, self.port, self.typ
        )?;
        if !self.extensions.is_empty() {
            write!(f, " {}", self.extensions)?;
        }
        Ok(())
    }
}

/// `a=rtcp:<port> [<nettype> <addrtype> <address>]` (RFC 3605).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rtcp {
    pub port: u16,
    pub connection: Option<Connection>,
}

impl Rtcp {
    fn parse_sip(v: &SipStr) -> Option<Rtcp> {
        let s: &str = v;
        let s = s.trim_ascii();
        let (p, rest) = match s.split_once([' ', '\t']) {
            Some((p, r)) => (p, r.trim_ascii()),
            None => (s, ""),
        };
        let connection = if rest.is_empty() { None } else { Some(Connection::parse_sip(&v.slice_ref(rest))?) };
        Some(Rtcp { port: p.parse().ok()?, connection })
    }
    pub fn parse(s: &str) -> Option<Rtcp> {
        Rtcp::parse_sip(&SipStr::from(s))
    }
}

impl fmt::Display for Rtcp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.port)?;
        if let Some(c) = &self.connection {
            write!(f, " {c}")?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Sections

/// The lines of one section (session or media, `m=` excluded), kept in RFC order.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
struct Section {
    lines: Vec<Line>,
    media_level: bool,
}

const SESSION_ORDER: &[u8] = b"vosiuepcbtrzka";
const MEDIA_ORDER: &[u8] = b"icbka";

impl Section {
    fn rank(&self, kind: u8) -> Option<u8> {
        if self.media_level {
            MEDIA_ORDER.iter().position(|&k| k == kind).map(|p| p as u8 + 1)
        } else if kind == b'r' {
            // r= lines belong to the t= before them: same rank keeps them together.
            self.rank(b't')
        } else {
            SESSION_ORDER.iter().position(|&k| k == kind).map(|p| p as u8)
        }
    }
    /// Rank of every line; an unknown line takes the rank of the line before it.
    fn ranks(&self) -> Vec<u8> {
        let mut prev = 0;
        self.lines
            .iter()
            .map(|l| {
                let r = self.rank(l.kind).unwrap_or(prev);
                prev = r;
                r
            })
            .collect()
    }
    /// Puts received lines in RFC order (stable).
    fn normalize(&mut self) {
        let ranks = self.ranks();
        if ranks.windows(2).all(|w| w[0] <= w[1]) {
            return;
        }
        let mut v: Vec<(u8, Line)> = ranks.into_iter().zip(self.lines.drain(..)).collect();
        v.sort_by_key(|(r, _)| *r);
        self.lines = v.into_iter().map(|(_, l)| l).collect();
    }
    fn insert(&mut self, line: Line) {
        match self.rank(line.kind) {
            // after a last line of a known rank not above `r` (the order an SDP is built in)
            Some(r) if self.lines.last().is_none_or(|l| self.rank(l.kind).is_some_and(|last| last <= r)) => self.lines.push(line),
            Some(r) => {
                // the first line ranked after `r` (what `ranks()` gives, without its vector:
                // this runs for every line of every SDP drbridge writes)
                let mut prev = 0;
                let pos = self
                    .lines
                    .iter()
                    .position(|l| {
                        prev = self.rank(l.kind).unwrap_or(prev);
                        prev > r
                    })
                    .unwrap_or(self.lines.len());
                self.lines.insert(pos, line);
            }
            None => self.lines.push(line),
        }
    }
    fn field(&self, kind: u8) -> Option<&SipStr> {
        self.lines.iter().find(|l| l.kind == kind).map(|l| &l.value)
    }
    /// Replaces every line of that kind with one (in the place of the first).
    fn set_line(&mut self, kind: u8, value: SipStr) {
        match self.lines.iter().position(|l| l.kind == kind) {
            Some(i) => {
                self.lines[i].value = value;
                let mut n = 0;
                self.lines.retain(|l| {
                    l.kind != kind || {
                        n += 1;
                        n == 1
                    }
                });
            }
            None => self.insert(Line { kind, value }),
        }
    }
    fn attr_lines<'a, 'n>(&'a self, name: &'n str) -> impl Iterator<Item = (&'a SipStr, &'a str)> + use<'a, 'n> {
        self.lines.iter().filter(|l| l.kind == b'a').filter_map(move |l| attr_value(&l.value, name).map(|v| (&l.value, v)))
    }
    fn attr_sips<'a>(&'a self, name: &'a str) -> impl Iterator<Item = SipStr> + 'a {
        self.attr_lines(name).map(|(whole, v)| whole.slice_ref(v))
    }
    fn set_attr(&mut self, name: &str, value: &str) {
        let line = attr_line(name, value);
        match self.lines.iter().position(|l| l.is_attr(name)) {
            Some(i) => {
                self.lines[i].value = line;
                let mut n = 0;
                self.lines.retain(|l| {
                    !(l.is_attr(name)) || {
                        n += 1;
                        n == 1
                    }
                });
            }
            None => self.insert(Line { kind: b'a', value: line }),
        }
    }
    fn remove_attr(&mut self, name: &str) -> usize {
        let before = self.lines.len();
        self.lines.retain(|l| !(l.is_attr(name)));
        before - self.lines.len()
    }
    fn direction(&self) -> Option<Direction> {
        // a direction is `sendrecv`, `sendonly`, `recvonly` or `inactive`
        let may_be = |v: &str| v.as_bytes().first().is_none_or(|c| !c.is_ascii_alphanumeric() || matches!(c.to_ascii_lowercase(), b's' | b'r' | b'i'));
        self.lines.iter().filter(|l| l.kind == b'a' && may_be(&l.value)).find_map(|l| {
            let (n, v) = split_attr(&l.value);
            if v.is_empty() {
                Direction::parse(n)
            } else {
                None
            }
        })
    }
    fn set_direction(&mut self, d: Direction) {
        let first = self.lines.iter().position(|l| l.kind == b'a' && split_attr(&l.value).1.is_empty() && Direction::parse(split_attr(&l.value).0).is_some());
        self.lines.retain(|l| !(l.kind == b'a' && split_attr(&l.value).1.is_empty() && Direction::parse(split_attr(&l.value).0).is_some()));
        let line = Line { kind: b'a', value: SipStr::from_static(d.as_str()) };
        match first {
            Some(i) if i <= self.lines.len() => self.lines.insert(i, line),
            _ => self.insert(line),
        }
    }
    fn write(&self, b: &mut BytesMut) {
        for l in &self.lines {
            b.put_u8(l.kind);
            b.put_u8(b'=');
            b.put_slice(l.value.as_bytes());
            b.put_slice(b"\r\n");
        }
    }
}

/// `name:value` -> (name, value); a flag attribute -> (name, "").
/// The value of an attribute line if its name is `name` (any case): what `split_attr` gives,
/// without scanning the value of every other attribute for its colon first.
fn attr_value<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let b = line.as_bytes();
    let n = name.len();
    // Most lines asked are not the one: a line starting with a letter or digit other than the
    // name's first (any case) is not it, whatever the name (this runs ~200 times a call).
    if let Some(c) = b.first().filter(|c| c.is_ascii_alphanumeric()) {
        if !name.as_bytes().first().is_some_and(|d| d.eq_ignore_ascii_case(c)) {
            return None;
        }
    }
    if b.first().is_some_and(|c| !c.is_ascii_alphanumeric()) || !name.is_ascii() {
        let (k, v) = split_attr(line);
        return k.eq_ignore_ascii_case(name).then_some(v);
    }
    if b.len() < n || !b[..n].eq_ignore_ascii_case(name.as_bytes()) {
        return None;
    }
    // `name` is ASCII and matched byte for byte, so `n` is a char boundary.
    let rest = &line[n..];
    match find_byte(b':', rest.as_bytes()) {
        Some(i) => rest[..i].trim_ascii().is_empty().then(|| &rest[i + 1..]),
        None => rest.trim_ascii().is_empty().then_some(""),
    }
}

fn split_attr(v: &str) -> (&str, &str) {
    match find_byte(b':', v.as_bytes()) {
        Some(i) => (v[..i].trim_ascii(), &v[i + 1..]),
        None => (v.trim_ascii(), ""),
    }
}

/// `text.split('\n')` by `memchr` (the standard searcher for a `char` was ~4 % of the
/// instructions per call, over SDP bodies among others).
fn split_lines(text: &str) -> impl Iterator<Item = &str> {
    super::text::split_where(text, |b| memchr::memchr(b'\n', b))
}

fn attr_line(name: &str, value: &str) -> SipStr {
    let name = name.trim_ascii();
    let mut line = String::with_capacity(name.len() + 1 + value.len());
    line.push_str(name);
    if !value.is_empty() {
        line.push(':');
        line.push_str(value);
    }
    sanitize(line)
}

/// CR and LF become spaces: a value set through the API can never start a new line (the same
/// rule as a SIP header value's). A `String` built here is kept without a copy when it has no
/// line end.
fn sanitize(s: impl Into<SipStr>) -> SipStr {
    sanitize_value(s.into())
}

/// The rest of `whole` after `part`, which must be a sub-slice of it.
fn after<'a>(whole: &'a str, part: &str) -> &'a str {
    let off = (part.as_ptr() as usize).saturating_sub(whole.as_ptr() as usize) + part.len();
    whole.get(off..).unwrap_or("")
}

fn valid_kind(kind: char) -> Option<u8> {
    (kind.is_ascii_alphabetic() && kind != 'm').then_some(kind as u8)
}

/// Replaces the key material after every `inline:` with `<redacted>` (up to `|`, `;`, or
/// whitespace).
pub fn redact_inline(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("inline:") {
        out.push_str(&rest[..i + 7]);
        rest = &rest[i + 7..];
        let end = rest.find(|c: char| c == '|' || c == ';' || c.is_whitespace()).unwrap_or(rest.len());
        out.push_str("<redacted>");
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

fn redact_attr(v: &str) -> String {
    let (n, _) = split_attr(v);
    if n.eq_ignore_ascii_case("ice-pwd") {
        "ice-pwd:<redacted>".to_string()
    } else {
        redact_inline(v)
    }
}

/// Any SDP (or SIP message) text with its secrets hidden: SDES keys after `inline:` and
/// `a=ice-pwd` values. For logs and `Debug`.
pub fn redact_secrets(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, line) in text.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
        }
        match line.strip_prefix("a=") {
            Some(v) => {
                out.push_str("a=");
                let (v, cr) = match v.strip_suffix('\r') {
                    Some(v) => (v, "\r"),
                    None => (v, ""),
                };
                out.push_str(&redact_attr(v));
                out.push_str(cr);
            }
            None => out.push_str(&redact_inline(line)),
        }
    }
    out
}

/// Methods shared by the session section and the media sections.
macro_rules! section_api {
    () => {
        /// Every line of this section, in order (for a media section, without its `m=`).
        pub fn lines(&self) -> impl Iterator<Item = &Line> {
            self.sec.lines.iter()
        }
        /// Value of the first line of that type (`'c'`, `'b'`, `'i'` ...).
        pub fn field(&self, kind: char) -> Option<&str> {
            let k = valid_kind(kind)?;
            self.sec.field(k).map(|v| v.as_str())
        }
        /// Values of every line of that type, in order.
        pub fn fields(&self, kind: char) -> impl Iterator<Item = &str> {
            let k = valid_kind(kind).unwrap_or(0);
            self.sec.lines.iter().filter(move |l| l.kind == k).map(|l| l.value.as_str())
        }
        /// Replaces every line of that type with one line holding `value`, or adds it in RFC
        /// order. A kind that is not a letter, or `'m'`, is ignored.
        pub fn set_field(&mut self, kind: char, value: &str) {
            if let Some(k) = valid_kind(kind) {
                self.sec.set_line(k, sanitize(value));
            }
        }
        /// Adds a line of that type after the others of its type (RFC order kept).
        pub fn push_field(&mut self, kind: char, value: &str) {
            if let Some(k) = valid_kind(kind) {
                self.sec.insert(Line { kind: k, value: sanitize(value) });
            }
        }
        /// Removes every line of that type; returns how many.
        pub fn remove_field(&mut self, kind: char) -> usize {
            let Some(k) = valid_kind(kind) else { return 0 };
            let before = self.sec.lines.len();
            self.sec.lines.retain(|l| l.kind != k);
            before - self.sec.lines.len()
        }
        /// Value of the first `a=name[:value]` (`""` for a flag such as `a=rtcp-mux`).
        /// Names compare case-insensitively.
        pub fn attr(&self, name: &str) -> Option<&str> {
            self.sec.attr_lines(name).next().map(|(_, v)| v)
        }
        /// Values of every `a=name[:value]`, in order.
        pub fn attrs<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
            self.sec.attr_lines(name).map(|(_, v)| v)
        }
        pub fn has_attr(&self, name: &str) -> bool {
            self.attr(name).is_some()
        }
        /// Replaces every `a=name` with one `a=name:value` (`a=name` when `value` is empty), in
        /// the place of the first, or adds it after the other attributes.
        pub fn set_attr(&mut self, name: &str, value: &str) {
            self.sec.set_attr(name, value);
        }
        /// Adds `a=name:value` (`a=name` when `value` is empty) after the other attributes.
        pub fn push_attr(&mut self, name: &str, value: &str) {
            self.sec.insert(Line { kind: b'a', value: attr_line(name, value) });
        }
        /// Removes every `a=name`; returns how many.
        pub fn remove_attr(&mut self, name: &str) -> usize {
            self.sec.remove_attr(name)
        }
        /// Keeps the `a=` lines for which `f(name, value)` is true.
        pub fn retain_attrs(&mut self, mut f: impl FnMut(&str, &str) -> bool) {
            self.sec.lines.retain(|l| {
                if l.kind != b'a' {
                    return true;
                }
                let (n, v) = split_attr(&l.value);
                f(n, v)
            });
        }
        /// The `c=` line of this section.
        pub fn connection(&self) -> Option<Connection> {
            self.sec.field(b'c').and_then(Connection::parse_sip)
        }
        pub fn set_connection(&mut self, c: &Connection) {
            self.sec.set_line(b'c', sanitize(c.to_string()));
        }
        /// The direction attribute of this section, if it has one.
        pub fn direction(&self) -> Option<Direction> {
            self.sec.direction()
        }
        /// Replaces any direction attribute with `d`.
        pub fn set_direction(&mut self, d: Direction) {
            self.sec.set_direction(d);
        }
        pub fn ice_ufrag(&self) -> Option<&str> {
            self.attr("ice-ufrag").map(str::trim)
        }
        /// Secret (STUN short-term credential): never log it.
        pub fn ice_pwd(&self) -> Option<&str> {
            self.attr("ice-pwd").map(str::trim)
        }
        pub fn set_ice_credentials(&mut self, ufrag: &str, pwd: &str) {
            self.set_attr("ice-ufrag", ufrag);
            self.set_attr("ice-pwd", pwd);
        }
        pub fn ice_lite(&self) -> bool {
            self.has_attr("ice-lite")
        }
        /// The well-formed `a=candidate` lines (malformed ones are skipped).
        pub fn candidates(&self) -> Vec<Candidate> {
            self.sec.attr_sips("candidate").filter_map(|v| Candidate::parse_sip(&v)).collect()
        }
        /// The well-formed `a=crypto` lines (malformed ones are skipped).
        pub fn cryptos(&self) -> Vec<Crypto> {
            self.sec.attr_sips("crypto").filter_map(|v| Crypto::parse_sip(&v)).collect()
        }
        /// Replaces every `a=crypto` with these.
        pub fn set_cryptos(&mut self, cs: &[Crypto]) {
            self.remove_attr("crypto");
            for c in cs {
                self.push_attr("crypto", &c.to_string());
            }
        }
    };
}

/// A parsed SDP.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Sdp {
    sec: Section,
    pub media: Vec<Media>,
}

/// One media section: the `m=` line parsed, and its other lines.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Media {
    /// `audio`, `video`, `application`, `image` ...
    pub media: SipStr,
    pub port: u16,
    /// The `/<number of ports>` of the m= line.
    pub port_count: Option<u16>,
    /// `RTP/AVP`, `RTP/SAVP`, `UDP/TLS/RTP/SAVPF` ...
    pub proto: SipStr,
    /// Payload types for RTP (as text, in preference order), or other format names.
    pub formats: Vec<SipStr>,
    sec: Section,
}

impl Sdp {
    /// Parses with the default limits.
    pub fn parse(body: Bytes) -> Result<Sdp, SdpError> {
        Sdp::parse_with(body, &SdpLimits::default())
    }

    pub fn parse_with(body: Bytes, limits: &SdpLimits) -> Result<Sdp, SdpError> {
        let whole = SipStr::from_utf8(body).ok_or(SdpError::NotUtf8)?;
        let text: &str = &whole;
        let mut sdp = Sdp { sec: Section::default(), media: Vec::new() };
        let mut count = 0usize;
        for (i, raw) in split_lines(text).enumerate() {
            let no = i + 1;
            let l = raw.strip_suffix('\r').unwrap_or(raw);
            if l.trim_ascii().is_empty() {
                continue;
            }
            count += 1;
            if count > limits.max_lines {
                return Err(SdpError::TooManyLines(limits.max_lines));
            }
            let b = l.as_bytes();
            if b.len() < 2 || b[1] != b'=' || !b[0].is_ascii_alphabetic() {
                return Err(SdpError::BadLine(no));
            }
            let kind = b[0];
            let value = whole.slice_ref(&l[2..]);
            if count == 1 && (kind != b'v' || value.trim_ascii() != "0") {
                return Err(SdpError::BadVersion);
            }
            if kind == b'm' {
                if sdp.media.len() >= limits.max_media {
                    return Err(SdpError::TooManyMedia(limits.max_media));
                }
                let m = Media::parse_m(&value).ok_or(SdpError::BadMediaLine(no))?;
                sdp.media.push(m);
                continue;
            }
            let sec = match sdp.media.last_mut() {
                Some(m) => &mut m.sec,
                None => &mut sdp.sec,
            };
            sec.lines.push(Line { kind, value });
        }
        if count == 0 {
            return Err(SdpError::Empty);
        }
        sdp.sec.normalize();
        for m in &mut sdp.media {
            m.sec.normalize();
        }
        Ok(sdp)
    }

    /// A new SDP: `v=0`, `o=`, `s=-`, `c=` (when given), `t=0 0`.
    pub fn new(origin: &Origin, connection: Option<&Connection>) -> Sdp {
        let mut sdp = Sdp { sec: Section::default(), media: Vec::new() };
        sdp.sec.insert(Line { kind: b'v', value: SipStr::from_static("0") });
        sdp.set_origin(origin);
        sdp.sec.insert(Line { kind: b's', value: SipStr::from_static("-") });
        if let Some(c) = connection {
            sdp.set_connection(c);
        }
        sdp.sec.insert(Line { kind: b't', value: SipStr::from_static("0 0") });
        sdp
    }

    /// Writes the SDP with CRLF line ends.
    pub fn to_bytes(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(1024);
        self.sec.write(&mut b);
        for m in &self.media {
            m.write(&mut b);
        }
        b.freeze()
    }

    section_api!();

    pub fn origin(&self) -> Option<Origin> {
        self.sec.field(b'o').and_then(Origin::parse_sip)
    }
    pub fn set_origin(&mut self, o: &Origin) {
        // the line's six fields joined by spaces, sized once (`Display` grew it field by field)
        let version = SipStr::from_u64(o.session_version);
        let fields = [&o.username, &o.session_id, &version, &o.net_type, &o.addr_type, &o.address];
        let mut line = String::with_capacity(fields.iter().map(|f| f.len() + 1).sum());
        for (i, f) in fields.into_iter().enumerate() {
            if i > 0 {
                line.push(' ');
            }
            line.push_str(f);
        }
        self.sec.set_line(b'o', sanitize(line));
    }
    /// Increments the `o=` session version (RFC 3264 8: every new offer/answer in a session).
    /// Returns false if there is no well-formed `o=` line.
    pub fn bump_version(&mut self) -> bool {
        match self.origin() {
            Some(mut o) => {
                o.session_version = o.session_version.wrapping_add(1);
                self.set_origin(&o);
                true
            }
            None => false,
        }
    }
    pub fn session_name(&self) -> Option<&str> {
        self.field('s')
    }
    /// The connection that applies to media section `i`: its own `c=` or the session's.
    pub fn media_connection(&self, i: usize) -> Option<Connection> {
        self.media.get(i)?.connection().or_else(|| self.connection())
    }
    /// The direction that applies to media section `i`: its own, the session's, or sendrecv.
    pub fn media_direction(&self, i: usize) -> Direction {
        self.media
            .get(i)
            .and_then(|m| m.direction())
            .or_else(|| self.direction())
            .unwrap_or(Direction::SendRecv)
    }
}

impl fmt::Debug for Sdp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sdp").field("lines", &self.sec.lines).field("media", &self.media).finish()
    }
}

impl fmt::Display for Sdp {
    /// The wire form (keys included): do not log it, log `{:?}` instead.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.to_bytes()))
    }
}

impl Media {
    /// A new media section without other lines.
    pub fn new(media: &str, port: u16, proto: &str, formats: &[&str]) -> Media {
        Media {
            media: sanitize_token(media),
            port,
            port_count: None,
            proto: sanitize_token(proto),
            formats: formats.iter().map(|f| sanitize_token(f)).collect(),
            sec: Section { lines: Vec::with_capacity(16), media_level: true },
        }
    }

    fn parse_m(v: &SipStr) -> Option<Media> {
        let s: &str = v;
        let mut it = s.split_ascii_whitespace();
        let media = it.next()?;
        let port_s = it.next()?;
        let proto = it.next()?;
        let (port, port_count) = match port_s.split_once('/') {
            Some((p, n)) => (p.parse().ok()?, Some(n.parse().ok()?)),
            None => (port_s.parse().ok()?, None),
        };
        Some(Media {
            media: v.slice_ref(media),
            port,
            port_count,
            proto: v.slice_ref(proto),
            formats: it.map(|f| v.slice_ref(f)).collect(),
            sec: Section { lines: Vec::new(), media_level: true },
        })
    }

    fn write(&self, b: &mut BytesMut) {
        b.put_slice(b"m=");
        b.put_slice(self.media.as_bytes());
        b.put_u8(b' ');
        b.put_slice(self.port.to_string().as_bytes());
        if let Some(n) = self.port_count {
            b.put_u8(b'/');
            b.put_slice(n.to_string().as_bytes());
        }
        b.put_u8(b' ');
        b.put_slice(self.proto.as_bytes());
        for f in &self.formats {
            b.put_u8(b' ');
            b.put_slice(f.as_bytes());
        }
        b.put_slice(b"\r\n");
        self.sec.write(b);
    }

    section_api!();

    /// True for `RTP/SAVP`, `RTP/SAVPF` and the DTLS variants.
    pub fn is_secure(&self) -> bool {
        self.proto.to_ascii_uppercase().contains("SAVP")
    }
    /// The formats that are RTP payload type numbers, in order.
    pub fn payload_types(&self) -> Vec<u8> {
        self.formats.iter().filter_map(|f| f.parse().ok()).collect()
    }
    /// `a=rtpmap` of a payload type; for a static payload type without one, the RFC 3551
    /// mapping.
    pub fn rtpmap(&self, pt: u8) -> Option<RtpMap> {
        self.sec
            .attr_lines("rtpmap")
            .filter(|(_, v)| leading_pt(v) == Some(pt))
            .find_map(|(whole, v)| RtpMap::parse_sip(&whole.slice_ref(v)).filter(|r| r.payload_type == pt))
            .or_else(|| static_rtpmap(pt))
    }
    /// Every `a=fmtp` with a well-formed payload type: (payload type, parameters), in order.
    /// With [`Media::rtpmaps`], what a codec list needs in one pass over the lines each.
    pub fn fmtps(&self) -> Vec<(u8, &str)> {
        self.sec
            .attr_lines("fmtp")
            .filter_map(|(_, v)| {
                let (p, rest) = pt_token(v);
                let pt = p.parse::<u8>().ok()?;
                token_is_pt(p, pt).then(|| (pt, rest.trim_ascii()))
            })
            .collect()
    }
    /// Every well-formed `a=rtpmap`, in order.
    pub fn rtpmaps(&self) -> Vec<RtpMap> {
        self.sec.attr_sips("rtpmap").filter_map(|v| RtpMap::parse_sip(&v)).collect()
    }
    /// Replaces the `a=rtpmap` of that payload type, or adds one.
    pub fn set_rtpmap(&mut self, r: &RtpMap) {
        use std::fmt::Write as _;
        let mut line = String::with_capacity(24 + r.encoding.len());
        let _ = write!(line, "rtpmap:{r}");
        let value = sanitize(line);
        match self.sec.lines.iter().position(|l| l.kind == b'a' && attr_value(&l.value, "rtpmap").is_some_and(|v| token_is_pt(pt_token(v).0, r.payload_type))) {
            Some(i) => self.sec.lines[i].value = value,
            None => self.sec.insert(Line { kind: b'a', value }),
        }
    }
    /// The parameters of the `a=fmtp` of a payload type (e.g. `0-16` for telephone-event).
    pub fn fmtp(&self, pt: u8) -> Option<&str> {
        self.sec.attr_lines("fmtp").find_map(|(_, v)| {
            let (p, rest) = pt_token(v);
            token_is_pt(p, pt).then(|| rest.trim_ascii())
        })
    }
    /// Replaces the `a=fmtp` of that payload type, or adds one.
    pub fn set_fmtp(&mut self, pt: u8, params: &str) {
        use std::fmt::Write as _;
        let mut line = String::with_capacity(9 + params.len());
        let _ = write!(line, "fmtp:{pt} {params}");
        let value = sanitize(line);
        match self.sec.lines.iter().position(|l| l.kind == b'a' && attr_value(&l.value, "fmtp").is_some_and(|v| token_is_pt(pt_token(v).0, pt))) {
            Some(i) => self.sec.lines[i].value = value,
            None => self.sec.insert(Line { kind: b'a', value }),
        }
    }
    /// Keeps the formats for which `f` is true; the `a=rtpmap`, `a=fmtp` and `a=rtcp-fb` lines
    /// of the others are removed too (to strip codecs an SBC does not offer).
    pub fn retain_formats(&mut self, mut f: impl FnMut(&str) -> bool) {
        let mut removed = Vec::new();
        self.formats.retain(|fm| {
            let keep = f(fm);
            if !keep {
                removed.push(fm.to_string());
            }
            keep
        });
        if removed.is_empty() {
            return;
        }
        self.sec.lines.retain(|l| {
            l.kind != b'a'
                || !removed.iter().any(|pt| {
                    is_pt_attr(&l.value, "rtpmap", pt) || is_pt_attr(&l.value, "fmtp", pt) || is_pt_attr(&l.value, "rtcp-fb", pt)
                })
        });
    }
    pub fn rtcp(&self) -> Option<Rtcp> {
        self.sec.attr_sips("rtcp").find_map(|v| Rtcp::parse_sip(&v))
    }
    pub fn set_rtcp(&mut self, r: &Rtcp) {
        self.set_attr("rtcp", &r.to_string());
    }
    pub fn rtcp_mux(&self) -> bool {
        self.has_attr("rtcp-mux")
    }
    pub fn set_rtcp_mux(&mut self, on: bool) {
        if on {
            self.set_attr("rtcp-mux", "");
        } else {
            self.remove_attr("rtcp-mux");
        }
    }
    /// `a=ptime` in milliseconds (a fraction such as `20.0` is truncated).
    pub fn ptime(&self) -> Option<u32> {
        let v = self.attr("ptime")?.trim_ascii();
        let int = v.split('.').next()?;
        int.parse().ok()
    }
    pub fn set_ptime(&mut self, ms: u32) {
        self.set_attr("ptime", &ms.to_string());
    }
}

/// True if `line` is `a=<name>:<pt> ...`.
/// The payload type a `rtpmap`/`fmtp` value starts with (`96 opus/48000/2` -> 96).
fn leading_pt(v: &str) -> Option<u8> {
    let v = v.trim_start();
    let end = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    if end == 0 || end > 3 {
        return None;
    }
    v[..end].parse().ok()
}

/// `p == pt.to_string()`, without the allocation.
fn token_is_pt(p: &str, pt: u8) -> bool {
    p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().ok() == Some(pt as u16) && (p.len() == 1 || !p.starts_with('0'))
}

/// The payload-type token a `rtpmap`/`fmtp`/`rtcp-fb` value starts with, and the rest.
fn pt_token(v: &str) -> (&str, &str) {
    let v = v.trim_start();
    v.split_once([' ', '\t']).unwrap_or((v, ""))
}

fn is_pt_attr(line: &str, name: &str, pt: &str) -> bool {
    attr_value(line, name).is_some_and(|v| pt_token(v).0 == pt)
}

/// For the m= line fields: no whitespace or line ends inside a token.
fn sanitize_token(s: &str) -> SipStr {
    if s.contains(|c: char| c.is_whitespace()) {
        SipStr::from(s.split_whitespace().collect::<Vec<_>>().join("-"))
    } else {
        SipStr::from(s)
    }
}

impl fmt::Debug for Media {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Media")
            .field("media", &self.media)
            .field("port", &self.port)
            .field("port_count", &self.port_count)
            .field("proto", &self.proto)
            .field("formats", &self.formats)
            .field("lines", &self.sec.lines)
            .finish()
    }
}

#[cfg(test)]
mod tests;
