//! RFC 4475 (SIP torture test messages), typed in from the RFC's descriptions. Valid ones must
//! parse and give the values the RFC names; invalid ones must be errors. Messages use `\n`
//! here and are turned into CRLF by `crlf`, except where the line ends are the point.

use super::*;
use bytes::Bytes;

fn crlf(s: &str) -> Bytes {
    Bytes::from(s.replace('\n', "\r\n"))
}

/// Fills in `Content-Length: {}` with the real body length (the body follows the blank line).
fn with_cl(s: &str) -> Bytes {
    let s = s.replace('\n', "\r\n");
    let body_len = s.split_once("\r\n\r\n").map(|(_, b)| b.len()).unwrap_or(0);
    Bytes::from(s.replace("{CL}", &body_len.to_string()))
}

fn ok(b: Bytes) -> Message {
    match parse_datagram(b.clone(), &Limits::default()) {
        Ok(m) => m,
        Err(e) => panic!("{e}: {}", String::from_utf8_lossy(&b)),
    }
}

fn bad(b: Bytes) -> ParseError {
    match parse_datagram(b.clone(), &Limits::default()) {
        Ok(m) => panic!("accepted: {m:?}"),
        Err(e) => e,
    }
}

fn req(m: Message) -> Request {
    match m {
        Message::Request(r) => r,
        Message::Response(_) => panic!("not a request"),
    }
}

const SDP: &str = "v=0\no=mhandley 29739 7272939 IN IP4 192.0.2.3\ns=-\nc=IN IP4 192.0.2.4\nt=0 0\nm=audio 49217 RTP/AVP 0 12\nm=video 3227 RTP/AVP 31\na=rtpmap:31 LPC\n";

// 3.1.1.1 A Short Tortuous INVITE (wsinv)
#[test]
fn wsinv() {
    let msg = format!(
        "INVITE sip:vivekg@chair-dnrc.example.com;unknownparam SIP/2.0\n\
TO :\n sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n\n\
from   : \"J Rosenberg \\\\\\\"\"       <sip:jdrosen@example.com>\n  ;\n  tag = 98asjd8\n\
MaX-fOrWaRdS: 0068\n\
Call-ID\n : 0ha0isndaksdj@192.0.2.1\n\
Content-Length   : {{CL}}\n\
cseq: 0009\n  INVITE\n\
Via  : SIP  /   2.0\n /UDP\n    192.0.2.2;branch=390skdjuw\n\
s :\n\
NewFangledHeader:   newfangled value\n continued newfangled value\n\
UnknownHeaderWithUnusualValue: ;;,,;;,;\n\
Content-Type: application/sdp\n\
Route:\n <sip:services.example.com;lr;unknownwith=value;unknown-no-value>\n\
v:  SIP  / 2.0  / TCP     spindle.example.com   ;\n  branch  =   z9hG4bK9ikj8  ,\n SIP  /    2.0   / UDP  192.168.255.111   ; branch=\n z9hG4bK30239\n\
m:\"Quoted string \\\"\\\"\" <sip:jdrosen@example.com> ; newparam =\n      newvalue ;\n  secondparam ; q = 0.33\n\
\n{SDP}"
    );
    let r = req(ok(with_cl(&msg)));
    assert_eq!(r.method, Method::Invite);
    assert_eq!(r.to_tag(), Some("1918181833n"));
    assert_eq!(r.from_tag(), Some("98asjd8"));
    assert_eq!(r.from_hdr().unwrap().display.as_deref(), Some("J Rosenberg \\\""));
    assert_eq!(r.call_id(), Some("0ha0isndaksdj@192.0.2.1"));
    assert_eq!(r.cseq().unwrap(), CSeq { seq: 9, method: Method::Invite });
    let vias = r.headers.values("Via");
    assert_eq!(vias.len(), 3);
    let top = r.top_via().unwrap();
    assert_eq!((top.transport.as_str(), top.host.as_str(), top.branch()), ("UDP", "192.0.2.2", Some("390skdjuw")));
    let v3 = Via::parse(vias[2]).unwrap();
    assert_eq!((v3.host.as_str(), v3.branch()), ("192.168.255.111", Some("z9hG4bK30239")));
    assert_eq!(r.headers.get("NewFangledHeader"), Some("newfangled value continued newfangled value"));
    assert_eq!(r.headers.get("Subject"), Some(""));
    let c = NameAddr::parse(r.headers.get("Contact").unwrap()).unwrap();
    assert_eq!(c.display.as_deref(), Some("Quoted string \"\""));
    assert_eq!(c.params.get("newparam"), Some("newvalue"));
    assert_eq!(c.params.get("q"), Some("0.33"));
    assert!(c.params.has("secondparam"));
    let sdp = sdp::Sdp::parse(r.body.clone()).unwrap();
    assert_eq!(sdp.media.len(), 2);
    // Written again, every line is one line and it still parses.
    let again = parse(r.to_bytes(), &Limits::default()).unwrap();
    assert_eq!(again.headers().len(), r.headers.len());
    // The display name with escapes survives a write.
    let from = r.from_hdr().unwrap();
    assert_eq!(&NameAddr::parse(&from.to_string()).unwrap(), from);
}

