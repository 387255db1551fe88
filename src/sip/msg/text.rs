//! `SipStr`: an immutable UTF-8 string, short ones inline, long ones sharing the receive
//! buffer (`bytes::Bytes`).

use bytes::Bytes;
use bytestring::ByteString;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;

/// Strings up to this many bytes are kept inline (no allocation, no reference count).
pub(crate) const INLINE: usize = 23;

/// A cheaply clonable UTF-8 string: a slice of a received message or an owned string.
///
/// - Up to [`INLINE`] bytes it is kept inline: building one from a `&str` or a `String`
///   allocates nothing, and a clone or a drop touches no shared counter. Most header values
///   and SDP fields of a call are this short (`70`, `1 INVITE`, `0 PCMU/8000`, tags, ports).
///   Under load the reference counts of shared slices were 5-7 % of the samples, with their
///   cache lines moving between the signalling threads (bench/PROFILE.md, seventh pass).
/// - Longer strings are a `bytestring::ByteString`: a zero-copy slice of the buffer they were
///   parsed from, or of their own `String`.
///
/// Either way UTF-8 is checked once, at construction, and `Deref` hands out `&str` without
/// checking again (re-validating on every access was 15-19 % of the instructions under load).
///
/// No crate found does both (inline short strings, and zero-copy slices of a `Bytes` buffer):
/// `smol_str` and `compact_str` copy long strings, `hipstr` shares its own buffer type.
#[derive(Clone)]
pub struct SipStr(Repr);

#[derive(Clone)]
enum Repr {
    /// Length, then the bytes; `buf[..len]` is always a whole UTF-8 string.
    Inline(u8, [u8; INLINE]),
    Shared(ByteString),
}

impl Default for SipStr {
    fn default() -> SipStr {
        SipStr(Repr::Inline(0, [0; INLINE]))
    }
}

impl SipStr {
    /// Wraps bytes if they are UTF-8. Returns `None` otherwise.
    pub fn from_utf8(b: Bytes) -> Option<SipStr> {
        ByteString::try_from(b).ok().map(|s| SipStr(Repr::Shared(s)))
    }
    pub const fn from_static(s: &'static str) -> SipStr {
        SipStr(Repr::Shared(ByteString::from_static(s)))
    }
    /// `s` inline if it fits.
    fn inline(s: &str) -> Option<SipStr> {
        (s.len() <= INLINE).then(|| {
            let mut buf = [0u8; INLINE];
            buf[..s.len()].copy_from_slice(s.as_bytes());
            SipStr(Repr::Inline(s.len() as u8, buf))
        })
    }
    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Inline(n, buf) => {
                let b = &buf[..*n as usize];
                debug_assert!(std::str::from_utf8(b).is_ok());
                // SAFETY: an inline string is only ever made (`SipStr::inline`) by copying all
                // the bytes of a `&str`, and never changed after.
                unsafe { std::str::from_utf8_unchecked(b) }
            }
            Repr::Shared(s) => s,
        }
    }
    /// A zero-copy `SipStr` for `sub`, which must be a sub-slice of `self` (as handed out by
    /// `as_str()`/`Deref`); a short `sub` is copied inline, and a string that is not inside
    /// `self` is copied.
    pub fn slice_ref(&self, sub: &str) -> SipStr {
        if let Some(s) = SipStr::inline(sub) {
            return s;
        }
        if let Repr::Shared(whole) = &self.0 {
            let (base, p) = (whole.as_ptr() as usize, sub.as_ptr() as usize);
            if p >= base && p + sub.len() <= base + whole.len() {
                return SipStr(Repr::Shared(whole.slice_ref(sub)));
            }
        }
        SipStr::from(sub)
    }
}

impl SipStr {
    /// `n` in decimal, inline (no `fmt` machinery: this writes the `o=` line's numbers).
    pub fn from_u64(n: u64) -> SipStr {
        let mut buf = [0u8; 20];
        let len = write_u64(&mut buf, n);
        SipStr::inline(std::str::from_utf8(&buf[..len]).unwrap_or("0")).unwrap_or_default()
    }
    /// An IP address as text: IPv4 dotted quad written inline, IPv6 through `Display`
    /// (`Ipv4Addr`'s `Display` cost ~1,500 instructions; every SDP sent writes two or three).
    pub fn from_ip(ip: std::net::IpAddr) -> SipStr {
        match ip {
            std::net::IpAddr::V4(v4) => {
                let mut buf = [0u8; 15];
                let mut len = 0;
                for (i, o) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        buf[len] = b'.';
                        len += 1;
                    }
                    len += write_u64(&mut buf[len..], o.into());
                }
                SipStr::inline(std::str::from_utf8(&buf[..len]).unwrap_or("0.0.0.0")).unwrap_or_default()
            }
            v6 => SipStr::from(v6.to_string()),
        }
    }
}

