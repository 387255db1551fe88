//! Combining a user's line states and PBX user presence into one presence, and that presence
//! into what drbridge says in its Teams application presence session.
//!
//! Rules, from the seed (cloudlink-to-teams-presence.txt / the solution guide chapter "Sync
//! Presence via CloudLink to Microsoft Teams"):
//!
//! - "CloudLink combines presence from all the PBX devices/line states and from the user" with
//!   the precedence "Away > Do not disturb > Busy > Available > Offline > Unknown"
//!   ([`PresenceLevel`]'s order; combining is `max`).
//! - Line states: "When you place a call or answer a call using your desk phone, your presence
//!   status will be Busy, otherwise it will be Available", and "it will be shown as Do not
//!   disturb, if the user has activated the Do not disturb feature on the PBX". So InCall, Held
//!   and Dialing (placing a call) are Busy; an incoming call that only rings is Available; DND is
//!   Do not disturb; an unregistered device is Offline.
//! - User presence ("MIVO400 User Presence State" -> "CloudLink Presence"): Available ->
//!   Available, Absent -> Away, Busy or Meeting -> Busy, Not available -> "Not available", which
//!   has no Teams application state: see [`Mapping::not_available`] (default Do not disturb).
//! - "CloudLink presence state is synchronized with MS Teams as an app-configured presence state
//!   by creating an application presence session", and Teams combines app sessions "Do not
//!   disturb > Busy > Available > Away" under any user-configured state. The seed's table shows
//!   an idle phone leaving Teams at Offline (client offline) or Away (client inactive): an
//!   Available application session would show Available there, so by default drbridge says
//!   nothing (clearPresence) when the combined level is Available ([`AvailablePolicy::Clear`]).

use super::state::{LineState, PbxUserPresence, PresenceLevel, TeamsPresence};
use serde::{Deserialize, Serialize};

/// What drbridge publishes when a user's combined level is Available.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum AvailablePolicy {
    /// Nothing (clearPresence): Teams shows what the user's own clients say. Reproduces the
    /// seed's table (idle phone + Teams offline -> Offline, + Teams inactive -> Away).
    #[default]
    Clear,
    /// An Available/Available session. Teams then shows Available even with every client
    /// offline or inactive (fading to Away after about 10 minutes, per Graph).
    Publish,
}

/// The choices the seeds leave open.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mapping {
    /// See [`AvailablePolicy`].
    pub available: AvailablePolicy,
    /// The level PBX user presence "Not available" takes. The seed keeps it as CloudLink's "Not
    /// available", which Teams has no application state for. Default: Do not disturb (published
    /// as DoNotDisturb/Presenting): on MiVoice Office 400 "Not available" is the user saying
    /// "do not reach me" (calls are diverted), and Teams' Do not disturb is the state that says
    /// so and is not hidden by an active Teams client. Away would be hidden by any active Teams
    /// client (FAQ 5) and Offline cannot be set by an application. Allowed: Away, DoNotDisturb,
    /// Busy, Offline (Offline = say nothing).
    pub not_available: PresenceLevel,
}

impl Default for Mapping {
    fn default() -> Self {
        Mapping { available: AvailablePolicy::Clear, not_available: PresenceLevel::DoNotDisturb }
    }
}

/// One input to the combination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Line(LineState),
    User(PbxUserPresence),
}

/// The result of combining a user's signals.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Aggregate {
    /// The CloudLink-style combined level (what Mitel One would show).
    pub level: PresenceLevel,
    /// What drbridge's application session should say; `None`: nothing (clearPresence).
    pub teams: Option<TeamsPresence>,
}

/// The level of one line state.
pub fn line_level(s: LineState) -> PresenceLevel {
    match s {
        LineState::Idle | LineState::Ringing => PresenceLevel::Available,
        LineState::Dialing | LineState::InCall | LineState::Held => PresenceLevel::Busy,
        LineState::Dnd => PresenceLevel::DoNotDisturb,
        LineState::Offline => PresenceLevel::Offline,
        LineState::Unknown => PresenceLevel::Unknown,
    }
}

/// The level of a PBX user presence status.
pub fn user_level(p: PbxUserPresence, m: &Mapping) -> PresenceLevel {
    match p {
        PbxUserPresence::Available => PresenceLevel::Available,
        PbxUserPresence::Absent => PresenceLevel::Away,
        PbxUserPresence::Busy | PbxUserPresence::Meeting => PresenceLevel::Busy,
        PbxUserPresence::NotAvailable => m.not_available,
    }
}

