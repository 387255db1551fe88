//! RFC 4235 `application/dialog-info+xml` bodies (the `dialog` event package): the PBX's view of
//! the calls on a monitored extension, including phones whose calls never cross drbridge.
//!
//! Parsing is lenient about namespaces (matching by local name, as PBXs vary) and strict about
//! size and structure; DTDs are refused. A parse error is a value, never a panic.

use super::state::LineState;
use super::PresenceError;
use serde::Serialize;

/// Largest body accepted.
pub const MAX_BODY: usize = 64 * 1024;
/// Most `<dialog>` elements read from one body.
pub const MAX_DIALOGS: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DialogState {
    Trying,
    Proceeding,
    Early,
    Confirmed,
    Terminated,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    /// The monitored extension placed the call.
    Initiator,
    /// The monitored extension receives the call.
    Recipient,
}

/// One `<dialog>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DialogEntry {
    pub id: String,
    pub state: DialogState,
    pub direction: Option<Direction>,
    /// The local side does not render media (`+sip.rendering="no"` on the local target): held.
    pub held: bool,
    /// The remote identity, if given.
    pub remote: Option<String>,
}

/// One `<dialog-info>` document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DialogInfo {
    pub version: u32,
    /// `state="full"`: the dialogs listed are all the dialogs; `partial`: only changes.
    pub full: bool,
    pub entity: String,
    pub dialogs: Vec<DialogEntry>,
}

fn bad(reason: impl Into<String>) -> PresenceError {
    PresenceError::Body { what: "dialog-info", reason: reason.into() }
}

pub(crate) fn xml_text(body: &[u8], max: usize) -> Result<&str, String> {
    if body.len() > max {
        return Err(format!("body of {} bytes exceeds {max}", body.len()));
    }
    std::str::from_utf8(body).map_err(|_| "not UTF-8".to_string())
}

pub(crate) fn xml_doc(text: &str) -> Result<roxmltree::Document<'_>, String> {
    let opt = roxmltree::ParsingOptions { allow_dtd: false, nodes_limit: 4096, ..Default::default() };
    roxmltree::Document::parse_with_options(text, opt).map_err(|e| e.to_string())
}

fn child<'a, 'i>(n: roxmltree::Node<'a, 'i>, name: &str) -> Option<roxmltree::Node<'a, 'i>> {
    n.children().find(|c| c.is_element() && c.tag_name().name() == name)
}

/// Parses a dialog-info body.
pub fn parse(body: &[u8]) -> Result<DialogInfo, PresenceError> {
    let text = xml_text(body, MAX_BODY).map_err(bad)?;
    let doc = xml_doc(text).map_err(bad)?;
    let root = doc.root_element();
    if root.tag_name().name() != "dialog-info" {
        return Err(bad(format!("root element is <{}>, not <dialog-info>", root.tag_name().name())));
    }
    let version = root
        .attribute("version")
        .ok_or_else(|| bad("no version attribute"))?
        .trim()
        .parse::<u32>()
        .map_err(|_| bad("version is not a number"))?;
    let full = match root.attribute("state").map(str::trim) {
        Some("full") => true,
        Some("partial") => false,
        other => return Err(bad(format!("state attribute {other:?} is neither full nor partial"))),
    };
    let entity = root.attribute("entity").unwrap_or("").to_string();
    let mut dialogs = Vec::new();
    for d in root.children().filter(|c| c.is_element() && c.tag_name().name() == "dialog") {
        if dialogs.len() == MAX_DIALOGS {
            return Err(bad(format!("more than {MAX_DIALOGS} dialogs")));
        }
        let id = d.attribute("id").ok_or_else(|| bad("dialog without id"))?.to_string();
        let st = child(d, "state").ok_or_else(|| bad(format!("dialog {id:?} without <state>")))?;
        let state = match st.text().unwrap_or("").trim() {
            "trying" => DialogState::Trying,
            "proceeding" => DialogState::Proceeding,
            "early" => DialogState::Early,
            "confirmed" => DialogState::Confirmed,
            "terminated" => DialogState::Terminated,
            s => return Err(bad(format!("dialog {id:?}: unknown state {s:?}"))),
        };
        let direction = match d.attribute("direction").map(str::trim) {
            Some("initiator") => Some(Direction::Initiator),
            Some("recipient") => Some(Direction::Recipient),
            _ => None,
        };
        let held = child(d, "local").and_then(|l| child(l, "target")).is_some_and(|t| {
            t.children().any(|p| {
                p.is_element()
                    && p.tag_name().name() == "param"
                    && p.attribute("pname").is_some_and(|n| n.eq_ignore_ascii_case("+sip.rendering"))
                    && p.attribute("pvalue").is_some_and(|v| v.trim().eq_ignore_ascii_case("no"))
            })
        });
        let remote = child(d, "remote").and_then(|r| child(r, "identity")).and_then(|i| i.text()).map(|s| s.trim().to_string());
        dialogs.push(DialogEntry { id, state, direction, held, remote });
    }
    Ok(DialogInfo { version, full, entity, dialogs })
}

