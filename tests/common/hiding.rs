//! Topology-hiding assertions: what one side received must not name the other side's
//! addresses, Call-IDs or tags.

use drbridge::sip::msg::{parse_datagram, Limits, Message};

/// Panics, naming each needle found (with context), if `haystack` contains any of `needles`.
pub fn assert_absent(what: &str, haystack: &str, needles: &[String]) {
    let mut found = Vec::new();
    for n in needles.iter().filter(|n| !n.is_empty()) {
        if let Some(i) = haystack.find(n.as_str()) {
            let a = haystack[..i].char_indices().rev().nth(80).map(|(j, _)| j).unwrap_or(0);
            let b = (i + n.len() + 80).min(haystack.len());
            let b = (b..=haystack.len()).find(|k| haystack.is_char_boundary(*k)).unwrap_or(haystack.len());
            found.push(format!("{n:?} in ...{}...", &haystack[a..b]));
        }
    }
    assert!(found.is_empty(), "topology leak into {what}:\n{}", found.join("\n"));
}

/// Panics if any of `needles` is missing from `haystack`.
pub fn assert_present(what: &str, haystack: &str, needles: &[String]) {
    let missing: Vec<&String> = needles.iter().filter(|n| !haystack.contains(n.as_str())).collect();
    assert!(missing.is_empty(), "{what}: missing {missing:?}");
}

/// The identifying values of a list of SIP messages (as text): Call-IDs, From/To tags and Via
/// branches. What the other side must never see.
pub fn identifiers(messages: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for m in messages {
        let raw = m.replace("\r\n", "\n").replace('\n', "\r\n") + "\r\n";
        let Ok(msg) = parse_datagram(bytes::Bytes::from(raw), &Limits::default()) else { continue };
        let h = msg.headers();
        if let Some(c) = h.get("Call-ID") {
            out.push(c.to_string());
        }
        let (f, t) = match &msg {
            Message::Request(r) => (r.from_tag(), r.to_tag()),
            Message::Response(r) => (r.from_tag(), r.to_tag()),
        };
        out.extend(f.map(str::to_string));
        out.extend(t.map(str::to_string));
    }
    out.sort();
    out.dedup();
    out
}