// 3.1.1.2 Wide Range of Valid Characters (intmeth)
#[test]
fn intmeth() {
    let m = "!interesting-Method0123456789_*+`.%indeed'~";
    let msg = format!(
        "{m} sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com SIP/2.0\n\
Via: SIP/2.0/TCP host1.example.com;branch=z9hG4bK-.!%66*_+`'~\n\
To: \"BEL:\\\u{7} NUL:\\\u{0} DEL:\\\u{7f}\" <sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*@example.com>\n\
From: token1~` token2'+_ token3*%!.- <sip:mundane@example.com>;fromParam''~+*_!.-%=\"\u{440}\u{430}\u{431}\u{43e}\u{442}\u{430}\u{44e}\u{449}\u{438}\u{439}\";tag=_token~1'+`*%!-.\n\
Call-ID: intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}}{{\n\
CSeq: 139122385 {m}\n\
Max-Forwards: 255\n\
extensionHeader-!.%*+_`'~: \u{feff}\u{5927}\u{505c}\u{96fb}\n\
Content-Length: 0\n\n"
    );
    let r = req(ok(crlf(&msg)));
    assert_eq!(r.method, Method::Other(m.to_string()));
    assert_eq!(r.cseq().unwrap().method, Method::Other(m.to_string()));
    assert_eq!(r.from_tag(), Some("_token~1'+`*%!-."));
    let u = Uri::parse(&r.uri).unwrap();
    assert_eq!(u.host, "example.com");
    assert_eq!(r.headers.get("extensionheader-!.%*+_`'~"), Some("\u{feff}\u{5927}\u{505c}\u{96fb}"));
    assert_eq!(r.from_hdr().unwrap().display.as_deref(), Some("token1~` token2'+_ token3*%!.-"));
}

// 3.1.1.3 Valid Use of the % Escaping Mechanism (esc01)
#[test]
fn esc01() {
    let msg = "INVITE sip:sips%3Auser%40example.com@example.net SIP/2.0\n\
To: sip:%75se%72@example.com\n\
From: <sip:I%20have%20spaces@example.net>;tag=938\n\
Max-Forwards: 87\n\
i: esc01.239409asdfakjkn23onasd0-3234\n\
CSeq: 234234 INVITE\n\
Via: SIP/2.0/UDP host5.example.net;branch=z9hG4bKkdjuw\n\
C: application/sdp\n\
Contact:\n  <sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31>\n\
Content-Length: {CL}\n\n\
v=0\no=mhandley 29739 7272939 IN IP4 192.0.2.1\ns=-\nc=IN IP4 192.0.2.1\nt=0 0\nm=audio 49217 RTP/AVP 0 12\nm=video 3227 RTP/AVP 31\na=rtpmap:31 LPC\n";
    let r = req(ok(with_cl(msg)));
    assert_eq!(Uri::parse(&r.uri).unwrap().user.as_deref(), Some("sips%3Auser%40example.com"));
    assert_eq!(r.to_hdr().unwrap().uri.user.as_deref(), Some("%75se%72"));
    assert_eq!(r.content_type(), Some("application/sdp"));
}