/// Combines all signals of one user. No signal at all is Unknown (nothing to say).
pub fn aggregate<I: IntoIterator<Item = Signal>>(signals: I, m: &Mapping) -> Aggregate {
    let mut level = PresenceLevel::Unknown;
    // Busy from a call (or a PBX "Busy" status) is InACall; Busy only from "Meeting" is
    // InAConferenceCall.
    let mut busy_call = false;
    let mut busy_meeting = false;
    for s in signals {
        let l = match s {
            Signal::Line(ls) => line_level(ls),
            Signal::User(up) => user_level(up, m),
        };
        if l == PresenceLevel::Busy {
            match s {
                Signal::User(PbxUserPresence::Meeting) => busy_meeting = true,
                _ => busy_call = true,
            }
        }
        level = level.max(l);
    }
    let teams = match level {
        PresenceLevel::Away => Some(TeamsPresence::AWAY),
        PresenceLevel::DoNotDisturb => Some(TeamsPresence::DO_NOT_DISTURB),
        PresenceLevel::Busy if busy_meeting && !busy_call => Some(TeamsPresence::IN_A_CONFERENCE_CALL),
        PresenceLevel::Busy => Some(TeamsPresence::IN_A_CALL),
        PresenceLevel::Available => match m.available {
            AvailablePolicy::Clear => None,
            AvailablePolicy::Publish => Some(TeamsPresence::AVAILABLE),
        },
        PresenceLevel::Offline | PresenceLevel::Unknown => None,
    };
    Aggregate { level, teams }
}

/// Teams -> PBX (bi-directional sync): the PBX user presence to set for a user's Teams presence
/// as Graph reports it (`availability`, `activity` strings of a presence notification), or
/// `None` for "leave the PBX as it is".
///
/// The MiCollab seed lists the Teams statuses the PBX side shows: "Available, Busy, Do Not
/// Disturb, Away, Be Right Back, Offline". Mapped onto the PBX's five statuses: Available ->
/// Available; Busy -> Busy (in a meeting / conference: Meeting); Do not disturb -> Not
/// available (the inverse of [`Mapping::not_available`]'s default); Away, Be right back, Out of
/// office -> Absent; Offline / unknown -> no change (a Teams client being closed says nothing
/// about the desk phone user).
///
/// Echo: Graph reports the user's combined presence, which includes drbridge's own application
/// session. When the reported availability is what drbridge itself publishes (`ours`), it is
/// (most likely) the echo of the PBX's own state and is not sent back, or a PBX call would latch
/// the PBX user status at Busy. The caller must also never feed what it sets on the PBX back in
/// as a PBX user presence source of the same user (tag it and skip it).
pub fn teams_to_pbx(availability: &str, activity: &str, ours: Option<TeamsPresence>) -> Option<PbxUserPresence> {
    if ours.is_some_and(|p| p.availability().as_str().eq_ignore_ascii_case(availability)) {
        return None;
    }
    let act = activity.to_ascii_lowercase();
    Some(match availability.to_ascii_lowercase().as_str() {
        "available" | "availableidle" => PbxUserPresence::Available,
        "busy" | "busyidle" if act == "inameeting" || act == "inaconferencecall" => PbxUserPresence::Meeting,
        "busy" | "busyidle" => PbxUserPresence::Busy,
        "donotdisturb" => PbxUserPresence::NotAvailable,
        "away" | "berightback" => PbxUserPresence::Absent,
        _ if act == "outofoffice" => PbxUserPresence::Absent,
        _ => return None,
    })
}

/// A model of how Teams combines presence sessions, as the seeds and Graph's documentation
/// describe it ("User-configured > app-configured"; "Among app-configured: Do not disturb > Busy
/// > Available > Away"; no session: Offline). Used to check the seed's "what others see" column.
#[cfg(test)]
pub(crate) mod teams_model {
    use super::super::state::{TeamsAvailability, TeamsPresence};

    /// "MS Teams Client State" of the seed's table.
    #[derive(Clone, Copy, Debug)]
    pub enum Client {
        Offline,
        ConnectedInactive,
        ConnectedActive,
        BusyInTeams,
        FocusPresenting,
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
    pub enum Shown {
        Offline,
        Away,
        Available,
        Busy,
        DoNotDisturb,
    }