/// Appends `n` in decimal (no `fmt` machinery).
pub fn push_u64(s: &mut String, n: u64) {
    let mut buf = [0u8; 20];
    let len = write_u64(&mut buf, n);
    s.push_str(std::str::from_utf8(&buf[..len]).unwrap_or("0"));
}

/// `s` split at every place `find` gives (a byte offset into what is left): the pieces between,
/// the last one included, as `str::split` gives them.
pub(crate) fn split_where<'a>(s: &'a str, find: impl Fn(&[u8]) -> Option<usize> + 'a) -> impl Iterator<Item = &'a str> + 'a {
    let mut rest = Some(s);
    std::iter::from_fn(move || {
        let t = rest?;
        match find(t.as_bytes()) {
            Some(i) => {
                rest = Some(&t[i + 1..]);
                Some(&t[..i])
            }
            None => {
                rest = None;
                Some(t)
            }
        }
    })
}

/// Writes `n` in decimal at the start of `buf` (which must hold its digits); returns the length.
pub(crate) fn write_u64(buf: &mut [u8], mut n: u64) -> usize {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let len = digits.len() - i;
    buf[..len].copy_from_slice(&digits[i..]);
    len
}

impl Deref for SipStr {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl From<String> for SipStr {
    fn from(s: String) -> Self {
        SipStr::inline(&s).unwrap_or_else(|| SipStr(Repr::Shared(ByteString::from(s))))
    }
}
impl From<&str> for SipStr {
    fn from(s: &str) -> Self {
        SipStr::inline(s).unwrap_or_else(|| SipStr(Repr::Shared(ByteString::from(s))))
    }
}
impl PartialEq for SipStr {
    fn eq(&self, o: &SipStr) -> bool {
        self.as_str() == o.as_str()
    }
}
impl Eq for SipStr {}
impl Hash for SipStr {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.as_str().hash(h)
    }
}
impl fmt::Display for SipStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
impl fmt::Debug for SipStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}
impl PartialEq<str> for SipStr {
    fn eq(&self, o: &str) -> bool {
        self.as_str() == o
    }
}
impl PartialEq<&str> for SipStr {
    fn eq(&self, o: &&str) -> bool {
        self.as_str() == *o
    }
}

/// RFC 3261 token characters: alphanumerics and `-.!%*_+`'~`.
const TOKEN: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~');
        i += 1;
    }
    t
};

/// True for an RFC 3261 token character (a table lookup: this runs for every byte of every
/// header name and parameter name received).
pub(crate) fn is_token(b: u8) -> bool {
    TOKEN[b as usize]
}

/// True for a non-empty run of token characters (a header name, a method, a parameter name).
pub(crate) fn is_token_str(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_token)
}

/// The parts of a header value split at top-level commas (commas inside quoted strings and
/// `<...>` do not split), one by one: each trimmed, empty parts skipped. `comma_parts(v).next()`
/// is the first value of a header line.
pub fn comma_parts(v: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(v);
    std::iter::from_fn(move || loop {
        let s = rest?;
        // bytes, not chars: every delimiter is ASCII, and no byte of a multi-byte UTF-8
        // character is, so the split points are the same and always char boundaries
        let end = top_level(s.as_bytes(), b',', true);
        let (part, next) = match end {
            Some(i) => (&s[..i], Some(&s[i + 1..])),
            None => (s, None),
        };
        rest = next;
        let part = part.trim_ascii();
        if !part.is_empty() {
            return Some(part);
        }
    })
}

/// Below this many bytes a plain loop finds a byte in fewer instructions than `memchr`, whose
/// set-up (dispatch, vector loads) costs more than searching a short header value or URI part
/// (callgrind: the `memchr` family was ~9 % of the instructions per call, mostly on such).
const SHORT: usize = 24;

/// The first `a` in `s`.
pub(crate) fn find_byte(a: u8, s: &[u8]) -> Option<usize> {
    if s.len() < SHORT {
        s.iter().position(|&x| x == a)
    } else {
        memchr::memchr(a, s)
    }
}