// 3.1.1.4 Escaped Nulls in URIs (escnull)
#[test]
fn escnull() {
    let msg = "REGISTER sip:example.com SIP/2.0\n\
To: sip:null-%00-null@example.com\n\
From: sip:null-%00-null@example.com;tag=839923423\n\
Max-Forwards: 70\n\
Call-ID: escnull.39203ndfvkjdasfkq3w4otrq0adsfdfnavd\n\
CSeq: 14398234 REGISTER\n\
Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bKkdjuw\n\
Contact: <sip:%00@host5.example.com>\n\
Contact: <sip:%00%00@host5.example.com>\n\
L:0\n\n";
    let r = req(ok(crlf(msg)));
    assert_eq!(r.headers.get_all("Contact").count(), 2);
    assert_eq!(r.from_tag(), Some("839923423"));
}

// 3.1.1.5 Use of % When It Is Not an Escape (esc02)
#[test]
fn esc02() {
    let msg = "RE%47IST%45R sip:registrar.example.com SIP/2.0\n\
To: \"%Z%45\" <sip:resource@example.com>\n\
From: \"%Z%45\" <sip:resource@example.com>;tag=f232jadfj23\n\
Call-ID: esc02.asdfnqwo34rq23i34jrjasdcnl23nrlknsdf\n\
Via: SIP/2.0/TCP host.example.com;branch=z9hG4bK209%fzsnel234\n\
CSeq: 29344 RE%47IST%45R\n\
Max-Forwards: 70\n\
Contact: <sip:alias1@host1.example.com>\n\
C%6Fntact: <sip:alias2@host2.example.com>\n\
Contact: <sip:alias3@host3.example.com>\n\
l: 0\n\n";
    let r = req(ok(crlf(msg)));
    assert_eq!(r.method, Method::Other("RE%47IST%45R".into()));
    assert_eq!(r.headers.get_all("Contact").count(), 2);
    assert_eq!(r.headers.get("C%6Fntact"), Some("<sip:alias2@host2.example.com>"));
    assert_eq!(r.to_hdr().unwrap().display.as_deref(), Some("%Z%45"));
}

// 3.1.1.6 Message with No LWS between Display Name and < (lwsdisp)
#[test]
fn lwsdisp() {
    let msg = "OPTIONS sip:user@example.com SIP/2.0\n\
To: sip:user@example.com\n\
From: caller<sip:caller@example.com>;tag=323\n\
Max-Forwards: 70\n\
Call-ID: lwsdisp.1234abcd@funky.example.com\n\
CSeq: 60 OPTIONS\n\
Via: SIP/2.0/UDP funky.example.com;branch=z9hG4bKkdjuw\n\
l: 0\n\n";
    let r = req(ok(crlf(msg)));
    assert_eq!(r.from_hdr().unwrap().display.as_deref(), Some("caller"));
}

// 3.1.1.7 Long Values in Header Fields (longreq)
#[test]
fn longreq() {
    let long = "longreq".repeat(60);
    let mut msg = format!(
        "INVITE sip:user@example.com SIP/2.0\n\
To: \"I have a user name of {long} proportion\" <sip:user@example.com:6000;unknownparam1=very{long}value;longparam{long}=shortvalue;very{long}ParameterNameWithNoValue>\n\
F: sip:amazinglylongcallername{long}@example.net;tag=12{long}982{long}424;unknownheaderparam{long}=unknowheaderparamvalue{long};unknownValuelessparam{long}\n\
Call-ID: longreq.one{long}really{long}long{long}call-id\n\
CSeq: 3882340 INVITE\n\
Unknown-{long}-{long}-Header: unknown-{long}-value\n\
Max-Forwards: 70\n\
Contact: <sip:amazinglylongcallername{long}@host5.example.net>\n\
Content-Type: application/sdp\n\
l: {{CL}}\n"
    );
    for i in 0..34 {
        msg.push_str(&format!("Via: SIP/2.0/TCP sip{i}.example.com;branch=z9hG4bK{long}{i}\n"));
    }
    msg.push('\n');
    msg.push_str(SDP);
    let r = req(ok(with_cl(&msg)));
    assert_eq!(r.headers.values("Via").len(), 34);
    assert!(r.to_hdr().unwrap().uri.params.has(&format!("very{long}ParameterNameWithNoValue")));
    assert_eq!(r.from_tag().unwrap(), format!("12{long}982{long}424"));
}