    fn of(a: TeamsAvailability) -> Shown {
        match a {
            TeamsAvailability::Available => Shown::Available,
            TeamsAvailability::Busy => Shown::Busy,
            TeamsAvailability::Away => Shown::Away,
            TeamsAvailability::DoNotDisturb => Shown::DoNotDisturb,
        }
    }

    /// What others see in Teams.
    pub fn shown(client: Client, user_configured: Option<TeamsAvailability>, app: Option<TeamsPresence>) -> Shown {
        if let Some(u) = user_configured {
            return of(u);
        }
        let client = match client {
            Client::Offline => None,
            Client::ConnectedInactive => Some(Shown::Away),
            Client::ConnectedActive => Some(Shown::Available),
            Client::BusyInTeams => Some(Shown::Busy),
            Client::FocusPresenting => Some(Shown::DoNotDisturb),
        };
        // Shown's Ord is the app-configured precedence: DND > Busy > Available > Away.
        client.into_iter().chain(app.map(|p| of(p.availability()))).max().unwrap_or(Shown::Offline)
    }
}

#[cfg(test)]
mod tests {
    use super::teams_model::{shown, Client, Shown};
    use super::*;
    use crate::presence::state::TeamsAvailability;

    fn agg(signals: &[Signal]) -> Aggregate {
        aggregate(signals.iter().copied(), &Mapping::default())
    }

    fn phone(s: &str) -> Signal {
        Signal::Line(match s {
            "Available" => LineState::Idle,
            "Busy" => LineState::InCall,
            _ => unreachable!(),
        })
    }

    fn user(s: &str) -> Signal {
        Signal::User(PbxUserPresence::parse(s).unwrap())
    }

    fn level(s: &str) -> PresenceLevel {
        match s {
            "Available" => PresenceLevel::Available,
            "Busy" => PresenceLevel::Busy,
            _ => unreachable!(),
        }
    }

    fn client(s: &str) -> Client {
        match s {
            "Offline" => Client::Offline,
            "Connected, Inactive" => Client::ConnectedInactive,
            "Connected, Active" => Client::ConnectedActive,
            "Busy (in Teams call/meeting)" => Client::BusyInTeams,
            "Focus/Presenting" => Client::FocusPresenting,
            _ => unreachable!(),
        }
    }

    fn seen(s: &str) -> Shown {
        match s {
            "Offline" => Shown::Offline,
            "Away" => Shown::Away,
            "Available" => Shown::Available,
            "Busy" => Shown::Busy,
            "Do not disturb" => Shown::DoNotDisturb,
            _ => unreachable!(),
        }
    }

    /// The seed's table, verbatim: "PBX Phone Presence | PBX User Presence | Mitel One Presence |
    /// MS Teams Client State | MS Teams Presence Status (What others see)".
    const SEED_TABLE: &str = "\
Available | Available | Available | Offline | Offline |
Available | Available | Available | Connected, Inactive | Away |
Available | Available | Available | Connected, Active | Available |
Available | Available | Available | Busy (in Teams call/meeting) | Busy |
Available | Available | Available | Focus/Presenting | Do not disturb |
Busy | Available | Busy | Offline | Busy |
Busy | Available | Busy | Connected, Inactive | Busy |
Busy | Available | Busy | Connected, Active | Busy |
Busy | Available | Busy | Busy (in Teams call/meeting) | Busy |
Busy | Available | Busy | Focus/Presenting | Do not disturb |
Available | Busy | Busy | Offline | Busy |
Available | Busy | Busy | Connected, Inactive | Busy |
Available | Busy | Busy | Connected, Active | Busy |
Available | Busy | Busy | Busy (in Teams call/meeting) | Busy |
Available | Busy | Busy | Focus/Presenting | Do not disturb |";

    #[test]
    fn seed_table_every_row() {
        let mut rows = 0;
        for line in SEED_TABLE.lines() {
            let c: Vec<&str> = line.split('|').map(str::trim).collect();
            let (ph, up, m1, cl, want) = (c[0], c[1], c[2], c[3], c[4]);
            let a = agg(&[phone(ph), user(up)]);
            // drbridge's combined level is what Mitel One shows.
            assert_eq!(a.level, level(m1), "row {line}");
            // drbridge's application session: Busy -> Busy/InACall, Available -> nothing.
            let app = if m1 == "Busy" { Some(TeamsPresence::IN_A_CALL) } else { None };
            assert_eq!(a.teams, app, "row {line}");
            // With Teams' own combination, others see the seed's last column.
            assert_eq!(shown(client(cl), None, a.teams), seen(want), "row {line}");
            rows += 1;
        }
        assert_eq!(rows, 15);
    }