/// The first `a` or `b` in `s`.
pub(crate) fn find_byte2(a: u8, b: u8, s: &[u8]) -> Option<usize> {
    if s.len() < SHORT {
        s.iter().position(|&x| x == a || x == b)
    } else {
        memchr::memchr2(a, b, s)
    }
}

/// The first `a`, `b` or `c` in `s`.
pub(crate) fn find_byte3(a: u8, b: u8, c: u8, s: &[u8]) -> Option<usize> {
    if s.len() < SHORT {
        s.iter().position(|&x| x == a || x == b || x == c)
    } else {
        memchr::memchr3(a, b, c, s)
    }
}

/// The last `a` in `s`.
pub(crate) fn rfind_byte(a: u8, s: &[u8]) -> Option<usize> {
    if s.len() < SHORT {
        s.iter().rposition(|&x| x == a)
    } else {
        memchr::memrchr(a, s)
    }
}

/// True if `s` holds a CR or an LF.
pub(crate) fn has_line_end(s: &[u8]) -> bool {
    find_byte2(b'\r', b'\n', s).is_some()
}

/// The first `delim` outside quoted strings (and, with `angles`, outside `<...>`).
///
/// Jumps from one special byte to the next with `memchr`: outside quotes and angles the
/// delimiter, `"` and `<`; inside `<...>` the `>` and `"`; inside a quoted string `"` and `\`
/// (which escapes the byte after it). [`top_level_bytewise`] is the same walk byte by byte.
pub(crate) fn top_level(b: &[u8], delim: u8, angles: bool) -> Option<usize> {
    let mut i = 0;
    loop {
        // outside quotes and angles
        let j = i + if angles { find_byte3(delim, b'"', b'<', &b[i..])? } else { find_byte2(delim, b'"', &b[i..])? };
        match b[j] {
            b'"' => i = after_quoted(b, j + 1)?,
            b'<' if angles => {
                // inside angles: `"` still opens a quoted string, `>` closes
                let mut k = j + 1;
                loop {
                    let m = k + find_byte2(b'>', b'"', &b[k..])?;
                    if b[m] == b'>' {
                        i = m + 1;
                        break;
                    }
                    k = after_quoted(b, m + 1)?;
                }
            }
            _ => return Some(j),
        }
    }
}

/// The index after the `"` closing a quoted string whose text starts at `from`.
fn after_quoted(b: &[u8], from: usize) -> Option<usize> {
    let mut k = from;
    loop {
        let m = k + find_byte2(b'"', b'\\', b.get(k..)?)?;
        if b[m] == b'"' {
            return Some(m + 1);
        }
        k = m + 2;
    }
}

