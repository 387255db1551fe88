//! drbridge: a session border controller between Microsoft Teams Direct Routing and Mitel PBXs.
//! See ../shared/DESIGN.md for the module layout; lower layers never import higher ones.
/// `format!` into a 64-byte buffer: the short values the call path writes (header values,
/// tags, URIs) fit without the reallocations that `format!`'s size estimate leads to
/// (bench/PROFILE.md, fifth pass). Longer strings grow as with `format!`.
#[macro_export]
macro_rules! fmt64 {
    ($($arg:tt)*) => {{
        use ::std::fmt::Write as _;
        let mut s = ::std::string::String::with_capacity(64);
        let _ = ::std::write!(s, $($arg)*);
        s
    }};
}

pub mod b2bua;
pub mod config;
pub mod fnv;
pub mod hashindex;
pub mod media;
pub mod presence;
pub mod routing;
pub mod sip;
pub mod timerq;
pub mod admin;