    #[test]
    fn publish_available_policy_breaks_the_idle_rows_as_documented() {
        // With an Available session, "Available | Available | Available | Offline | Offline"
        // would show Available: why Clear is the default.
        let m = Mapping { available: AvailablePolicy::Publish, ..Mapping::default() };
        let a = aggregate([phone("Available"), user("Available")], &m);
        assert_eq!(a.teams, Some(TeamsPresence::AVAILABLE));
        assert_eq!(shown(Client::Offline, None, a.teams), Shown::Available);
    }

    #[test]
    fn faq4_precedence_differs_between_teams_and_cloudlink() {
        // FAQ 4: "when you log in to an MS Teams client, MS Teams shows your presence as
        // Available, and when you place a call using the PBX, CloudLink shows your presence as
        // Busy." Table 1: MS Teams "Among app-configured: Do not disturb > Busy > Available >
        // Away"; CloudLink "Away > Do not disturb > Busy > Available > Offline > Unknown".
        let a = agg(&[Signal::Line(LineState::Dialing)]);
        assert_eq!(a.level, PresenceLevel::Busy);
        assert_eq!(a.teams, Some(TeamsPresence::IN_A_CALL));
        assert_eq!(shown(Client::ConnectedActive, None, a.teams), Shown::Busy);
        // CloudLink side: Away beats DND beats Busy.
        let a = agg(&[Signal::Line(LineState::InCall), Signal::Line(LineState::Dnd), user("Absent")]);
        assert_eq!((a.level, a.teams), (PresenceLevel::Away, Some(TeamsPresence::AWAY)));
        let a = agg(&[Signal::Line(LineState::InCall), Signal::Line(LineState::Dnd)]);
        assert_eq!((a.level, a.teams), (PresenceLevel::DoNotDisturb, Some(TeamsPresence::DO_NOT_DISTURB)));
        // Teams side: the same Away app session loses against a client's DND, Busy, Available.
        assert_eq!(shown(Client::FocusPresenting, None, Some(TeamsPresence::AWAY)), Shown::DoNotDisturb);
        assert_eq!(shown(Client::BusyInTeams, None, Some(TeamsPresence::AWAY)), Shown::Busy);
        // And an app DND beats a Teams client's Busy.
        assert_eq!(shown(Client::BusyInTeams, None, Some(TeamsPresence::DO_NOT_DISTURB)), Shown::DoNotDisturb);
    }

    #[test]
    fn faq5_absent_is_hidden_by_an_available_teams_client() {
        // FAQ 5: "In Teams when the presence status of the user is Available, and the user's
        // state is Away in the Mitel One application, or Absent in the MiVO400 PBX, the Away
        // status might not be displayed in Teams." Answer: "Available in Teams has a higher
        // precedence than the status Away (set by an application)."
        let a = agg(&[phone("Available"), user("Absent")]);
        assert_eq!(a.teams, Some(TeamsPresence::AWAY));
        assert_eq!(shown(Client::ConnectedActive, None, a.teams), Shown::Available);
        // "When you log out from all the Teams clients, then your state will be displayed as Away
        // for other users in Teams because Away has higher precedence than Offline in Teams."
        assert_eq!(shown(Client::Offline, None, a.teams), Shown::Away);
    }

    #[test]
    fn faq16_user_configured_teams_state_overrides_the_phone() {
        // FAQ 16: "When you manually set the presence status in MS Teams to Away or Available and
        // then place a call ... the status in MS Teams does not synchronize with the state of the
        // phone." Answer: "The user-configured state in MS Teams overrides the app-configured
        // state." drbridge still publishes Busy; Teams shows the manual state.
        let a = agg(&[Signal::Line(LineState::InCall)]);
        assert_eq!(a.teams, Some(TeamsPresence::IN_A_CALL));
        assert_eq!(shown(Client::ConnectedActive, Some(TeamsAvailability::Away), a.teams), Shown::Away);
        assert_eq!(shown(Client::ConnectedActive, Some(TeamsAvailability::Available), a.teams), Shown::Available);
    }

