//! The parser: start line, headers (folding, compact forms, any case, whitespace before the
//! colon), Content-Length framing. Accepts CRLF and bare LF line ends (RFC 3261 7.5 robustness).

use super::headers::{Header, HeaderName, Headers};
use super::text::SipStr;
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
}

/// Position just after the blank line ending the headers, and the start of that blank line.
fn find_header_end(buf: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while i < buf.len() {
        if buf[i] == b'\n' {
            // "\n\n" or "\n\r\n"
            if buf.get(i + 1) == Some(&b'\n') {
                return Some((i + 1, i + 2));
            }
            if buf.get(i + 1) == Some(&b'\r') && buf.get(i + 2) == Some(&b'\n') {
                return Some((i + 1, i + 3));
            }
        }
        i += 1;
    }
    None
}

fn content_length_of(head: &str) -> Result<Option<usize>, ParseError> {
    let mut found = None;
    for line in head.split('\n') {
        let Some(colon) = line.find(':') else { continue };
        let name = line[..colon].trim();
        if name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("l") {
            let v = line[colon + 1..].trim();
            if v.is_empty() || v.len() > 9 || !v.bytes().all(|b| b.is_ascii_digit()) {
                return Err(ParseError::BadContentLength);
            }
            let n: usize = v.parse().map_err(|_| ParseError::BadContentLength)?;
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
    let head = std::str::from_utf8(&buf[..body_start]).map_err(|_| ParseError::NotUtf8)?;
    let cl = content_length_of(head)?.ok_or(ParseError::MissingContentLength)?;
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
    let head = std::str::from_utf8(&buf[start..head_end]).map_err(|_| ParseError::NotUtf8)?;
    let cl = content_length_of(head)?;
    let available = buf.len() - body_start;
    let body_len = match cl {
        Some(n) if n > available => return Err(ParseError::Truncated { declared: n, available }),
        Some(n) => n,
        None if stream => return Err(ParseError::MissingContentLength),
        None => available,
    };
    let body = buf.slice(body_start..body_start + body_len);

    // Lines, as byte offsets into buf, so values stay zero-copy.
    let mut lines: Vec<(usize, usize)> = Vec::new();
    let mut ls = start;
    for (i, &b) in buf[start..head_end].iter().enumerate() {
        if b == b'\n' {
            let mut le = start + i;
            if le > ls && buf[le - 1] == b'\r' {
                le -= 1;
            }
            lines.push((ls, le));
            ls = start + i + 1;
        }
    }
    if ls < head_end {
        lines.push((ls, head_end));
    }
    let Some(&(s0, e0)) = lines.first() else { return Err(ParseError::BadStartLine) };
    let start_line = std::str::from_utf8(&buf[s0..e0]).map_err(|_| ParseError::NotUtf8)?;

    let mut headers = Headers::new();
    let mut cur: Option<(SipStr, usize, usize, Option<String>)> = None; // name, value span, folded
    let flush = |headers: &mut Headers, cur: &mut Option<(SipStr, usize, usize, Option<String>)>| -> Result<(), ParseError> {
        if let Some((name, vs, ve, folded)) = cur.take() {
            if headers.len() >= limits.max_headers {
                return Err(ParseError::TooManyHeaders(limits.max_headers));
            }
            let value = match folded {
                Some(s) => SipStr::from(s),
                None => SipStr::from_utf8(buf.slice(vs..ve)).ok_or(ParseError::NotUtf8)?,
            };
            headers.push_header(Header { name: HeaderName::new(name), value });
        }
        Ok(())
    };
    for &(s, e) in &lines[1..] {
        let line = &buf[s..e];
        if line.is_empty() {
            continue;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            // Folded continuation: join with one space.
            let Some(c) = cur.as_mut() else { return Err(ParseError::BadHeader) };
            let cont = std::str::from_utf8(line).map_err(|_| ParseError::NotUtf8)?.trim();
            let base = match c.3.take() {
                Some(s) => s,
                None => std::str::from_utf8(&buf[c.1..c.2]).map_err(|_| ParseError::NotUtf8)?.to_string(),
            };
            c.3 = Some(if cont.is_empty() { base } else if base.is_empty() { cont.to_string() } else { format!("{base} {cont}") });
            continue;
        }
        flush(&mut headers, &mut cur)?;
        let colon = line.iter().position(|&b| b == b':').ok_or(ParseError::BadHeader)?;
        let name = std::str::from_utf8(&line[..colon]).map_err(|_| ParseError::NotUtf8)?.trim();
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return Err(ParseError::BadHeader);
        }
        let mut vs = s + colon + 1;
        let mut ve = e;
        while vs < ve && (buf[vs] == b' ' || buf[vs] == b'\t') {
            vs += 1;
        }
        while ve > vs && (buf[ve - 1] == b' ' || buf[ve - 1] == b'\t') {
            ve -= 1;
        }
        cur = Some((SipStr::from(name), vs, ve, None));
    }
    flush(&mut headers, &mut cur)?;

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
        Message::Response(Response { status, reason: SipStr::from(reason), headers, body })
    } else {
        let mut parts = start_line.split(' ').filter(|p| !p.is_empty());
        let m = parts.next().ok_or(ParseError::BadStartLine)?;
        let uri = parts.next().ok_or(ParseError::BadStartLine)?;
        let ver = parts.next().ok_or(ParseError::BadStartLine)?;
        if parts.next().is_some() || !m.bytes().all(is_token_byte) || !uri.contains(':') {
            return Err(ParseError::BadStartLine);
        }
        if !ver.eq_ignore_ascii_case("SIP/2.0") {
            return Err(ParseError::BadVersion);
        }
        Message::Request(Request { method: Method::parse(m), uri: SipStr::from(uri), headers, body })
    };
    for (name, label) in [("Via", "Via"), ("Call-ID", "Call-ID"), ("CSeq", "CSeq"), ("From", "From"), ("To", "To")] {
        if !msg.headers().contains(name) {
            return Err(ParseError::MissingHeader(label));
        }
    }
    Ok(msg)
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)
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
        assert_eq!(r.from_tag().as_deref(), Some("1"));
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
        assert_eq!(r.to_tag().as_deref(), Some("2"));
    }
}
