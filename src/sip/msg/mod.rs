//! SIP messages (RFC 3261 section 7) and SDP: parse and write.
//!
//! Why not `rsip` (named by the design card): it leaves compact header forms unparsed, rejects
//! folding and whitespace before the colon and drops the second of a comma-joined Via
//! (see ../shared/REFERENCE.md). The parser here is our own, zero-copy over `bytes::Bytes`:
//! header values and bodies are slices of the receive buffer (`SipStr`), only folded lines
//! allocate. Every length from the network is checked against the buffer and the `Limits`; a
//! malformed message is a `ParseError`, never a panic (property tests and a fuzz target cover it).

mod headers;
mod parse;
pub mod sdp;
mod text;
#[cfg(test)]
mod torture;
mod uri;

pub use headers::{canonical_name, Header, HeaderName, Headers};
pub use parse::{frame_len, parse, parse_datagram, Limits, ParseError};
pub use text::{comma_parts, push_u64, SipStr};
pub use uri::{tag_of, CSeq, NameAddr, Params, Uri, Via};

use bytes::{BufMut, Bytes, BytesMut};
use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    Invite,
    Ack,
    Bye,
    Cancel,
    Options,
    Register,
    Refer,
    Notify,
    Subscribe,
    Update,
    Prack,
    Info,
    Message,
    Publish,
    Other(String),
}

impl Method {
    pub fn parse(s: &str) -> Method {
        match s {
            "INVITE" => Method::Invite,
            "ACK" => Method::Ack,
            "BYE" => Method::Bye,
            "CANCEL" => Method::Cancel,
            "OPTIONS" => Method::Options,
            "REGISTER" => Method::Register,
            "REFER" => Method::Refer,
            "NOTIFY" => Method::Notify,
            "SUBSCRIBE" => Method::Subscribe,
            "UPDATE" => Method::Update,
            "PRACK" => Method::Prack,
            "INFO" => Method::Info,
            "MESSAGE" => Method::Message,
            "PUBLISH" => Method::Publish,
            o => Method::Other(o.to_string()),
        }
    }
    pub fn as_str(&self) -> &str {
        match self {
            Method::Invite => "INVITE",
            Method::Ack => "ACK",
            Method::Bye => "BYE",
            Method::Cancel => "CANCEL",
            Method::Options => "OPTIONS",
            Method::Register => "REGISTER",
            Method::Refer => "REFER",
            Method::Notify => "NOTIFY",
            Method::Subscribe => "SUBSCRIBE",
            Method::Update => "UPDATE",
            Method::Prack => "PRACK",
            Method::Info => "INFO",
            Method::Message => "MESSAGE",
            Method::Publish => "PUBLISH",
            Method::Other(s) => s,
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone)]
pub struct Request {
    pub method: Method,
    pub uri: SipStr,
    pub headers: Headers,
    pub body: Bytes,
}

#[derive(Clone)]
pub struct Response {
    pub status: u16,
    pub reason: SipStr,
    pub headers: Headers,
    pub body: Bytes,
}

#[derive(Clone, Debug)]
pub enum Message {
    Request(Request),
    Response(Response),
}

/// `Debug` shows the body as text with SDP secrets (SRTP keys, ICE passwords) redacted.
struct BodyDebug<'a>(&'a Bytes);
impl fmt::Debug for BodyDebug<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&sdp::redact_secrets(&String::from_utf8_lossy(self.0)), f)
    }
}

impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("method", &self.method)
            .field("uri", &self.uri)
            .field("headers", &self.headers)
            .field("body", &BodyDebug(&self.body))
            .finish()
    }
}

impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Response")
            .field("status", &self.status)
            .field("reason", &self.reason)
            .field("headers", &self.headers)
            .field("body", &BodyDebug(&self.body))
            .finish()
    }
}

/// Standard reason phrase for a status code.
pub fn reason_phrase(code: u16) -> &'static str {
    match code {
        100 => "Trying",
        180 => "Ringing",
        181 => "Call Is Being Forwarded",
        182 => "Queued",
        183 => "Session Progress",
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        415 => "Unsupported Media Type",
        420 => "Bad Extension",
        422 => "Session Interval Too Small",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        482 => "Loop Detected",
        483 => "Too Many Hops",
        484 => "Address Incomplete",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        491 => "Request Pending",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Server Time-out",
        513 => "Message Too Large",
        600 => "Busy Everywhere",
        603 => "Decline",
        604 => "Does Not Exist Anywhere",
        606 => "Not Acceptable",
        _ => match code / 100 {
            1 => "Progress",
            2 => "OK",
            3 => "Redirect",
            4 => "Client Error",
            5 => "Server Error",
            _ => "Global Failure",
        },
    }
}

macro_rules! common_accessors {
    () => {
        pub fn call_id(&self) -> Option<&str> {
            self.headers.get("Call-ID")
        }
        pub fn cseq(&self) -> Option<CSeq> {
            self.headers.get("CSeq").and_then(|v| CSeq::parse(v).ok())
        }
        /// The topmost Via (first value of the first Via line).
        pub fn top_via(&self) -> Option<&Via> {
            self.headers.top_via()
        }
        pub fn from_hdr(&self) -> Option<&NameAddr> {
            self.headers.from_addr()
        }
        pub fn to_hdr(&self) -> Option<&NameAddr> {
            self.headers.to_addr()
        }
        /// The From tag, read from the header text (see [`uri::tag_of`]).
        pub fn from_tag(&self) -> Option<&str> {
            self.headers.get("From").and_then(uri::tag_of)
        }
        pub fn to_tag(&self) -> Option<&str> {
            self.headers.get("To").and_then(uri::tag_of)
        }
        pub fn content_type(&self) -> Option<&str> {
            self.headers.get("Content-Type")
        }
    };
}