// 3.1.1.8 Extra Trailing Octets in a UDP Datagram (dblreq)
#[test]
fn dblreq() {
    let one = "REGISTER sip:example.com SIP/2.0\n\
To: sip:j.user@example.com\n\
From: sip:j.user@example.com;tag=43251j3j324\n\
Max-Forwards: 8\n\
I: dblreq.0ha0isndaksdj99sdfafnl3lk233412\n\
Contact: sip:j.user@host.example.com\n\
CSeq: 8 REGISTER\n\
Via: SIP/2.0/UDP 192.0.2.125;branch=z9hG4bKkdjuw23492\n\
Content-Length: 0\n\n";
    let two = "INVITE sip:joe@example.com SIP/2.0\n\
t: sip:joe@example.com\n\
From: sip:caller@example.net;tag=141334\n\
Max-Forwards: 8\n\
Call-ID: dblreq.0ha0isnda977644900765@192.0.2.15\n\
CSeq: 8 INVITE\n\
Via: SIP/2.0/UDP 192.0.2.15;branch=z9hG4bKkdjuw380234\n\
Content-Type: application/sdp\n\
Content-Length: 0\n\n";
    let r = req(ok(crlf(&format!("{one}{two}"))));
    assert_eq!(r.method, Method::Register);
    assert!(r.body.is_empty());
}

// 3.1.1.9 Semicolon-Separated Parameters in URI User Part (semiuri)
#[test]
fn semiuri() {
    let msg = "OPTIONS sip:user;par=u%40example.net@example.com SIP/2.0\n\
To: sip:j_user@example.com\n\
From: sip:caller@example.org;tag=33242\n\
Max-Forwards: 3\n\
Call-ID: semiuri.0ha0isndaksdj\n\
CSeq: 8 OPTIONS\n\
Accept: application/sdp, application/pkcs7-mime,\n        multipart/mixed, multipart/signed,\n        message/sip, message/sipfrag\n\
Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKkdjuw\n\
l: 0\n\n";
    let r = req(ok(crlf(msg)));
    let u = Uri::parse(&r.uri).unwrap();
    assert_eq!((u.user.as_deref(), u.host.as_str()), (Some("user;par=u%40example.net"), "example.com"));
    assert!(u.params.is_empty());
    assert_eq!(r.headers.values("Accept").len(), 6);
}

// 3.1.1.10 Varied and Unknown Transport Types (transports)
#[test]
fn transports() {
    let msg = "OPTIONS sip:user@example.com SIP/2.0\n\
To: sip:user@example.com\n\
From: <sip:caller@example.com>;tag=323\n\
Max-Forwards: 70\n\
Call-ID:  transports.kijh4akdnaqjkwendsasfdj\n\
Accept: application/sdp\n\
CSeq: 60 OPTIONS\n\
Via: SIP/2.0/UDP t1.example.com;branch=z9hG4bKkdjuw\n\
Via: SIP/2.0/SCTP t2.example.com;branch=z9hG4bKklasjdhf\n\
Via: SIP/2.0/TLS t3.example.com;branch=z9hG4bK2980unddj\n\
Via: SIP/2.0/UNKNOWN t4.example.com;branch=z9hG4bKasd0f3en\n\
Via: SIP/2.0/TCP t5.example.com;branch=z9hG4bK0a9idfnee\n\
l: 0\n\n";
    let r = req(ok(crlf(msg)));
    let t: Vec<String> = r.headers.values("Via").iter().map(|v| Via::parse(v).unwrap().transport).collect();
    assert_eq!(t, ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]);
}

