//! The presence vocabulary: what Teams (Graph) accepts, what the PBX reports, and the CloudLink
//! precedence levels that combine them.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Graph `availability` values an application session may set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TeamsAvailability {
    Available,
    Busy,
    Away,
    DoNotDisturb,
}

/// Graph `activity` values an application session may set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TeamsActivity {
    Available,
    InACall,
    InAConferenceCall,
    Away,
    Presenting,
}

impl TeamsAvailability {
    /// The string Graph expects in `setPresence`.
    pub fn as_str(self) -> &'static str {
        match self {
            TeamsAvailability::Available => "Available",
            TeamsAvailability::Busy => "Busy",
            TeamsAvailability::Away => "Away",
            TeamsAvailability::DoNotDisturb => "DoNotDisturb",
        }
    }
}

impl TeamsActivity {
    /// The string Graph expects in `setPresence`.
    pub fn as_str(self) -> &'static str {
        match self {
            TeamsActivity::Available => "Available",
            TeamsActivity::InACall => "InACall",
            TeamsActivity::InAConferenceCall => "InAConferenceCall",
            TeamsActivity::Away => "Away",
            TeamsActivity::Presenting => "Presenting",
        }
    }
}

/// One (availability, activity) pair that Graph's `setPresence` accepts for an application
/// session. Only the five documented pairs can be built, so the publisher cannot send a pair
/// Graph refuses: Available/Available, Busy/InACall, Busy/InAConferenceCall, Away/Away,
/// DoNotDisturb/Presenting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawPair", into = "RawPair")]
pub struct TeamsPresence {
    availability: TeamsAvailability,
    activity: TeamsActivity,
}

#[derive(Serialize, Deserialize)]
struct RawPair {
    availability: TeamsAvailability,
    activity: TeamsActivity,
}

impl TryFrom<RawPair> for TeamsPresence {
    type Error = String;
    fn try_from(r: RawPair) -> Result<Self, String> {
        TeamsPresence::new(r.availability, r.activity)
            .ok_or_else(|| format!("{}/{} is not a pair Graph accepts", r.availability.as_str(), r.activity.as_str()))
    }
}

impl From<TeamsPresence> for RawPair {
    fn from(p: TeamsPresence) -> RawPair {
        RawPair { availability: p.availability, activity: p.activity }
    }
}

impl TeamsPresence {
    pub const AVAILABLE: TeamsPresence = TeamsPresence { availability: TeamsAvailability::Available, activity: TeamsActivity::Available };
    pub const IN_A_CALL: TeamsPresence = TeamsPresence { availability: TeamsAvailability::Busy, activity: TeamsActivity::InACall };
    pub const IN_A_CONFERENCE_CALL: TeamsPresence =
        TeamsPresence { availability: TeamsAvailability::Busy, activity: TeamsActivity::InAConferenceCall };
    pub const AWAY: TeamsPresence = TeamsPresence { availability: TeamsAvailability::Away, activity: TeamsActivity::Away };
    pub const DO_NOT_DISTURB: TeamsPresence =
        TeamsPresence { availability: TeamsAvailability::DoNotDisturb, activity: TeamsActivity::Presenting };

    /// The pair, if Graph accepts it for an application session.
    pub fn new(availability: TeamsAvailability, activity: TeamsActivity) -> Option<TeamsPresence> {
        use TeamsActivity as Ac;
        use TeamsAvailability as Av;
        let ok = matches!(
            (availability, activity),
            (Av::Available, Ac::Available)
                | (Av::Busy, Ac::InACall)
                | (Av::Busy, Ac::InAConferenceCall)
                | (Av::Away, Ac::Away)
                | (Av::DoNotDisturb, Ac::Presenting)
        );
        ok.then_some(TeamsPresence { availability, activity })
    }

    pub fn availability(self) -> TeamsAvailability {
        self.availability
    }

    pub fn activity(self) -> TeamsActivity {
        self.activity
    }
}

impl fmt::Display for TeamsPresence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.availability.as_str(), self.activity.as_str())
    }
}

/// A user presence status set on the PBX (MiVoice Office 400 system menu, a key, the
/// self-service portal, or Mitel One, whose statuses map onto these). The seed lists exactly
/// these five: "Available (default), Absent, Meeting, Busy, Not Available".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PbxUserPresence {
    Available,
    Absent,
    Meeting,
    Busy,
    NotAvailable,
}