impl Request {
    pub fn new(method: Method, uri: impl Into<SipStr>) -> Request {
        Request { method, uri: uri.into(), headers: Headers::new(), body: Bytes::new() }
    }
    common_accessors!();

    /// Writes the request; Content-Length is always written from the actual body.
    pub fn to_bytes(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(wire_len(&self.headers, &self.body) + self.uri.len() + 32);
        put_line_safe(&mut b, self.method.as_str().as_bytes());
        b.put_u8(b' ');
        put_line_safe(&mut b, self.uri.as_bytes());
        b.put_slice(b" SIP/2.0\r\n");
        write_headers(&mut b, &self.headers, &self.body);
        b.freeze()
    }

    /// A response to this request as RFC 3261 8.2.6 says: Via, From, To, Call-ID and CSeq
    /// copied; To gets `to_tag` when given and the request's To has none.
    pub fn response(&self, status: u16, to_tag: Option<&str>) -> Response {
        let mut r = Response {
            status,
            reason: SipStr::from_static(reason_phrase(status)),
            // the copied lines, and the room for what a core adds (Contact, identity, body)
            headers: Headers::with_capacity(self.headers.len().min(8) + 8),
            body: Bytes::new(),
        };
        // known names are stored in their canonical spelling (`HeaderName`)
        for h in self.headers.iter() {
            match h.name.as_str() {
                "Via" | "From" | "Call-ID" | "CSeq" => r.headers.push_header(h.clone()),
                "To" => {
                    let tag = to_tag.filter(|_| status != 100 && NameAddr::check(&h.value).is_ok() && uri::tag_of(&h.value).is_none());
                    match tag {
                        Some(tag) => {
                            let mut v = String::with_capacity(h.value.len() + 5 + tag.len());
                            v.push_str(&h.value);
                            v.push_str(";tag=");
                            v.push_str(tag);
                            r.headers.push("To", v);
                        }
                        None => r.headers.push_header(h.clone()),
                    }
                }
                _ => {}
            }
        }
        if status == 100 {
            if let Some(ts) = self.headers.get("Timestamp") {
                r.headers.push("Timestamp", ts.to_string());
            }
        }
        r
    }
}

impl Response {
    common_accessors!();

    pub fn is_provisional(&self) -> bool {
        self.status < 200
    }
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
    pub fn to_bytes(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(wire_len(&self.headers, &self.body) + self.reason.len() + 16);
        b.put_slice(b"SIP/2.0 ");
        put_decimal(&mut b, self.status.into());
        b.put_u8(b' ');
        put_line_safe(&mut b, self.reason.as_bytes());
        b.put_slice(b"\r\n");
        write_headers(&mut b, &self.headers, &self.body);
        b.freeze()
    }
}

impl Message {
    pub fn headers(&self) -> &Headers {
        match self {
            Message::Request(r) => &r.headers,
            Message::Response(r) => &r.headers,
        }
    }
    pub fn headers_mut(&mut self) -> &mut Headers {
        match self {
            Message::Request(r) => &mut r.headers,
            Message::Response(r) => &mut r.headers,
        }
    }
    pub fn body(&self) -> &Bytes {
        match self {
            Message::Request(r) => &r.body,
            Message::Response(r) => &r.body,
        }
    }
    pub fn to_bytes(&self) -> Bytes {
        match self {
            Message::Request(r) => r.to_bytes(),
            Message::Response(r) => r.to_bytes(),
        }
    }
}

/// Writes bytes of a start line or header line; a CR or LF (which the setters never store, but
/// a value from a received message may hold as a lone CR) is written as a space, so nothing
/// written here can end the line early (no header injection, no request smuggling).
fn put_line_safe(b: &mut BytesMut, s: &[u8]) {
    if text::has_line_end(s) {
        b.extend(s.iter().map(|&c| if c == b'\r' || c == b'\n' { b' ' } else { c }));
    } else {
        b.put_slice(s);
    }
}

/// Writes `n` in decimal, without a `String` in between.
fn put_decimal(b: &mut BytesMut, n: usize) {
    let mut digits = [0u8; 20];
    let len = text::write_u64(&mut digits, n as u64);
    b.put_slice(&digits[..len]);
}

/// The bytes `write_headers` writes: the buffer is sized once (growing it was 4 % of the
/// instructions per call, bench/PROFILE.md fifth pass).
fn wire_len(headers: &Headers, body: &Bytes) -> usize {
    headers.iter().map(|h| h.name.as_str().len() + h.value.len() + 4).sum::<usize>() + 32 + body.len()
}

fn write_headers(b: &mut BytesMut, headers: &Headers, body: &Bytes) {
    for h in headers.iter() {
        if h.name.as_str() == "Content-Length" {
            continue;
        }
        put_line_safe(b, h.name.as_str().as_bytes());
        b.put_slice(b": ");
        put_line_safe(b, h.value.as_bytes());
        b.put_slice(b"\r\n");
    }
    b.put_slice(b"Content-Length: ");
    put_decimal(b, body.len());
    b.put_slice(b"\r\n\r\n");
    b.put_slice(body);
}
