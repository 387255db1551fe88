//! RFC 3863 `application/pidf+xml` bodies (the `presence` event package, RFC 3856) with RPID
//! (RFC 4480) activities and data-model notes (RFC 4479), as a Mitel PBX sends them for a
//! monitored extension: DND and the user presence status (Available / Absent / Meeting / Busy /
//! Not available) arrive as `<rpid:activities>` and/or `<dm:note>` / `<note>` texts.
//!
//! [`parse`] reads the document; [`interpret`] turns it into a line state and a user presence.

use super::dialoginfo::{xml_doc, xml_text};
use super::state::{LineState, PbxUserPresence};
use super::PresenceError;
use serde::Serialize;

/// Largest body accepted.
pub const MAX_BODY: usize = 64 * 1024;
const MAX_ITEMS: usize = 32;
const MAX_NOTE: usize = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Basic {
    Open,
    Closed,
}

/// The parts of a PIDF document presence cares about.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Pidf {
    pub entity: String,
    /// `<basic>` of every tuple.
    pub basic: Vec<Basic>,
    /// RPID activity element names (`busy`, `on-the-phone`, `meeting`, `away`, ...); for
    /// `<rpid:other>`, its text.
    pub activities: Vec<String>,
    /// Every `<note>` text (PIDF tuple / presence notes and `<dm:note>`), trimmed.
    pub notes: Vec<String>,
}

/// What a PIDF document says about an extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct PresenceReading {
    /// The device: Dnd, InCall (on-the-phone), Idle (open), Offline (closed), Unknown.
    pub line: LineState,
    /// The user presence status, if the document carries one.
    pub user: Option<PbxUserPresence>,
}

fn bad(reason: impl Into<String>) -> PresenceError {
    PresenceError::Body { what: "pidf", reason: reason.into() }
}