impl PbxUserPresence {
    /// Reads a status name as PBXs, Mitel One and adapters spell it (case-insensitive; spaces,
    /// dashes and underscores ignored). Mitel One's "Away" is the PBX's "Absent".
    pub fn parse(s: &str) -> Option<PbxUserPresence> {
        let k: String = s.chars().filter(|c| !matches!(c, ' ' | '-' | '_')).flat_map(char::to_lowercase).collect();
        Some(match k.as_str() {
            "available" => PbxUserPresence::Available,
            "absent" | "away" => PbxUserPresence::Absent,
            "meeting" | "inameeting" => PbxUserPresence::Meeting,
            "busy" => PbxUserPresence::Busy,
            "notavailable" | "unavailable" => PbxUserPresence::NotAvailable,
            _ => return None,
        })
    }
}

/// The state of one device or line of a user (a desk phone seen through the PBX, one call leg
/// through drbridge, a CSTA-monitored device).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LineState {
    /// Registered / present and not in a call.
    Idle,
    /// An incoming call is alerting; not answered yet.
    Ringing,
    /// An outgoing call is being set up (the user placed it; early dialog as initiator).
    Dialing,
    /// In a call (connected).
    InCall,
    /// In a call that is on hold (still a call).
    Held,
    /// Do not disturb is on for this device / line.
    Dnd,
    /// The device is unregistered / out of service.
    Offline,
    /// Nothing is known.
    Unknown,
}

/// The CloudLink precedence levels: "Away > Do not disturb > Busy > Available > Offline >
/// Unknown". `Ord` follows that precedence (Unknown is the lowest), so combining is `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PresenceLevel {
    Unknown,
    Offline,
    Available,
    Busy,
    DoNotDisturb,
    Away,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_graph_pairs_exist() {
        use TeamsActivity as Ac;
        use TeamsAvailability as Av;
        let avs = [Av::Available, Av::Busy, Av::Away, Av::DoNotDisturb];
        let acs = [Ac::Available, Ac::InACall, Ac::InAConferenceCall, Ac::Away, Ac::Presenting];
        let ok: Vec<String> = avs
            .iter()
            .flat_map(|a| acs.iter().map(move |b| (*a, *b)))
            .filter_map(|(a, b)| TeamsPresence::new(a, b))
            .map(|p| p.to_string())
            .collect();
        assert_eq!(
            ok,
            ["Available/Available", "Busy/InACall", "Busy/InAConferenceCall", "Away/Away", "DoNotDisturb/Presenting"]
        );
    }

    #[test]
    fn pair_serde_refuses_other_pairs() {
        let p: TeamsPresence = serde_json::from_str(r#"{"availability":"Busy","activity":"InACall"}"#).unwrap();
        assert_eq!(p, TeamsPresence::IN_A_CALL);
        assert!(serde_json::from_str::<TeamsPresence>(r#"{"availability":"Busy","activity":"Away"}"#).is_err());
        assert_eq!(serde_json::to_string(&TeamsPresence::DO_NOT_DISTURB).unwrap(), r#"{"availability":"DoNotDisturb","activity":"Presenting"}"#);
    }

    #[test]
    fn precedence_order_is_the_cloudlink_one() {
        // "Away > Do not disturb > Busy > Available > Offline > Unknown"
        use PresenceLevel::*;
        let mut v = vec![Available, Unknown, Away, Busy, Offline, DoNotDisturb];
        v.sort();
        v.reverse();
        assert_eq!(v, [Away, DoNotDisturb, Busy, Available, Offline, Unknown]);
    }

    #[test]
    fn user_presence_names() {
        assert_eq!(PbxUserPresence::parse("Not Available"), Some(PbxUserPresence::NotAvailable));
        assert_eq!(PbxUserPresence::parse("not_available"), Some(PbxUserPresence::NotAvailable));
        assert_eq!(PbxUserPresence::parse("AWAY"), Some(PbxUserPresence::Absent));
        assert_eq!(PbxUserPresence::parse("Meeting"), Some(PbxUserPresence::Meeting));
        assert_eq!(PbxUserPresence::parse("lunch"), None);
    }
}