// 3.1.1.11 Multipart MIME Message (mpart01), shortened body
#[test]
fn mpart01() {
    let msg = "MESSAGE sip:kumiko@example.org SIP/2.0\n\
Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-d87543-4dade06d0bdb11ee-1--d87543-;rport\n\
Max-Forwards: 70\n\
Route: <sip:127.0.0.1:5080>\n\
Identity: r5mwreLuyDRYBi/0TiPwEsY3rEVsk/G2WxhgTV1PF7hHuLIK0YWVKZhKv9Mj8UeXqkMVbnVq37CD+813gvYjcBUaZngQmXc9WNZSDNGCzA+fWl9MEUHWIZo1CeJebdY/XlgKeTa0Olvq0rt70Q5jiSfbqMJmQFteeivUhkMWYUA=\n\
Contact: <sip:fluffy@127.0.0.1:5070>\n\
To: <sip:kumiko@example.org>\n\
From: <sip:fluffy@example.com>;tag=2fb0dcc9\n\
Call-ID: 3d9485ad0c49859b@Zmx1ZmZ5LW1hYy0xNi5sb2NhbA..\n\
CSeq: 1 MESSAGE\n\
Content-Transfer-Encoding: binary\n\
Content-Type: multipart/mixed;boundary=7a9cbec02ceef655\n\
Date: Sat, 15 Oct 2005 04:44:56 GMT\n\
User-Agent: SIPimp.org/0.2.5 (curses)\n\
Content-Length: {CL}\n\n\
--7a9cbec02ceef655\nContent-Type: text/plain\nContent-Transfer-Encoding: binary\n\nHello\n--7a9cbec02ceef655--\n";
    let r = req(ok(with_cl(msg)));
    assert!(r.body.ends_with(b"--7a9cbec02ceef655--\r\n"));
}

// 3.1.1.12 Unusual Reason Phrase (unreason) and 3.1.1.13 Empty Reason Phrase (noreason)
#[test]
fn unreason_noreason() {
    let head = "Via: SIP/2.0/UDP 192.0.2.198;branch=z9hG4bK1324923\n\
Call-ID: unreason.1234ksdfak3j2erwedfsASdf\n\
CSeq: 35 INVITE\n\
From: sip:user@example.com;tag=11141343\n\
To: sip:user@example.edu;tag=2229\n\
Content-Length: 0\n\n";
    let r = ok(crlf(&format!("SIP/2.0 200 = 2**3 * 5**2 \u{43d}\u{43e} \u{441}\u{442}\u{43e} - \u{43f}\u{440}\u{43e}\u{441}\u{442}\u{43e}\u{435}\n{head}")));
    let Message::Response(r) = r else { panic!() };
    assert_eq!(r.status, 200);
    assert!(r.reason.starts_with("= 2**3 * 5**2 "));
    let Message::Response(r) = ok(crlf(&format!("SIP/2.0 100 \n{head}"))) else { panic!() };
    assert_eq!((r.status, r.reason.as_str()), (100, ""));
}

// ---- Invalid messages (RFC 4475 3.1.2) ----

fn options(extra: &str, cseq: &str) -> String {
    format!(
        "OPTIONS sip:user@example.com SIP/2.0\n\
Via: SIP/2.0/UDP host.example.com;branch=z9hG4bKkdjuw\n\
To: sip:user@example.com\n\
From: sip:caller@example.com;tag=1\n\
Call-ID: bad.1\n\
CSeq: {cseq}\n\
Max-Forwards: 70\n\
{extra}"
    )
}