/// [`top_level`] byte by byte: the reference the tests compare it with.
#[cfg(test)]
fn top_level_bytewise(b: &[u8], delim: u8, angles: bool) -> Option<usize> {
    let (mut in_q, mut in_angle, mut esc) = (false, false, false);
    for (i, &c) in b.iter().enumerate() {
        if esc {
            esc = false;
            continue;
        }
        match c {
            b'\\' if in_q => esc = true,
            b'"' => in_q = !in_q,
            b'<' if angles && !in_q => in_angle = true,
            b'>' if angles && !in_q => in_angle = false,
            c if c == delim && !in_q && !in_angle => return Some(i),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod sipstr_tests {
    use super::*;

    #[test]
    fn short_strings_inline_long_ones_shared_both_read_the_same() {
        assert_eq!(std::mem::size_of::<SipStr>(), 32, "inline strings cost no room over a Bytes");
        let long = "x".repeat(INLINE + 1);
        for s in ["", "70", "ü-ß", &"y".repeat(INLINE), &long] {
            let a = SipStr::from(s);
            let b = SipStr::from(s.to_string());
            assert_eq!(a.as_str(), s);
            assert_eq!(a, b);
            assert_eq!(a.clone().as_str(), s);
            assert_eq!(matches!(a.0, Repr::Inline(..)), s.len() <= INLINE, "{s}");
        }
        assert_eq!(SipStr::default().as_str(), "");
        for n in [0, 7, 10, 4611686018427387903, u64::MAX] {
            assert_eq!(SipStr::from_u64(n).as_str(), n.to_string());
            let mut s = String::from("x");
            push_u64(&mut s, n);
            assert_eq!(s, format!("x{n}"));
        }
        for ip in ["0.0.0.0", "127.0.0.1", "255.255.255.255", "10.200.3.45", "::1", "2001:db8::7"] {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            assert_eq!(SipStr::from_ip(ip).as_str(), ip.to_string());
        }
        assert_eq!(SipStr::from_static("Via").as_str(), "Via");
    }

    #[test]
    fn slices_of_a_received_buffer_share_it_when_long() {
        let text = format!("short;{}", "L".repeat(40));
        let whole = SipStr::from_utf8(Bytes::from(text.clone())).expect("UTF-8");
        let long = whole.slice_ref(&whole[6..]);
        assert_eq!(long.as_str(), &text[6..]);
        match &long.0 {
            Repr::Shared(s) => assert_eq!(s.as_ptr(), whole.as_ptr().wrapping_add(6), "zero-copy"),
            Repr::Inline(..) => panic!("a long slice is shared"),
        }
        let short = whole.slice_ref(&whole[..5]);
        assert!(matches!(short.0, Repr::Inline(5, _)) && short == "short");
        // a slice of an inline string, and a string from elsewhere, are copied
        assert_eq!(short.slice_ref(&short[1..3]), "ho");
        let other = "M".repeat(50);
        assert_eq!(whole.slice_ref(&other).as_str(), other);
        assert!(SipStr::from_utf8(Bytes::from_static(b"\xff")).is_none());
    }
}

#[cfg(test)]
mod split_tests {
    use super::*;

    #[test]
    fn commas_split_only_at_top_level() {
        let v = r#" "Doe, John" <sip:a@b;x=1,2>;tag=1 , <sip:c@d>,,"q\",<" <sip:e@f> ,"#;
        assert_eq!(comma_parts(v).collect::<Vec<_>>(), vec![r#""Doe, John" <sip:a@b;x=1,2>;tag=1"#, "<sip:c@d>", r#""q\",<" <sip:e@f>"#]);
        assert_eq!(comma_parts(v).next(), Some(r#""Doe, John" <sip:a@b;x=1,2>;tag=1"#));
        assert_eq!(comma_parts("SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/TLS ü.example;rport").count(), 2);
        assert!(comma_parts(" , ").next().is_none());
        assert_eq!(comma_parts("").next(), None);
    }

    #[test]
    fn top_level_skips_quotes_escapes_and_angles() {
        assert_eq!(top_level(br#""a;b";c"#, b';', false), Some(5));
        assert_eq!(top_level(br#""a\";b";c"#, b';', false), Some(7));
        assert_eq!(top_level(b"<sip:a;b>;c", b';', true), Some(9));
        assert_eq!(top_level(b"<sip:a;b>;c", b';', false), Some(6));
        assert_eq!(top_level(b"abc", b';', false), None);
        assert_eq!(top_level(br#"<a"b>"c>,d"#, b',', true), Some(8));
        assert_eq!(top_level(br#""unterminated\"#, b',', true), None);
    }

    proptest::proptest! {
        /// Short and long, the byte searches agree with `memchr`.
        #[test]
        fn byte_searches_agree_with_memchr(v in proptest::collection::vec(proptest::sample::select(b"ab@?\r\n".to_vec()), 0..60)) {
            proptest::prop_assert_eq!(find_byte(b'@', &v), memchr::memchr(b'@', &v));
            proptest::prop_assert_eq!(rfind_byte(b'@', &v), memchr::memrchr(b'@', &v));
            proptest::prop_assert_eq!(find_byte2(b'@', b'?', &v), memchr::memchr2(b'@', b'?', &v));
            proptest::prop_assert_eq!(find_byte3(b'@', b'?', b'a', &v), memchr::memchr3(b'@', b'?', b'a', &v));
            proptest::prop_assert_eq!(has_line_end(&v), memchr::memchr2(b'\r', b'\n', &v).is_some());
        }

        /// The memchr walk finds what the byte-by-byte walk finds, on text dense in the
        /// special bytes.
        #[test]
        fn top_level_jumps_agree_with_the_bytewise_walk(v in proptest::collection::vec(proptest::sample::select(b"ab,;\"<>\\ ".to_vec()), 0..40), angles: bool) {
            for delim in [b',', b';', b'<'] {
                proptest::prop_assert_eq!(top_level(&v, delim, angles), top_level_bytewise(&v, delim, angles));
            }
        }
    }
}