/// Parses a PIDF body.
pub fn parse(body: &[u8]) -> Result<Pidf, PresenceError> {
    let text = xml_text(body, MAX_BODY).map_err(bad)?;
    let doc = xml_doc(text).map_err(bad)?;
    let root = doc.root_element();
    if root.tag_name().name() != "presence" {
        return Err(bad(format!("root element is <{}>, not <presence>", root.tag_name().name())));
    }
    let mut p = Pidf { entity: root.attribute("entity").unwrap_or("").to_string(), ..Pidf::default() };
    for n in root.descendants().filter(|n| n.is_element()) {
        let name = n.tag_name().name();
        let text = || n.text().unwrap_or("").trim().chars().take(MAX_NOTE).collect::<String>();
        match name {
            "basic" => match n.text().unwrap_or("").trim() {
                "open" => p.basic.push(Basic::Open),
                "closed" => p.basic.push(Basic::Closed),
                s => return Err(bad(format!("<basic> is {s:?}"))),
            },
            "note" => {
                let t = text();
                if !t.is_empty() && p.notes.len() < MAX_ITEMS {
                    p.notes.push(t);
                }
            }
            "activities" => {
                for a in n.children().filter(|c| c.is_element()) {
                    if p.activities.len() == MAX_ITEMS {
                        break;
                    }
                    let an = a.tag_name().name();
                    if an == "other" {
                        let t: String = a.text().unwrap_or("").trim().chars().take(MAX_NOTE).collect();
                        p.activities.push(t);
                    } else {
                        p.activities.push(an.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    Ok(p)
}

/// A note or activity text, lower case, with only letters kept: "Do Not Disturb" ->
/// "donotdisturb", "on-the-phone" -> "onthephone".
fn key(s: &str) -> String {
    s.chars().filter(|c| c.is_alphabetic()).flat_map(char::to_lowercase).collect()
}

enum Meaning {
    Dnd,
    Phone,
    User(PbxUserPresence),
}

fn meaning(k: &str) -> Option<Meaning> {
    use PbxUserPresence as U;
    Some(match k {
        "donotdisturb" | "dnd" => Meaning::Dnd,
        "onthephone" | "inacall" | "oncall" | "onphone" | "talking" => Meaning::Phone,
        "notavailable" | "unavailable" | "permanentabsence" => Meaning::User(U::NotAvailable),
        "absent" | "away" | "vacation" | "holiday" | "outofoffice" | "steppedout" | "lunch" => Meaning::User(U::Absent),
        "meeting" | "inameeting" | "appointment" => Meaning::User(U::Meeting),
        "busy" => Meaning::User(U::Busy),
        "available" | "online" => Meaning::User(U::Available),
        _ => return None,
    })
}

/// Reads a PIDF document as a Mitel PBX means it. DND wins over a call, a call over open /
/// closed; among several user statuses the one of highest precedence is kept (Not available,
/// Absent, Meeting, Busy, Available). `<basic>closed</basic>` alone is Offline; but a closed
/// basic with DND or a status is read by that (some PBXs close the tuple on DND).
pub fn interpret(p: &Pidf) -> PresenceReading {
    let (mut dnd, mut phone) = (false, false);
    let mut user: Option<PbxUserPresence> = None;
    let rank = |u: PbxUserPresence| match u {
        PbxUserPresence::Available => 0,
        PbxUserPresence::Busy => 1,
        PbxUserPresence::Meeting => 2,
        PbxUserPresence::Absent => 3,
        PbxUserPresence::NotAvailable => 4,
    };
    for t in p.activities.iter().chain(p.notes.iter()) {
        match meaning(&key(t)) {
            Some(Meaning::Dnd) => dnd = true,
            Some(Meaning::Phone) => phone = true,
            Some(Meaning::User(u)) if user.is_none_or(|v| rank(u) > rank(v)) => user = Some(u),
            Some(Meaning::User(_)) | None => {}
        }
    }
    let line = if dnd {
        LineState::Dnd
    } else if phone {
        LineState::InCall
    } else if p.basic.contains(&Basic::Open) || (user.is_some() && !p.basic.is_empty()) {
        LineState::Idle
    } else if p.basic.contains(&Basic::Closed) {
        LineState::Offline
    } else {
        LineState::Unknown
    };
    PresenceReading { line, user }
}

/// The status names Mitel shows for a Teams-controlled user (MiCollab with bi-directional
/// presence: Available, Busy, Do Not Disturb, Away, Be Right Back, Offline), from Graph's
/// `availability`.
pub fn teams_status_name(availability: &str) -> &'static str {
    match availability {
        "Available" | "AvailableIdle" => "Available",
        "Busy" | "BusyIdle" => "Busy",
        "DoNotDisturb" => "Do Not Disturb",
        "Away" => "Away",
        "BeRightBack" => "Be Right Back",
        _ => "Offline",
    }
}

/// XML text escaping for element content and attribute values.
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => {}
            c => out.push(c),
        }
    }
    out
}

/// The PIDF document (RFC 3863, RPID activities RFC 4480, data-model note RFC 4479) drbridge
/// NOTIFYs to PBX-side watchers of `entity` for a Teams presence: `<basic>` open unless Teams
/// says Offline/PresenceUnknown; an RPID activity (`on-the-phone` for calls, `meeting`,
/// `busy` for Busy and Do Not Disturb, `away` for Away and Be Right Back); the person note is the
/// Mitel status name, which is also what drbridge's own PIDF reader understands; the tuple note
/// keeps Graph's pair for diagnostics.
pub fn teams_document(entity: &str, availability: &str, activity: &str) -> String {
    let name = teams_status_name(availability);
    let basic = if name == "Offline" { "closed" } else { "open" };
    let rpid = match (availability, activity) {
        (_, "InACall" | "InAConferenceCall") => Some("on-the-phone"),
        (_, "InAMeeting") => Some("meeting"),
        ("Busy" | "BusyIdle" | "DoNotDisturb", _) => Some("busy"),
        ("Away" | "BeRightBack", _) => Some("away"),
        _ => None,
    };
    let activities = rpid.map(|a| format!("<rpid:activities><rpid:{a}/></rpid:activities>")).unwrap_or_default();
    format!(
        concat!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\r\n",
            "<presence xmlns=\"urn:ietf:params:xml:ns:pidf\" xmlns:dm=\"urn:ietf:params:xml:ns:pidf:data-model\" ",
            "xmlns:rpid=\"urn:ietf:params:xml:ns:pidf:rpid\" entity=\"{entity}\">\r\n",
            "<tuple id=\"teams\"><status><basic>{basic}</basic></status><note>Teams: {avail}/{act}</note></tuple>\r\n",
            "<dm:person id=\"p\">{activities}<dm:note>{name}</dm:note></dm:person>\r\n",
            "</presence>\r\n"
        ),
        entity = escape(entity),
        basic = basic,
        avail = escape(availability),
        act = escape(activity),
        activities = activities,
        name = name,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// drbridge's Teams documents read back as a Mitel PBX (and drbridge's own reader) means them.
    #[test]
    fn teams_documents_read_back() {
        use PbxUserPresence as U;
        let cases = [
            ("Available", "Available", LineState::Idle, Some(U::Available)),
            ("Busy", "InACall", LineState::InCall, Some(U::Busy)),
            ("Busy", "InAMeeting", LineState::Idle, Some(U::Meeting)),
            ("DoNotDisturb", "Presenting", LineState::Dnd, None),
            ("Away", "Away", LineState::Idle, Some(U::Absent)),
            ("BeRightBack", "BeRightBack", LineState::Idle, Some(U::Absent)),
            ("Offline", "OffWork", LineState::Offline, None),
            ("PresenceUnknown", "PresenceUnknown", LineState::Offline, None),
        ];
        for (avail, act, line, user) in cases {
            let doc = teams_document("sip:4711@pbx.example.local", avail, act);
            let p = parse(doc.as_bytes()).unwrap_or_else(|e| panic!("{avail}/{act}: {e}\n{doc}"));
            assert_eq!(p.entity, "sip:4711@pbx.example.local");
            let r = interpret(&p);
            assert_eq!(r.line, line, "{avail}/{act}: {doc}");
            if let Some(u) = user {
                assert_eq!(r.user, Some(u), "{avail}/{act}: {doc}");
            }
        }
        let doc = teams_document("sip:a\"<b>&@x", "Busy", "<script>");
        assert!(doc.contains("entity=\"sip:a&quot;&lt;b&gt;&amp;@x\"") && doc.contains("Teams: Busy/&lt;script&gt;"), "{doc}");
        assert!(parse(doc.as_bytes()).is_ok());
    }

    fn read(body: &str) -> PresenceReading {
        interpret(&parse(body.as_bytes()).unwrap())
    }

    const DND: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<presence xmlns="urn:ietf:params:xml:ns:pidf" xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model"
          xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid" entity="sip:4711@pbx.lab">
  <tuple id="t4711">
    <status><basic>open</basic></status>
    <contact>sip:4711@pbx.lab</contact>
  </tuple>
  <dm:person id="p4711">
    <rpid:activities><rpid:other>Do Not Disturb</rpid:other></rpid:activities>
    <dm:note>Do Not Disturb</dm:note>
  </dm:person>
</presence>"#;

    const ABSENT: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<presence xmlns="urn:ietf:params:xml:ns:pidf" xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model"
          xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid" entity="sip:4712@pbx.lab">
  <tuple id="t1"><status><basic>open</basic></status></tuple>
  <dm:person id="p1">
    <rpid:activities><rpid:away/></rpid:activities>
    <dm:note>Absent</dm:note>
  </dm:person>
</presence>"#;

    const MEETING: &str = r#"<presence xmlns="urn:ietf:params:xml:ns:pidf" xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model" xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid" entity="sip:4712@pbx.lab">
  <tuple id="t1"><status><basic>open</basic></status></tuple>
  <dm:person id="p1"><rpid:activities><rpid:meeting/></rpid:activities></dm:person>
</presence>"#;

    const ON_THE_PHONE: &str = r#"<presence xmlns="urn:ietf:params:xml:ns:pidf" xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid" xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model" entity="sip:4711@pbx.lab">
  <tuple id="t1"><status><basic>open</basic></status><note>On the phone</note></tuple>
  <dm:person id="p1"><rpid:activities><rpid:on-the-phone/></rpid:activities></dm:person>
</presence>"#;

    const BUSY_USER: &str = r#"<presence xmlns="urn:ietf:params:xml:ns:pidf" xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid" xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model" entity="sip:4711@pbx.lab">
  <tuple id="t1"><status><basic>open</basic></status></tuple>
  <dm:person id="p1"><rpid:activities><rpid:busy/></rpid:activities><dm:note>Busy</dm:note></dm:person>
</presence>"#;

    const NOT_AVAILABLE: &str = r#"<presence xmlns="urn:ietf:params:xml:ns:pidf" xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model" entity="sip:4711@pbx.lab">
  <tuple id="t1"><status><basic>closed</basic></status></tuple>
  <dm:person id="p1"><dm:note>Not available</dm:note></dm:person>
</presence>"#;

    const OPEN: &str = r#"<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:4711@pbx.lab">
  <tuple id="t1"><status><basic>open</basic></status><note>Available</note></tuple>
</presence>"#;

    const CLOSED: &str = r#"<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:4711@pbx.lab">
  <tuple id="t1"><status><basic>closed</basic></status></tuple>
</presence>"#;

    #[test]
    fn mitel_style_bodies() {
        use LineState::*;
        use PbxUserPresence as U;
        let p = parse(DND.as_bytes()).unwrap();
        assert_eq!(p.entity, "sip:4711@pbx.lab");
        assert_eq!(p.basic, [Basic::Open]);
        assert_eq!(p.activities, ["Do Not Disturb"]);
        assert_eq!(p.notes, ["Do Not Disturb"]);
        assert_eq!(read(DND), PresenceReading { line: Dnd, user: None });
        assert_eq!(read(ABSENT), PresenceReading { line: Idle, user: Some(U::Absent) });
        assert_eq!(read(MEETING), PresenceReading { line: Idle, user: Some(U::Meeting) });
        assert_eq!(read(ON_THE_PHONE), PresenceReading { line: InCall, user: None });
        assert_eq!(read(BUSY_USER), PresenceReading { line: Idle, user: Some(U::Busy) });
        assert_eq!(read(NOT_AVAILABLE), PresenceReading { line: Idle, user: Some(U::NotAvailable) });
        assert_eq!(read(OPEN), PresenceReading { line: Idle, user: Some(U::Available) });
        assert_eq!(read(CLOSED), PresenceReading { line: Offline, user: None });
        assert_eq!(read(r#"<presence entity="x"/>"#), PresenceReading { line: Unknown, user: None });
    }

    #[test]
    fn dnd_spellings_and_closed_tuple() {
        let b = r#"<presence xmlns="urn:ietf:params:xml:ns:pidf"><tuple id="a"><status><basic>closed</basic></status><note>DND</note></tuple></presence>"#;
        assert_eq!(read(b).line, LineState::Dnd);
        let b = r#"<presence xmlns="urn:ietf:params:xml:ns:pidf"><tuple id="a"><status><basic>open</basic></status><note>do-not-disturb</note></tuple></presence>"#;
        assert_eq!(read(b).line, LineState::Dnd);
    }

    #[test]
    fn refuses_bad_bodies_without_panic() {
        for b in [
            &b""[..],
            b"<presence><tuple>",
            b"<dialog-info/>",
            br#"<presence><tuple id="a"><status><basic>half-open</basic></status></tuple></presence>"#,
            br#"<!DOCTYPE p [<!ENTITY x "y">]><presence/>"#,
            b"\xc3\x28",
        ] {
            assert!(parse(b).is_err(), "{:?}", String::from_utf8_lossy(b));
        }
        // Long notes are cut, not refused.
        let long = format!(r#"<presence><note>{}</note></presence>"#, "x".repeat(5000));
        assert_eq!(parse(long.as_bytes()).unwrap().notes[0].len(), 256);
    }
}