    #[test]
    fn away_beats_busy_on_the_phone() {
        // "Users will appear as Busy in MS Teams when they are Busy on their phones unless they
        // have configured Away. When you initiate a call while you are in the Away state ...,
        // your status will not change to Busy; as Away has higher precedence than Busy".
        let a = agg(&[Signal::Line(LineState::Dialing), user("Absent")]);
        assert_eq!((a.level, a.teams), (PresenceLevel::Away, Some(TeamsPresence::AWAY)));
    }

    #[test]
    fn user_presence_mapping_table() {
        // "CloudLink Presence | MIVO400 User Presence State": Available | Available; Away |
        // Absent; Busy | Busy or Meeting; Not available | Not available.
        assert_eq!(agg(&[user("Available")]).level, PresenceLevel::Available);
        assert_eq!(agg(&[user("Absent")]).level, PresenceLevel::Away);
        assert_eq!(agg(&[user("Busy")]).teams, Some(TeamsPresence::IN_A_CALL));
        assert_eq!(agg(&[user("Meeting")]).teams, Some(TeamsPresence::IN_A_CONFERENCE_CALL));
        // A call while in a meeting is a call.
        assert_eq!(agg(&[user("Meeting"), Signal::Line(LineState::Held)]).teams, Some(TeamsPresence::IN_A_CALL));
        // Not available: Do not disturb by default, configurable.
        assert_eq!(agg(&[user("Not available")]).teams, Some(TeamsPresence::DO_NOT_DISTURB));
        let m = Mapping { not_available: PresenceLevel::Away, ..Mapping::default() };
        assert_eq!(aggregate([user("Not available")], &m).teams, Some(TeamsPresence::AWAY));
    }

    #[test]
    fn teams_to_pbx_direction() {
        use PbxUserPresence as U;
        assert_eq!(teams_to_pbx("Available", "Available", None), Some(U::Available));
        assert_eq!(teams_to_pbx("Busy", "InACall", None), Some(U::Busy));
        assert_eq!(teams_to_pbx("Busy", "InAMeeting", None), Some(U::Meeting));
        assert_eq!(teams_to_pbx("DoNotDisturb", "Presenting", None), Some(U::NotAvailable));
        assert_eq!(teams_to_pbx("BeRightBack", "BeRightBack", None), Some(U::Absent));
        assert_eq!(teams_to_pbx("Away", "Away", None), Some(U::Absent));
        assert_eq!(teams_to_pbx("Offline", "OutOfOffice", None), Some(U::Absent));
        assert_eq!(teams_to_pbx("Offline", "OffWork", None), None);
        assert_eq!(teams_to_pbx("PresenceUnknown", "PresenceUnknown", None), None);
        // The echo of drbridge's own Busy (a PBX call) is not sent back to the PBX.
        assert_eq!(teams_to_pbx("Busy", "InACall", Some(TeamsPresence::IN_A_CALL)), None);
        // But a Teams DND over drbridge's Busy is news.
        assert_eq!(teams_to_pbx("DoNotDisturb", "Presenting", Some(TeamsPresence::IN_A_CALL)), Some(U::NotAvailable));
    }

    #[test]
    fn line_states() {
        // "When you place a call or answer a call using your desk phone, your presence status will
        // be Busy, otherwise it will be Available."
        assert_eq!(agg(&[Signal::Line(LineState::Ringing)]).level, PresenceLevel::Available);
        assert_eq!(agg(&[Signal::Line(LineState::Ringing)]).teams, None);
        assert_eq!(agg(&[Signal::Line(LineState::Held)]).teams, Some(TeamsPresence::IN_A_CALL));
        // Two phones, one in a call: Busy.
        assert_eq!(agg(&[Signal::Line(LineState::Idle), Signal::Line(LineState::InCall)]).level, PresenceLevel::Busy);
        // Offline and Unknown say nothing.
        assert_eq!(agg(&[Signal::Line(LineState::Offline)]), Aggregate { level: PresenceLevel::Offline, teams: None });
        assert_eq!(agg(&[]), Aggregate { level: PresenceLevel::Unknown, teams: None });
        // An idle phone beats an offline one.
        assert_eq!(agg(&[Signal::Line(LineState::Offline), Signal::Line(LineState::Idle)]).level, PresenceLevel::Available);
    }
}
