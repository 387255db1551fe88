//! The user directory: who is who on both sides. Each user has a Teams identity (UPN or
//! e-mail, which must match Azure AD: seed, "the CloudLink email IDs of the users in the account
//! match their User Principal Name or Email ID in Azure AD"), PBX extension(s), E.164 number(s)
//! and optionally a cached Azure object id.
//!
//! File format (TOML, unknown keys refused):
//!
//! ```toml
//! [[user]]
//! upn = "anna.andersson@lab.drbridge.test"   # required, unique (case-insensitive)
//! name = "Anna Andersson"                     # optional, for logs and the admin page
//! extensions = ["4711"]                       # PBX extensions monitored for this user
//! numbers = ["+4681234711"]                   # E.164 numbers (calls through drbridge)
//! object_id = "0f1e..."                       # optional Azure AD object id (else looked up)
//! ```
//!
//! An extension or number belongs to at most one user.

use super::PresenceError;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

/// A user's key everywhere in `presence`: the UPN in lower case.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(Arc<str>);

impl Serialize for UserId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for UserId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<UserId, D::Error> {
        String::deserialize(d).map(|s| UserId::new(&s))
    }
}

impl UserId {
    pub fn new(upn: &str) -> UserId {
        UserId(Arc::from(upn.trim().to_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One user of the directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct User {
    pub id: UserId,
    /// The UPN as written in the file.
    pub upn: String,
    pub name: Option<String>,
    pub extensions: Vec<String>,
    pub numbers: Vec<String>,
    pub object_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserEntry {
    upn: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    extensions: Vec<String>,
    #[serde(default)]
    numbers: Vec<String>,
    #[serde(default)]
    object_id: Option<String>,
}

/// All users, with lookups by extension, number and UPN.
#[derive(Clone, Debug, Default)]
pub struct UserDirectory {
    users: Vec<User>,
    by_upn: HashMap<UserId, usize>,
    by_ext: HashMap<String, usize>,
    by_number: HashMap<String, usize>,
}

fn err(file: &str, key: impl Into<String>, reason: impl Into<String>) -> PresenceError {
    PresenceError::Directory { file: file.to_string(), key: key.into(), reason: reason.into() }
}

fn is_extension(s: &str) -> bool {
    !s.is_empty() && s.len() <= 32 && s.chars().all(|c| c.is_ascii_digit() || c == '*' || c == '#')
}

fn is_e164(s: &str) -> bool {
    s.strip_prefix('+').is_some_and(|d| (3..=15).contains(&d.len()) && d.chars().all(|c| c.is_ascii_digit()))
}

/// Strips a number to its dialable form for lookups: `tel:`/`sip:` prefix, visual separators.
fn canon_number(s: &str) -> String {
    let s = s.trim();
    let s = s.strip_prefix("tel:").unwrap_or(s);
    s.chars().filter(|c| c.is_ascii_digit() || matches!(c, '+' | '*' | '#')).collect()
}

impl UserDirectory {
    /// Reads and validates a directory file. Errors name the file, the key
    /// (`user[2].numbers[0]`) and the reason.
    pub fn load(path: &Path) -> Result<UserDirectory, PresenceError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| err(&file, "-", format!("cannot read: {e}")))?;
        Self::parse(&text, &file)
    }

    /// Parses directory text; `file` is used in error messages.
    pub fn parse(text: &str, file: &str) -> Result<UserDirectory, PresenceError> {
        let table: toml::Table = toml::from_str(text).map_err(|e| {
            let at = e.span().map(|s| format!("line {}", text[..s.start.min(text.len())].lines().count().max(1)));
            err(file, at.unwrap_or_else(|| "-".into()), e.message().to_string())
        })?;
        for k in table.keys() {
            if k != "user" {
                return Err(err(file, k.clone(), "unknown key (expected [[user]] tables)"));
            }
        }
        let list = match table.get("user") {
            None => Vec::new(),
            Some(toml::Value::Array(a)) => a.clone(),
            Some(_) => return Err(err(file, "user", "must be an array of tables ([[user]])")),
        };
        let mut users = Vec::with_capacity(list.len());
        for (i, v) in list.into_iter().enumerate() {
            let key = format!("user[{i}]");
            let e = UserEntry::deserialize(v).map_err(|e| err(file, &key, e.message().to_string()))?;
            users.push((key, e));
        }
        let mut dir = UserDirectory::default();
        for (key, e) in users {
            let upn = e.upn.trim().to_string();
            if upn.is_empty() || !upn.contains('@') || upn.chars().any(char::is_whitespace) {
                return Err(err(file, format!("{key}.upn"), format!("{upn:?} is not a UPN / e-mail address")));
            }
            let id = UserId::new(&upn);
            if dir.by_upn.contains_key(&id) {
                return Err(err(file, format!("{key}.upn"), format!("{upn:?} is listed twice")));
            }
            let idx = dir.users.len();
            for (j, x) in e.extensions.iter().enumerate() {
                let k = format!("{key}.extensions[{j}]");
                if !is_extension(x) {
                    return Err(err(file, k, format!("{x:?} is not an extension (digits, * and # only)")));
                }
                if dir.by_ext.insert(x.clone(), idx).is_some() {
                    return Err(err(file, k, format!("extension {x} belongs to another user")));
                }
            }
            for (j, n) in e.numbers.iter().enumerate() {
                let k = format!("{key}.numbers[{j}]");
                if !is_e164(n) {
                    return Err(err(file, k, format!("{n:?} is not an E.164 number (+ and 3..15 digits)")));
                }
                if dir.by_number.insert(n.clone(), idx).is_some() {
                    return Err(err(file, k, format!("number {n} belongs to another user")));
                }
            }
            if let Some(o) = &e.object_id {
                if o.is_empty() || o.len() > 64 || !o.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
                    return Err(err(file, format!("{key}.object_id"), format!("{o:?} is not an object id (GUID)")));
                }
            }
            dir.by_upn.insert(id.clone(), idx);
            dir.users.push(User { id, upn, name: e.name, extensions: e.extensions, numbers: e.numbers, object_id: e.object_id });
        }
        Ok(dir)
    }

    pub fn users(&self) -> &[User] {
        &self.users
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    pub fn by_upn(&self, upn: &str) -> Option<&User> {
        self.by_upn.get(&UserId::new(upn)).map(|&i| &self.users[i])
    }

    pub fn get(&self, id: &UserId) -> Option<&User> {
        self.by_upn.get(id).map(|&i| &self.users[i])
    }

    pub fn by_extension(&self, ext: &str) -> Option<&User> {
        self.by_ext.get(ext.trim()).map(|&i| &self.users[i])
    }

    /// By E.164 number (`tel:` prefixes and separators such as spaces or dashes ignored).
    pub fn by_number(&self, number: &str) -> Option<&User> {
        self.by_number.get(&canon_number(number)).map(|&i| &self.users[i])
    }

    /// A call party as `b2bua` reports it: an E.164 number where the dial plan gives one, else
    /// the PBX's own form (an extension).
    pub fn by_party(&self, party: &str) -> Option<&User> {
        let n = canon_number(party);
        self.by_number.get(&n).or_else(|| self.by_ext.get(&n)).map(|&i| &self.users[i])
    }

    /// Any identity an adapter may send: UPN, extension or number.
    pub fn resolve(&self, who: &str) -> Option<&User> {
        if who.contains('@') {
            self.by_upn(who)
        } else {
            self.by_party(who)
        }
    }

    /// Every monitored extension, in file order (for the PBX SUBSCRIBEs).
    pub fn extensions(&self) -> impl Iterator<Item = (&str, &UserId)> {
        self.users.iter().flat_map(|u| u.extensions.iter().map(move |e| (e.as_str(), &u.id)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
[[user]]
upn = "Anna.Andersson@lab.drbridge.test"
name = "Anna"
extensions = ["4711"]
numbers = ["+4681234711"]

[[user]]
upn = "bo@lab.drbridge.test"
extensions = ["4712", "4799"]
numbers = ["+4681234712"]
object_id = "6e7b768e-07e2-4810-8459-485f84f8f204"
"#;

    fn msg(e: PresenceError) -> String {
        e.to_string()
    }

    #[test]
    fn lookups() {
        let d = UserDirectory::parse(SAMPLE, "users.toml").unwrap();
        assert_eq!(d.len(), 2);
        let a = d.by_extension("4711").unwrap();
        assert_eq!(a.id.as_str(), "anna.andersson@lab.drbridge.test");
        assert_eq!(a.upn, "Anna.Andersson@lab.drbridge.test");
        assert_eq!(d.by_upn("ANNA.andersson@lab.drbridge.test").unwrap().id, a.id);
        assert_eq!(d.by_number("+46 8 123 47 11").unwrap().id, a.id);
        assert_eq!(d.by_number("tel:+4681234712").unwrap().upn, "bo@lab.drbridge.test");
        assert_eq!(d.by_party("4799").unwrap().upn, "bo@lab.drbridge.test");
        assert_eq!(d.by_party("+4681234712").unwrap().upn, "bo@lab.drbridge.test");
        assert!(d.by_party("+4681234999").is_none());
        assert_eq!(d.resolve("bo@LAB.drbridge.test").unwrap().object_id.as_deref(), Some("6e7b768e-07e2-4810-8459-485f84f8f204"));
        assert_eq!(d.extensions().map(|(e, _)| e).collect::<Vec<_>>(), ["4711", "4712", "4799"]);
    }

    #[test]
    fn errors_name_file_key_reason() {
        let e = msg(UserDirectory::parse("[[user]]\nupn = \"a@b\"\nextensions = [\"47x1\"]\n", "u.toml").unwrap_err());
        assert_eq!(e, "u.toml: user[0].extensions[0]: \"47x1\" is not an extension (digits, * and # only)");
        let e = msg(UserDirectory::parse("[[user]]\nupn = \"a@b\"\nnumbers = [\"4681234711\"]\n", "u.toml").unwrap_err());
        assert!(e.starts_with("u.toml: user[0].numbers[0]: "), "{e}");
        let e = msg(UserDirectory::parse("[[user]]\nupn = \"a@b\"\n[[user]]\nupn = \"c@d\"\ncolour = 1\n", "u.toml").unwrap_err());
        assert!(e.starts_with("u.toml: user[1]: unknown field `colour`"), "{e}");
        let e = msg(UserDirectory::parse("[[user]]\nupn = \"anna\"\n", "u.toml").unwrap_err());
        assert!(e.starts_with("u.toml: user[0].upn: "), "{e}");
        let e = msg(UserDirectory::parse("[[user]]\nupn = \"a@b\"\nextensions=[\"1\"]\n[[user]]\nupn = \"c@d\"\nextensions=[\"1\"]\n", "u.toml").unwrap_err());
        assert_eq!(e, "u.toml: user[1].extensions[0]: extension 1 belongs to another user");
        let e = msg(UserDirectory::parse("[[user]]\nupn = \"a@b\"\n[[user]]\nupn = \"A@B\"\n", "u.toml").unwrap_err());
        assert!(e.contains("listed twice"), "{e}");
        let e = msg(UserDirectory::parse("[users]\n", "u.toml").unwrap_err());
        assert!(e.starts_with("u.toml: users: unknown key"), "{e}");
        let e = msg(UserDirectory::parse("[[user]\n", "u.toml").unwrap_err());
        assert!(e.starts_with("u.toml: line 1: "), "{e}");
        let e = msg(UserDirectory::load(Path::new("/nonexistent/users.toml")).unwrap_err());
        assert!(e.starts_with("/nonexistent/users.toml: -: cannot read"), "{e}");
    }

    #[test]
    fn example_file_loads() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/users.toml");
        let d = UserDirectory::load(&p).unwrap();
        assert!(d.by_extension("4711").is_some());
        assert!(d.by_number("+4681234712").is_some());
        assert!(d.by_number("+4681234801").is_some());
        assert!(d.by_number("+4681234802").is_some());
    }
}