/// The line state of an extension given its current (non-terminated) dialogs: a connected call
/// is InCall (Held when every connected call is held); a call being placed is Dialing; a call
/// only alerting is Ringing; none is Idle. An early dialog without a direction counts as
/// Ringing (not Busy), as the seed's phone is Busy only when it "place[s] a call or answer[s]".
pub fn line_state<'a, I: IntoIterator<Item = &'a DialogEntry>>(dialogs: I) -> LineState {
    let (mut confirmed, mut all_held, mut dialing, mut ringing) = (false, true, false, false);
    for d in dialogs {
        match d.state {
            DialogState::Confirmed => {
                confirmed = true;
                all_held &= d.held;
            }
            DialogState::Trying | DialogState::Proceeding | DialogState::Early => match d.direction {
                Some(Direction::Initiator) => dialing = true,
                _ => ringing = true,
            },
            DialogState::Terminated => {}
        }
    }
    if confirmed {
        if all_held {
            LineState::Held
        } else {
            LineState::InCall
        }
    } else if dialing {
        LineState::Dialing
    } else if ringing {
        LineState::Ringing
    } else {
        LineState::Idle
    }
}

/// The dialog-info document (RFC 4235, `state="full"`) drbridge NOTIFYs to PBX-side watchers
/// of the `dialog` package (busy lamp fields) for a Teams presence: one confirmed dialog while
/// Teams says the user is in a call (activity InACall / InAConferenceCall), none otherwise.
/// `version="0"` is a placeholder: the notifier writes each subscription's own counter there.
pub fn teams_document(entity: &str, activity: &str) -> String {
    let in_call = matches!(activity, "InACall" | "InAConferenceCall");
    let entity = super::pidf::escape(entity);
    let dialog = if in_call { "<dialog id=\"teams\"><state>confirmed</state></dialog>" } else { "" };
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\r\n<dialog-info xmlns=\"urn:ietf:params:xml:ns:dialog-info\" version=\"0\" state=\"full\" entity=\"{entity}\">{dialog}</dialog-info>\r\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn teams_documents_read_back() {
        let busy = parse(teams_document("sip:+4681234801@pbx", "InACall").as_bytes()).unwrap();
        assert_eq!((busy.full, busy.version, busy.entity.as_str()), (true, 0, "sip:+4681234801@pbx"));
        assert_eq!(line_state(&busy.dialogs), LineState::InCall);
        for activity in ["Available", "InAMeeting", "Presenting", "Away"] {
            let idle = parse(teams_document("sip:4711@pbx", activity).as_bytes()).unwrap();
            assert_eq!(line_state(&idle.dialogs), LineState::Idle, "{activity}");
        }
    }

    // RFC 4235 section 4.2 style, as an MX-ONE / MiVB would send for extension 4711.
    const EARLY_IN: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info" version="1" state="full" entity="sip:4711@pbx.lab">
  <dialog id="a1b2c3" call-id="3848276298220188511@10.0.0.5" local-tag="1928301774" direction="recipient">
    <state>early</state>
    <remote><identity display="Bo">sip:4712@pbx.lab</identity></remote>
  </dialog>
</dialog-info>"#;

    const CONFIRMED_HELD: &str = r#"<?xml version="1.0"?>
<dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info" version="3" state="partial" entity="sip:4711@pbx.lab">
  <dialog id="a1b2c3" call-id="3848276298220188511@10.0.0.5" local-tag="1928301774" remote-tag="456887766" direction="initiator">
    <state event="replaced">confirmed</state>
    <duration>12</duration>
    <local>
      <identity>sip:4711@pbx.lab</identity>
      <target uri="sip:4711@10.0.0.21:5060"><param pname="+sip.rendering" pvalue="no"/></target>
    </local>
    <remote><identity>sip:+4681234801@pbx.lab</identity></remote>
  </dialog>
</dialog-info>"#;

    const TERMINATED: &str = r#"<dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info" version="4" state="partial" entity="sip:4711@pbx.lab">
  <dialog id="a1b2c3"><state event="remote-bye" code="200">terminated</state></dialog>
</dialog-info>"#;

    const IDLE: &str = r#"<dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info" version="0" state="full" entity="sip:4711@pbx.lab"/>"#;

    #[test]
    fn parses_realistic_bodies() {
        let d = parse(EARLY_IN.as_bytes()).unwrap();
        assert_eq!((d.version, d.full, d.entity.as_str()), (1, true, "sip:4711@pbx.lab"));
        assert_eq!(d.dialogs.len(), 1);
        assert_eq!(d.dialogs[0].state, DialogState::Early);
        assert_eq!(d.dialogs[0].direction, Some(Direction::Recipient));
        assert_eq!(d.dialogs[0].remote.as_deref(), Some("sip:4712@pbx.lab"));
        assert_eq!(line_state(&d.dialogs), LineState::Ringing);

        let d = parse(CONFIRMED_HELD.as_bytes()).unwrap();
        assert!(!d.full);
        assert!(d.dialogs[0].held);
        assert_eq!(line_state(&d.dialogs), LineState::Held);

        let d = parse(TERMINATED.as_bytes()).unwrap();
        assert_eq!(d.dialogs[0].state, DialogState::Terminated);
        assert_eq!(line_state(&d.dialogs), LineState::Idle);

        let d = parse(IDLE.as_bytes()).unwrap();
        assert!(d.dialogs.is_empty());
        assert_eq!(line_state(&d.dialogs), LineState::Idle);
    }

    #[test]
    fn line_state_precedence() {
        let e = |state, direction, held| DialogEntry { id: "x".into(), state, direction, held, remote: None };
        use DialogState::*;
        assert_eq!(line_state(&[e(Early, Some(Direction::Initiator), false)]), LineState::Dialing);
        assert_eq!(line_state(&[e(Trying, None, false)]), LineState::Ringing);
        // One held call and one active call: in a call.
        assert_eq!(line_state(&[e(Confirmed, None, true), e(Confirmed, None, false)]), LineState::InCall);
        // A held call and a second call ringing in: still Held (a call).
        assert_eq!(line_state(&[e(Confirmed, None, true), e(Early, Some(Direction::Recipient), false)]), LineState::Held);
    }

    #[test]
    fn refuses_bad_bodies_without_panic() {
        for b in [
            &b""[..],
            b"<dialog-info",
            b"<presence/>",
            br#"<dialog-info version="x" state="full"/>"#,
            br#"<dialog-info version="1" state="half"/>"#,
            br#"<dialog-info version="1" state="full"><dialog><state>early</state></dialog></dialog-info>"#,
            br#"<dialog-info version="1" state="full"><dialog id="1"><state>ringing</state></dialog></dialog-info>"#,
            br#"<dialog-info version="1" state="full"><dialog id="1"/></dialog-info>"#,
            b"\xff\xfe<dialog-info/>",
            br#"<!DOCTYPE lol [<!ENTITY a "aaaa">]><dialog-info version="1" state="full" entity="&a;"/>"#,
        ] {
            assert!(parse(b).is_err(), "{:?}", String::from_utf8_lossy(b));
        }
        let many: String = (0..65).map(|i| format!(r#"<dialog id="{i}"><state>early</state></dialog>"#)).collect();
        let body = format!(r#"<dialog-info version="1" state="full">{many}</dialog-info>"#);
        assert!(parse(body.as_bytes()).is_err());
        assert!(parse(&vec![b' '; MAX_BODY + 1]).is_err());
    }
}