// 3.1.2.1 Extraneous Header Field Separators (badinv01)
#[test]
fn badinv01() {
    let msg = "INVITE sip:user@example.com SIP/2.0\n\
To: sip:j.user@example.com\n\
From: sip:caller@example.net;tag=134161461246\n\
Max-Forwards: 7\n\
Call-ID: badinv01.0ha0isndaksdjasdf3234nas\n\
CSeq: 8 INVITE\n\
Via: SIP/2.0/UDP 192.0.2.15;;,;,,\n\
Contact: \"Joe\" <sip:joe@example.org>;;;;\n\
Content-Length: 0\n\n";
    assert_eq!(bad(crlf(msg)), ParseError::BadHeaderValue("Via"));
}

// 3.1.2.2 Content Length Larger Than Message (clerr)
#[test]
fn clerr() {
    let msg = "INVITE sip:user@example.com SIP/2.0\n\
Max-Forwards: 80\n\
To: sip:j.user@example.com\n\
From: sip:caller@example.net;tag=93942939o2\n\
Contact: <sip:caller@hungry.example.net>\n\
Call-ID: clerr.0ha0isndaksdjweiafasdk3\n\
CSeq: 8 INVITE\n\
Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bK-39234-23523\n\
Content-Type: application/sdp\n\
Content-Length: 9999\n\n\
v=0\no=mhandley 29739 7272939 IN IP4 192.0.2.155\ns=-\nc=IN IP4 192.0.2.155\nt=0 0\nm=audio 49217 RTP/AVP 0\n";
    assert!(matches!(bad(crlf(msg)), ParseError::Truncated { declared: 9999, .. }));
}

// 3.1.2.3 Negative Content-Length (ncl)
#[test]
fn ncl() {
    let msg = options("Content-Length: -999\n\n", "8 OPTIONS");
    assert_eq!(bad(crlf(&msg)), ParseError::BadContentLength);
}

// Conflicting Content-Length lines, folded or compact.
#[test]
fn content_length_conflicts() {
    assert_eq!(bad(crlf(&options("Content-Length: 0\nl: 2\n\nab", "8 OPTIONS"))), ParseError::BadContentLength);
    assert_eq!(bad(crlf(&options("Content-Length: 2\nContent-Length: 0\n\nab", "8 OPTIONS"))), ParseError::BadContentLength);
    // A folded Content-Length the framing scan cannot see must still agree.
    assert_eq!(bad(crlf(&options("Content-Length\n : 2\n\nab", "8 OPTIONS"))), ParseError::BadContentLength);
    assert_eq!(bad(crlf(&options("Content-Length: 99999999999999999999\n\n", "8 OPTIONS"))), ParseError::BadContentLength);
    assert_eq!(bad(crlf(&options("Content-Length: 1e3\n\n", "8 OPTIONS"))), ParseError::BadContentLength);
    // Equal duplicates are fine.
    ok(crlf(&options("Content-Length: 2\nl: 2\n\nab", "8 OPTIONS")));
}

// 3.1.2.4 Request Scalar Fields with Overlarge Values (scalar02)
#[test]
fn scalar02() {
    let msg = "REGISTER sip:example.com SIP/2.0\n\
Via: SIP/2.0/TCP host129.example.com;branch=z9hG4bK342sdfoi3\n\
To: <sip:user@example.com>\n\
From: <sip:user@example.com>;tag=239232jh3\n\
CSeq: 36893488147419103232 REGISTER\n\
Call-ID: scalar02.23o0pd9vanlq3wnrlnewofjas9ui32\n\
Max-Forwards: 300\n\
Expires: 1 10000000000000000000000\n\
Contact: <sip:user@host129.example.com>\n  ;expires=280297596632815\n\
Content-Length: 0\n\n";
    assert_eq!(bad(crlf(msg)), ParseError::BadHeaderValue("CSeq"));
    assert_eq!(bad(crlf(&msg.replace("36893488147419103232", "1"))), ParseError::BadHeaderValue("Max-Forwards"));
}

