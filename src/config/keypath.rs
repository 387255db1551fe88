//! Maps a byte span reported by the TOML parser or deserializer to the dotted key path of the
//! entry that holds it (`teams.proxies[1].port`), so that an error names the key, not an offset.

use toml::Spanned;
use std::ops::Range;
use toml::de::{DeTable, DeValue};

/// 1-based line and column of byte `offset` in `text`.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) + 1;
    (line, col)
}

/// Best effort for syntax errors (no tree to walk): when the span lies on a `key = ...` line,
/// the key prefixed with the path of the `[table]` / `[[array]]` header above it.
pub(crate) fn enclosing_key(text: &str, span: &Range<usize>) -> Option<String> {
    let start = span.start.min(text.len());
    let line_start = text.get(..start)?.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let line = text[line_start..].lines().next().unwrap_or("");
    let (key, _) = line.split_once('=')?;
    let key = key.trim();
    if key.is_empty() || key.starts_with('[') || key.starts_with('#') {
        return None;
    }
    let mut header = None;
    for l in text[..line_start].lines().rev() {
        let l = l.trim();
        if let Some(h) = l.strip_prefix("[[").and_then(|r| r.split_once("]]")).map(|(h, _)| h.trim()) {
            let count = text[..line_start].lines().filter(|x| x.trim().strip_prefix("[[").and_then(|r| r.split_once("]]")).is_some_and(|(n, _)| n.trim() == h)).count();
            header = Some(format!("{h}[{}]", count.saturating_sub(1)));
            break;
        }
        if let Some(h) = l.strip_prefix('[').and_then(|r| r.split_once(']')).map(|(h, _)| h.trim()) {
            header = Some(h.to_string());
            break;
        }
    }
    Some(match header {
        Some(h) => format!("{h}.{key}"),
        None => key.to_string(),
    })
}

/// Which part of an entry the span fell on.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Hit {
    /// The span is on the key itself (unknown or duplicate key).
    Key,
    /// The span is on (or inside) the value.
    Value,
}

/// The dotted path of the innermost entry whose key or value covers `span`.
/// Returns `None` when the span lies outside every entry (document level).
pub(crate) fn path_for_span(root: &Spanned<DeTable<'_>>, span: &Range<usize>) -> Option<(String, Hit)> {
    let mut path = String::new();
    let hit = walk_table(root.get_ref(), span, &mut path)?;
    Some((path, hit))
}

fn covers(outer: &Range<usize>, inner: &Range<usize>) -> bool {
    outer.start <= inner.start && inner.end <= outer.end
}

fn push_key(path: &mut String, key: &str) {
    if !path.is_empty() {
        path.push('.');
    }
    if !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
        path.push_str(key);
    } else {
        path.push('"');
        path.push_str(&key.replace('"', "\\\""));
        path.push('"');
    }
}

fn walk_table(table: &DeTable<'_>, span: &Range<usize>, path: &mut String) -> Option<Hit> {
    for (k, _) in table.iter() {
        if covers(&k.span(), span) {
            push_key(path, k.get_ref());
            return Some(Hit::Key);
        }
    }
    // Values: take the one that covers the span; recurse for a nested table or array.
    for (k, v) in table.iter() {
        if let Some(hit) = walk_entry(k, v, span, path) {
            return Some(hit);
        }
    }
    None
}

fn walk_entry(k: &Spanned<std::borrow::Cow<'_, str>>, v: &Spanned<DeValue<'_>>, span: &Range<usize>, path: &mut String) -> Option<Hit> {
    let saved = path.len();
    push_key(path, k.get_ref());
    if let Some(hit) = walk_value(v, span, path) {
        return Some(hit);
    }
    path.truncate(saved);
    None
}

fn walk_value(v: &Spanned<DeValue<'_>>, span: &Range<usize>, path: &mut String) -> Option<Hit> {
    match v.get_ref() {
        DeValue::Table(t) => {
            // Tables made of `[header]` sections may have a span that covers only the header,
            // so look inside even when the table's own span does not cover the error.
            if let Some(hit) = walk_table(t, span, path) {
                return Some(hit);
            }
            covers(&v.span(), span).then_some(Hit::Value)
        }
        DeValue::Array(a) => {
            for (i, item) in a.iter().enumerate() {
                let saved = path.len();
                path.push_str(&format!("[{i}]"));
                if let Some(hit) = walk_value(item, span, path) {
                    return Some(hit);
                }
                path.truncate(saved);
            }
            covers(&v.span(), span).then_some(Hit::Value)
        }
        _ => covers(&v.span(), span).then_some(Hit::Value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path_of(text: &str, needle: &str) -> Option<String> {
        let root = DeTable::parse(text).unwrap();
        let at = text.find(needle).unwrap();
        path_for_span(&root, &(at..at + needle.len())).map(|(p, _)| p)
    }

    #[test]
    fn finds_nested_paths() {
        let t = "[sbc]\nfqdn = \"a.b\"\n[[teams.proxies]]\nhost = \"x\"\n[[teams.proxies]]\nhost = \"y\"\nbogus = 1\n";
        assert_eq!(path_of(t, "\"a.b\"").as_deref(), Some("sbc.fqdn"));
        assert_eq!(path_of(t, "bogus").as_deref(), Some("teams.proxies[1].bogus"));
        assert_eq!(path_of(t, "\"y\"").as_deref(), Some("teams.proxies[1].host"));
        let inline = "[teams]\nfailover_codes = [408, 5030]\n";
        assert_eq!(path_of(inline, "5030").as_deref(), Some("teams.failover_codes[1]"));
    }

    #[test]
    fn enclosing_key_for_syntax_errors() {
        let t = "[sbc]\nfqdn = \"a\"\n[[teams.proxies]]\nhost = 1\n[[teams.proxies]]\nhost = x\n";
        let at = t.rfind('x').unwrap();
        assert_eq!(enclosing_key(t, &(at..at + 1)).as_deref(), Some("teams.proxies[1].host"));
        let at = t.find("\"a\"").unwrap();
        assert_eq!(enclosing_key(t, &(at..at + 1)).as_deref(), Some("sbc.fqdn"));
        assert_eq!(enclosing_key(t, &(1..2)), None);
    }

    #[test]
    fn line_and_column() {
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
        assert_eq!(line_col("ab", 0), (1, 1));
    }
}
