//! The B2BUA: calls with two legs, dialogs, offer/answer relay, CANCEL, re-INVITE, REFER, session timers.
