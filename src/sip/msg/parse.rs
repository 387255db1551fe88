//! The parser: start line, headers (folding, compact forms, any case, whitespace before the
//! colon), Content-Length framing. Accepts CRLF and bare LF line ends (RFC 3261 7.5 robustness).

use super::headers::{Header, HeaderName, Headers};
use super::text::{is_token_str, SipStr};
use super::uri::{CSeq, NameAddr, Uri, Via};
use super::{Message, Method, Request, Response};
use bytes::Bytes;

/// Size caps applied to every message from the network.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest whole message (start line + headers + body), bytes.
    pub max_message: usize,
    /// Most header lines.
    pub max_headers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_message: 65_535, max_headers: 256 }
    }
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ParseError {
    #[error("message larger than {0} bytes")]
    TooLarge(usize),
    #[error("more than {0} header lines")]
    TooManyHeaders(usize),
    #[error("message not UTF-8 in its start line or headers")]
    NotUtf8,
    #[error("bad start line")]
    BadStartLine,
    #[error("bad SIP version")]
    BadVersion,
    #[error("bad status code")]
    BadStatus,
    #[error("bad header line")]
    BadHeader,
    #[error("bad Content-Length")]
    BadContentLength,
    #[error("Content-Length {declared} beyond the {available} bytes received")]
    Truncated { declared: usize, available: usize },
    #[error("Content-Length missing on a stream transport")]
    MissingContentLength,
    #[error("missing mandatory header {0}")]
    MissingHeader(&'static str),
    #[error("end of headers not found")]
    Incomplete,
    #[error("bad Request-URI")]
    BadRequestUri,
    #[error("bad {0} header")]
    BadHeaderValue(&'static str),
}

/// Position just after the blank line ending the headers, and the start of that blank line.
fn find_header_end(buf: &[u8]) -> Option<(usize, usize)> {
    for i in memchr::memchr_iter(b'\n', buf) {
        // "\n\n" or "\n\r\n"
        match (buf.get(i + 1), buf.get(i + 2)) {
            (Some(b'\n'), _) => return Some((i + 1, i + 2)),
            (Some(b'\r'), Some(b'\n')) => return Some((i + 1, i + 3)),
            _ => {}
        }
    }
    None
}

/// The Content-Length of a head (bytes: framing needs no UTF-8 check; parsing does it once).
fn content_length_of(head: &[u8]) -> Result<Option<usize>, ParseError> {
    let mut found = None;
    let mut start = 0;
    let ends = memchr::memchr_iter(b'\n', head).chain(std::iter::once(head.len()));
    for end in ends {
        let line = &head[start..end];
        start = end + 1;
        // Only "Content-Length" and its compact form "l" qualify (any case).
        if !matches!(line.first(), Some(b'c' | b'C' | b'l' | b'L')) {
            continue;
        }
        let Some(colon) = memchr::memchr(b':', line) else { continue };
        let name = line[..colon].trim_ascii();
        if name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"l") {
            let v = line[colon + 1..].trim_ascii();
            if v.is_empty() || v.len() > 9 || !v.iter().all(|b| b.is_ascii_digit()) {
                return Err(ParseError::BadContentLength);
            }
            let n = v.iter().fold(0usize, |n, &d| n * 10 + (d - b'0') as usize);
            if let Some(prev) = found {
                if prev != n {
                    return Err(ParseError::BadContentLength);
                }
            }
            found = Some(n);
        }
    }
    Ok(found)
}

/// Stream framing: given the bytes buffered from a TCP/TLS connection (leading CRLF keep-alives
/// already consumed), returns the length of the first complete message, `None` if more bytes
/// are needed, or an error if the stream is unusable (too large, bad Content-Length).
pub fn frame_len(buf: &[u8], limits: &Limits) -> Result<Option<usize>, ParseError> {
    let Some((_, body_start)) = find_header_end(buf) else {
        if buf.len() > limits.max_message {
            return Err(ParseError::TooLarge(limits.max_message));
        }
        return Ok(None);
    };
    let cl = content_length_of(&buf[..body_start])?.ok_or(ParseError::MissingContentLength)?;
    let total = body_start.checked_add(cl).ok_or(ParseError::BadContentLength)?;
    if total > limits.max_message {
        return Err(ParseError::TooLarge(limits.max_message));
    }
    Ok(if buf.len() >= total { Some(total) } else { None })
}

/// Parses one message from a stream frame (as cut by `frame_len`): Content-Length required.
pub fn parse(buf: Bytes, limits: &Limits) -> Result<Message, ParseError> {
    parse_inner(buf, limits, true)
}

/// Parses one datagram: without Content-Length the body is the rest of the datagram; a
/// Content-Length beyond the datagram is an error (RFC 3261 18.3), bytes after it are ignored.
pub fn parse_datagram(buf: Bytes, limits: &Limits) -> Result<Message, ParseError> {
    parse_inner(buf, limits, false)
}

fn parse_inner(buf: Bytes, limits: &Limits, stream: bool) -> Result<Message, ParseError> {
    if buf.len() > limits.max_message {
        return Err(ParseError::TooLarge(limits.max_message));
    }
    // Skip leading blank lines (RFC 3261 7.5).
    let mut start = 0;
    while start < buf.len() && (buf[start] == b'\r' || buf[start] == b'\n') {
        start += 1;
    }
    let (head_end, body_start) = find_header_end(&buf[start..]).ok_or(ParseError::Incomplete)?;
    let (head_end, body_start) = (start + head_end, start + body_start);
    // The head is checked for UTF-8 once; every line, name and value below is a sub-slice of
    // it (split at ASCII bytes, so at char boundaries) and shares its buffer.
    let head_str = SipStr::from_utf8(buf.slice(start..head_end)).ok_or(ParseError::NotUtf8)?;
    let head: &str = &head_str;
    let cl = content_length_of(head.as_bytes())?;
    let available = buf.len() - body_start;
    let body_len = match cl {
        Some(n) if n > available => return Err(ParseError::Truncated { declared: n, available }),
        Some(n) => n,
        None if stream => return Err(ParseError::MissingContentLength),
        None => available,
    };
    let body = buf.slice(body_start..body_start + body_len);

    // Lines, as byte offsets into the head, so values stay zero-copy.
    let hb = head.as_bytes();
    let mut lines: Vec<(usize, usize)> = Vec::with_capacity(24);
    let mut ls = 0;
    for i in memchr::memchr_iter(b'\n', hb) {
        let mut le = i;
        if le > ls && hb[le - 1] == b'\r' {
            le -= 1;
        }
        lines.push((ls, le));
        ls = i + 1;
    }
    if ls < hb.len() {
        lines.push((ls, hb.len()));
    }
    // A CR that does not end a line is not allowed anywhere in the start line or headers
    // (RFC 3261 25.1: not even in a quoted-pair); a peer could read it as a line end.
    for (i, &(s, e)) in lines.iter().enumerate() {
        if memchr::memchr(b'\r', &hb[s..e]).is_some() {
            return Err(if i == 0 { ParseError::BadStartLine } else { ParseError::BadHeader });
        }
    }
    let line_str = |s: usize, e: usize| head.get(s..e).ok_or(ParseError::NotUtf8);
    let Some(&(s0, e0)) = lines.first() else { return Err(ParseError::BadStartLine) };
    let start_line = line_str(s0, e0)?;

    // Logical header lines: a line starting with SP/HT continues the one before (RFC 3261
    // 7.3.1), even before the colon ("Call-ID\r\n : x"). Unfolded lines stay zero-copy.
    let mut logical: Vec<((usize, usize), Option<String>)> = Vec::with_capacity(lines.len());
    for &(s, e) in &lines[1..] {
        let line = &hb[s..e];
        if line.is_empty() {
            continue;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            let Some(last) = logical.last_mut() else { return Err(ParseError::BadHeader) };
            let cont = line_str(s, e)?.trim();
            let base = match last.1.take() {
                Some(b) => b,
                None => line_str(last.0 .0, last.0 .1)?.to_string(),
            };
            let base = base.trim_end();
            last.1 = Some(if cont.is_empty() { base.to_string() } else { format!("{base} {cont}") });
            continue;
        }
        if logical.len() >= limits.max_headers {
            return Err(ParseError::TooManyHeaders(limits.max_headers));
        }
        logical.push(((s, e), None));
    }
    let mut headers = Headers::with_capacity(logical.len());
    for ((s, e), folded) in logical {
        let header = match folded {
            Some(text) => {
                let colon = text.find(':').ok_or(ParseError::BadHeader)?;
                let name = text[..colon].trim();
                check_header_name(name)?;
                Header { name: HeaderName::new(SipStr::from(name)), value: SipStr::from(text[colon + 1..].trim()) }
            }
            None => {
                let line = line_str(s, e)?;
                let colon = super::text::find_byte(b':', line.as_bytes()).ok_or(ParseError::BadHeader)?;
                // SIP's whitespace is ASCII (SP and HT): no Unicode tables per header line
                let name = line[..colon].trim_ascii();
                check_header_name(name)?;
                let value = line[colon + 1..].trim_matches([' ', '\t']);
                Header { name: HeaderName::parsed(name, &head_str), value: head_str.slice_ref(value) }
            }
        };
        // the name was checked above; a line holds no CR (checked) and no LF (split at)
        headers.push_parsed(header);
    }
    // Every Content-Length line (folded ones included) agrees with the framing length.
    for v in headers.get_all("Content-Length") {
        let v = v.trim_ascii();
        if v.is_empty() || v.len() > 9 || !v.bytes().all(|b| b.is_ascii_digit()) || v.parse::<usize>().ok() != cl {
            return Err(ParseError::BadContentLength);
        }
    }

    let msg = if let Some(rest) = start_line.strip_prefix("SIP/") {
        let mut parts = rest.splitn(3, ' ');
        let ver = parts.next().ok_or(ParseError::BadStartLine)?;
        if ver != "2.0" {
            return Err(ParseError::BadVersion);
        }
        let code = parts.next().ok_or(ParseError::BadStartLine)?;
        if code.len() != 3 {
            return Err(ParseError::BadStatus);
        }
        let status: u16 = code.parse().map_err(|_| ParseError::BadStatus)?;
        if !(100..700).contains(&status) {
            return Err(ParseError::BadStatus);
        }
        let reason = parts.next().unwrap_or("").trim();
        Message::Response(Response { status, reason: head_str.slice_ref(reason), headers, body })
    } else {
        // Exactly one SP between the elements (RFC 3261 25.1; RFC 4475 lwsstart, trws, lwsruri).
        let mut parts = start_line.split(' ');
        let m = parts.next().ok_or(ParseError::BadStartLine)?;
        let uri = parts.next().ok_or(ParseError::BadStartLine)?;
        let ver = parts.next().ok_or(ParseError::BadStartLine)?;
        if parts.next().is_some() || !is_token_str(m) || !uri.contains(':') {
            return Err(ParseError::BadStartLine);
        }
        if !ver.eq_ignore_ascii_case("SIP/2.0") {
            return Err(ParseError::BadVersion);
        }
        // The Request-URI is a URI (not "<uri>", RFC 4475 ltgtruri); a SIP one carries no
        // headers (RFC 3261 19.1.1; RFC 4475 escruri).
        let ruri = Uri::parse(uri).map_err(|_| ParseError::BadRequestUri)?;
        if (ruri.scheme == "sip" || ruri.scheme == "sips") && ruri.headers.is_some() {
            return Err(ParseError::BadRequestUri);
        }
        Message::Request(Request { method: Method::parse(m), uri: head_str.slice_ref(uri), headers, body })
    };
    for (name, label) in [("Via", "Via"), ("Call-ID", "Call-ID"), ("CSeq", "CSeq"), ("From", "From"), ("To", "To")] {
        match msg.headers().get(name) {
            Some(v) if !v.trim_ascii().is_empty() => {}
            _ => return Err(ParseError::MissingHeader(label)),
        }
    }
    validate(&msg)?;
    Ok(msg)
}

/// Checks the headers every layer above relies on, so that a message that parses has them
/// usable: CSeq (number and method, the request's method), From/To (name-addr), every Via
/// value, Max-Forwards (0..=255) and a single Call-ID, From, To and CSeq.
fn validate(msg: &Message) -> Result<(), ParseError> {
    let h = msg.headers();
    // One pass over the lines: known names are stored in their canonical spelling
    // (`HeaderName`), so each line is classified by one `match` on its name.
    let (mut call_id, mut cseq, mut from, mut to, mut max_forwards, mut content_type) = (0u8, None, None, None, None, 0u8);
    let mut first_via = true;
    let twice = |name: &'static str| ParseError::BadHeaderValue(name);
    for line in h.iter() {
        let v = line.value.as_str();
        match line.name.as_str() {
            "Call-ID" => call_id += 1,
            "Content-Type" => content_type += 1,
            "CSeq" if cseq.replace(v).is_some() => return Err(twice("CSeq")),
            "From" if from.replace(v).is_some() => return Err(twice("From")),
            "To" if to.replace(v).is_some() => return Err(twice("To")),
            "Max-Forwards" if max_forwards.replace(v).is_some() => return Err(twice("Max-Forwards")),
            "Via" => {
                for (i, part) in super::text::comma_parts(v).enumerate() {
                    // the top Via is parsed into the headers' cache, where the transaction
                    // layer finds it; the others are checked
                    let ok = if first_via && i == 0 { h.top_via().is_some() } else { Via::parse(part).is_ok() };
                    if !ok {
                        return Err(ParseError::BadHeaderValue("Via"));
                    }
                }
                first_via = false;
            }
            _ => {}
        }
    }
    if call_id > 1 {
        return Err(twice("Call-ID"));
    }
    if content_type > 1 {
        return Err(twice("Content-Type"));
    }
    let cseq = cseq.map(CSeq::parse).transpose().map_err(|_| ParseError::BadHeaderValue("CSeq"))?;
    if let (Message::Request(r), Some(c)) = (msg, &cseq) {
        if c.method != r.method {
            return Err(ParseError::BadHeaderValue("CSeq"));
        }
    }
    // From and To are checked without being built (most messages are read for their tags
    // only, `uri::tag_of`).
    if from.is_some_and(|v| NameAddr::check(v).is_err()) {
        return Err(ParseError::BadHeaderValue("From"));
    }
    if to.is_some_and(|v| NameAddr::check(v).is_err()) {
        return Err(ParseError::BadHeaderValue("To"));
    }
    if let Some(mf) = max_forwards {
        let ok = !mf.is_empty() && mf.len() <= 8 && mf.bytes().all(|b| b.is_ascii_digit()) && mf.parse::<u32>().is_ok_and(|n| n <= 255);
        if !ok {
            return Err(ParseError::BadHeaderValue("Max-Forwards"));
        }
    }
    Ok(())
}

fn check_header_name(name: &str) -> Result<(), ParseError> {
    if !is_token_str(name) {
        return Err(ParseError::BadHeader);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const INVITE: &str = "INVITE sip:+4681234711@sbc.example.com:5061;user=phone SIP/2.0\r\n\
v: SIP/2.0/TLS 52.114.1.1:5061;branch=z9hG4bKabc, SIP/2.0/TLS 10.0.0.1;branch=z9hG4bKdef\r\n\
Max-Forwards: 70\r\n\
f: <sip:+4687654321@sip.pstnhub.microsoft.com>;tag=1\r\n\
t: <sip:+4681234711@sbc.example.com>\r\n\
i: call-1@x\r\n\
CSeq : 1 INVITE\r\n\
Subject: folded\r\n  line\r\n\
c: application/sdp\r\n\
l: 4\r\n\
\r\n\
v=0\n";

    #[test]
    fn parses_compact_folded_and_lists() {
        let m = parse(Bytes::from_static(INVITE.as_bytes()), &Limits::default()).unwrap();
        let Message::Request(r) = m else { panic!() };
        assert_eq!(r.method, Method::Invite);
        assert_eq!(r.call_id(), Some("call-1@x"));
        assert_eq!(r.headers.values("Via").len(), 2);
        assert_eq!(r.headers.get("Subject"), Some("folded line"));
        assert_eq!(r.cseq().unwrap().seq, 1);
        assert_eq!(&r.body[..], b"v=0\n");
        assert_eq!(r.from_tag(), Some("1"));
    }

    #[test]
    fn content_length_beyond_datagram_is_error() {
        let s = INVITE.replace("l: 4", "l: 400");
        assert!(matches!(
            parse_datagram(Bytes::from(s), &Limits::default()),
            Err(ParseError::Truncated { .. })
        ));
    }

    #[test]
    fn huge_content_length_is_error() {
        let s = INVITE.replace("l: 4", "l: 99999999999999999999");
        assert!(parse_datagram(Bytes::from(s.clone()), &Limits::default()).is_err());
        assert!(frame_len(s.as_bytes(), &Limits::default()).is_err());
    }

    #[test]
    fn framing() {
        let l = Limits::default();
        let b = INVITE.as_bytes();
        assert_eq!(frame_len(&b[..b.len() - 1], &l).unwrap(), None);
        assert_eq!(frame_len(b, &l).unwrap(), Some(b.len()));
        let mut two = b.to_vec();
        two.extend_from_slice(b);
        assert_eq!(frame_len(&two, &l).unwrap(), Some(b.len()));
    }

    #[test]
    fn roundtrip() {
        let m = parse(Bytes::from_static(INVITE.as_bytes()), &Limits::default()).unwrap();
        let out = m.to_bytes();
        let m2 = parse(out.clone(), &Limits::default()).unwrap();
        assert_eq!(m2.to_bytes(), out);
    }

    #[test]
    fn response_line() {
        let s = "SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
        let Message::Response(r) = parse(Bytes::from(s), &Limits::default()).unwrap() else { panic!() };
        assert_eq!(r.status, 180);
        assert_eq!(r.to_tag(), Some("2"));
    }
}