// 3.1.2.5 Response Scalar Fields with Overlarge Values (scalarlg)
#[test]
fn scalarlg() {
    let msg = "SIP/2.0 503 Service Unavailable\n\
Via: SIP/2.0/TCP host129.example.com;branch=z9hG4bKzzxdiwo34sw;received=192.0.2.129\n\
To: <sip:user@example.com>\n\
From: <sip:other@example.net>;tag=2easdjfejw\n\
CSeq: 9292394834772304023312 OPTIONS\n\
Call-ID: scalarlg.noase0of0234hn2qofoaf0232aewf2394r\n\
Retry-After: 949302838503028349304023988\n\
Warning: 1812 overture \"In Progress\"\n\
Content-Length: 0\n\n";
    assert_eq!(bad(crlf(msg)), ParseError::BadHeaderValue("CSeq"));
}

// 3.1.2.6 Unterminated Quoted String in Display Name (quotbal)
#[test]
fn quotbal() {
    let msg = "INVITE sip:user@example.com SIP/2.0\n\
To: \"Mr. J. User <sip:j.user@example.com>\n\
From: sip:caller@example.net;tag=93334\n\
Max-Forwards: 10\n\
Call-ID: quotbal.aksdj\n\
Contact: <sip:caller@host59.example.net>\n\
CSeq: 8 INVITE\n\
Via: SIP/2.0/UDP 192.0.2.59:5050;branch=z9hG4bKkdjuw39234\n\
Content-Length: 0\n\n";
    assert_eq!(bad(crlf(msg)), ParseError::BadHeaderValue("To"));
}

// 3.1.2.7 <> Enclosing Request-URI (ltgtruri)
#[test]
fn ltgtruri() {
    let msg = options("Content-Length: 0\n\n", "8 INVITE").replace("OPTIONS sip:user@example.com", "INVITE <sip:user@example.com>");
    assert_eq!(bad(crlf(&msg)), ParseError::BadRequestUri);
}

// 3.1.2.8 Malformed SIP Request-URI (embedded LWS) (lwsruri), 3.1.2.9 Multiple SP
// Separating Request-Line Elements (lwsstart), 3.1.2.10 SP Characters at End of Request-Line
// (trws)
#[test]
fn request_line_whitespace() {
    let base = options("Content-Length: 0\n\n", "8 OPTIONS");
    ok(crlf(&base));
    for (from, to) in [
        ("OPTIONS sip:user@example.com SIP/2.0", "OPTIONS sip:user@example.com; lr SIP/2.0"),
        ("OPTIONS sip:user@example.com SIP/2.0", "OPTIONS  sip:user@example.com  SIP/2.0"),
        ("OPTIONS sip:user@example.com SIP/2.0", "OPTIONS sip:user@example.com SIP/2.0  "),
        ("OPTIONS sip:user@example.com SIP/2.0", "OPTIONS\tsip:user@example.com SIP/2.0"),
    ] {
        assert_eq!(bad(crlf(&base.replacen(from, to, 1))), ParseError::BadStartLine, "{to:?}");
    }
}

// 3.1.2.11 Escaped Headers in SIP Request-URI (escruri)
#[test]
fn escruri() {
    let msg = options("Content-Length: 0\n\n", "8 OPTIONS").replace("sip:user@example.com SIP", "sip:user@example.com?Route=%3Csip:example.com%3E SIP");
    assert_eq!(bad(crlf(&msg)), ParseError::BadRequestUri);
}

// 3.1.2.15 Non-token Characters in Display Name (baddn)
#[test]
fn baddn() {
    let msg = options("Content-Length: 0\n\n", "8 OPTIONS").replace("From: sip:caller@example.com;tag=1", "From: Bell, Alexander <sip:a.g.bell@example.com>;tag=43");
    assert_eq!(bad(crlf(&msg)), ParseError::BadHeaderValue("From"));
}

// 3.1.2.16 Unknown Protocol Version (badvers)
#[test]
fn badvers() {
    let msg = options("Content-Length: 0\n\n", "8 OPTIONS").replace("SIP/2.0\n", "SIP/7.0\n");
    assert_eq!(bad(crlf(&msg)), ParseError::BadVersion);
}

// 3.1.2.17 Start Line and CSeq Method Mismatch (mismatch01), 3.1.2.18 Unknown Method with
// CSeq Method Mismatch (mismatch02)
#[test]
fn mismatch() {
    assert_eq!(bad(crlf(&options("Content-Length: 0\n\n", "1 INVITE"))), ParseError::BadHeaderValue("CSeq"));
    let msg = options("Content-Length: 0\n\n", "1 OPTIONS").replace("OPTIONS sip:", "NEWMETHOD sip:");
    assert_eq!(bad(crlf(&msg)), ParseError::BadHeaderValue("CSeq"));
    assert_eq!(bad(crlf(&options("Content-Length: 0\n\n", "1 OPTIONS x"))), ParseError::BadHeaderValue("CSeq"));
}

// 3.1.2.19 Overlarge Response Code (bigcode)
#[test]
fn bigcode() {
    let msg = "SIP/2.0 4294967301 better not break the receiver\n\
Via: SIP/2.0/UDP 192.0.2.105;branch=z9hG4bK2398ndaoe\n\
Call-ID: bigcode.asdof3uj203asdnf3429uasdhfas3ehjasdfas9i\n\
CSeq: 353494 INVITE\n\
From: <sip:user@example.com>;tag=39ansfi3\n\
To: <sip:user@example.edu>;tag=902jndnke3\n\
Content-Length: 0\n\n";
    assert_eq!(bad(crlf(msg)), ParseError::BadStatus);
}

// 3.1.2.x Missing Required Header Fields (insuf)
#[test]
fn insuf() {
    let msg = "INVITE sip:user@example.com SIP/2.0\n\
CSeq: 193942 INVITE\n\
Via: SIP/2.0/UDP 192.0.2.95;branch=z9hG4bKkdj.insuf\n\
Content-Type: application/sdp\n\
l: 0\n\n";
    assert!(matches!(bad(crlf(msg)), ParseError::MissingHeader(_)));
    for h in ["Via", "To", "From", "Call-ID", "CSeq"] {
        let base = options("Content-Length: 0\n\n", "8 OPTIONS");
        let without: String = base.lines().filter(|l| !l.starts_with(&format!("{h}:"))).map(|l| format!("{l}\n")).collect();
        assert!(matches!(bad(crlf(&without)), ParseError::MissingHeader(_)), "{h}");
    }
    // Two Call-IDs are not one.
    assert_eq!(bad(crlf(&options("Call-ID: other\nContent-Length: 0\n\n", "8 OPTIONS"))), ParseError::BadHeaderValue("Call-ID"));
}

// A lone CR (not ending a line) is refused: a peer could read it as a line end.
#[test]
fn lone_cr_refused() {
    let msg = options("Subject: a\rInjected: x\nContent-Length: 0\n\n", "8 OPTIONS");
    assert_eq!(bad(Bytes::from(msg)), ParseError::BadHeader);
    let msg = options("Content-Length: 0\n\n", "8 OPTIONS").replace("SIP/2.0\n", "SIP/2.0\rX\n");
    assert_eq!(bad(Bytes::from(msg)), ParseError::BadStartLine);
}

// Stream framing and size caps.
#[test]
fn caps() {
    let l = Limits { max_message: 300, max_headers: 8 };
    let msg = crlf(&options("Content-Length: 0\n\n", "8 OPTIONS"));
    assert!(parse(msg.clone(), &Limits::default()).is_ok());
    let big = crlf(&options(&format!("X-Pad: {}\nContent-Length: 0\n\n", "p".repeat(400)), "8 OPTIONS"));
    assert_eq!(parse(big.clone(), &l).unwrap_err(), ParseError::TooLarge(300));
    assert_eq!(frame_len(&big, &l).unwrap_err(), ParseError::TooLarge(300));
    let many = crlf(&options(&format!("{}Content-Length: 0\n\n", "X-A: 1\n".repeat(8)), "8 OPTIONS"));
    assert_eq!(parse(many, &Limits { max_message: 65535, max_headers: 8 }).unwrap_err(), ParseError::TooManyHeaders(8));
}
