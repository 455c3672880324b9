//! Walking the parsed TOML tree: typed field readers that report every problem with its position,
//! and table readers that flag keys nobody asked for ("did you mean ...?").

use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::error::ConfigError;
use super::types::RequestKey;
use super::units::{parse_duration, parse_size};

/// Everything found so far while reading one file: the source (for positions), where relative
/// paths are anchored, and the collected errors and warnings.
pub(crate) struct Ctx<'s> {
    src: &'s str,
    file: PathBuf,
    base_dir: PathBuf,
    line_starts: Vec<usize>,
    pub errors: Vec<ConfigError>,
    pub warnings: Vec<ConfigError>,
}

impl<'s> Ctx<'s> {
    pub(super) fn new(src: &'s str, file: &Path) -> Self {
        let line_starts = std::iter::once(0)
            .chain(src.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Ctx {
            src,
            file: file.to_path_buf(),
            base_dir: file.parent().map(Path::to_path_buf).unwrap_or_default(),
            line_starts,
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub(super) fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.src.len());
        let line = self.line_starts.partition_point(|&start| start <= offset);
        let start = self
            .line_starts
            .get(line.saturating_sub(1))
            .copied()
            .unwrap_or(0);
        let col = self
            .src
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count());
        (line.max(1), col + 1)
    }

    /// 1-based line of the start of a span.
    pub(super) fn line(&self, span: &Range<usize>) -> usize {
        self.position(span.start).0
    }

    fn make(&self, span: &Range<usize>, key: &str, message: String) -> ConfigError {
        let (line, col) = self.position(span.start);
        ConfigError {
            file: self.file.clone(),
            line,
            col,
            key: key.to_string(),
            message,
        }
    }

    pub(super) fn error(&mut self, span: &Range<usize>, key: &str, message: impl Into<String>) {
        let e = self.make(span, key, message.into());
        self.errors.push(e);
    }

    pub(super) fn warn(&mut self, span: &Range<usize>, key: &str, message: impl Into<String>) {
        let w = self.make(span, key, message.into());
        self.warnings.push(w);
    }

    /// A path from the config, relative ones anchored at the config file's directory.
    pub(super) fn resolve(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    /// How a value looks in messages: strings quoted, other scalars as written.
    fn found(&self, v: &Spanned<DeValue<'_>>) -> String {
        let text = match v.get_ref() {
            DeValue::String(s) => format!("{:?}", s.as_ref()),
            DeValue::Array(_) => return "an array".into(),
            DeValue::Table(_) => return "a table".into(),
            _ => self.src.get(v.span()).unwrap_or("?").to_string(),
        };
        if text.chars().count() > 60 {
            format!("{}...", text.chars().take(57).collect::<String>())
        } else {
            text
        }
    }

    /// Reports "expected {expected}, found {value}" (plus "; {hint}" when the hint is not empty).
    pub(super) fn expected(&mut self, f: &Field<'_, '_>, expected: &str, hint: &str) {
        let mut msg = format!("expected {expected}, found {}", self.found(f.value));
        if !hint.is_empty() {
            msg.push_str("; ");
            msg.push_str(hint);
        }
        self.error(&f.span(), &f.path, msg);
    }

    /// A string value.
    pub(super) fn string<'a>(&mut self, f: &Field<'a, '_>, expected: &str) -> Option<&'a str> {
        match f.value.get_ref() {
            DeValue::String(s) => Some(s.as_ref()),
            _ => {
                self.expected(f, expected, "");
                None
            }
        }
    }

    /// A string value that is not blank.
    pub(super) fn nonempty<'a>(&mut self, f: &Field<'a, '_>, expected: &str) -> Option<&'a str> {
        let s = self.string(f, expected)?;
        if s.trim().is_empty() {
            self.expected(f, expected, "");
            return None;
        }
        Some(s)
    }

    pub(super) fn bool(&mut self, f: &Field<'_, '_>) -> Option<bool> {
        match f.value.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            _ => {
                self.expected(f, "true or false", "");
                None
            }
        }
    }

    /// A whole number in `lo..=hi`, converted to `T`.
    pub(super) fn uint<T: TryFrom<i128>>(
        &mut self,
        f: &Field<'_, '_>,
        lo: i128,
        hi: i128,
        hint: &str,
    ) -> Option<T> {
        let value = match f.value.get_ref() {
            DeValue::Integer(i) => i128::from_str_radix(i.as_str(), i.radix()).ok(),
            _ => None,
        };
        match value.filter(|v| (lo..=hi).contains(v)) {
            Some(v) => T::try_from(v).ok(),
            None => {
                let expected = if hi >= i128::from(u32::MAX) {
                    format!("a whole number >= {lo}")
                } else {
                    format!("a whole number from {lo} to {hi}")
                };
                self.expected(f, &expected, hint);
                None
            }
        }
    }

    /// A number (integer or float) greater than zero.
    pub(super) fn positive_number(&mut self, f: &Field<'_, '_>, hint: &str) -> Option<f64> {
        let value = match f.value.get_ref() {
            DeValue::Integer(i) => i128::from_str_radix(i.as_str(), i.radix())
                .ok()
                .map(|v| v as f64),
            DeValue::Float(x) => x.as_str().parse::<f64>().ok(),
            _ => None,
        };
        match value.filter(|v| v.is_finite() && *v > 0.0) {
            Some(v) => Some(v),
            None => {
                self.expected(f, "a number greater than 0", hint);
                None
            }
        }
    }

    /// A duration string; zero only when `allow_zero`.
    pub(super) fn duration(&mut self, f: &Field<'_, '_>, allow_zero: bool) -> Option<Duration> {
        let expected = if allow_zero {
            r#"a duration such as "0s", "500ms" or "2s""#
        } else {
            r#"a duration greater than 0 such as "500ms", "2s" or "5m""#
        };
        let hint = match f.value.get_ref() {
            DeValue::Integer(_) | DeValue::Float(_) => {
                "durations are strings with a unit, e.g. \"30s\""
            }
            _ => "",
        };
        let s = match f.value.get_ref() {
            DeValue::String(s) => s.as_ref(),
            _ => {
                self.expected(f, expected, hint);
                return None;
            }
        };
        match parse_duration(s) {
            Ok(d) if d.is_zero() && !allow_zero => {
                self.expected(f, expected, "");
                None
            }
            Ok(d) => Some(d),
            Err(msg) => {
                self.error(&f.span(), &f.path, msg);
                None
            }
        }
    }

    /// A byte size: a whole number of bytes or a string such as `"20MiB"`.
    pub(super) fn size(&mut self, f: &Field<'_, '_>) -> Option<u64> {
        match f.value.get_ref() {
            DeValue::Integer(_) => self.uint(f, 0, i128::from(u64::MAX), ""),
            DeValue::String(s) => match parse_size(s) {
                Ok(n) => Some(n),
                Err(msg) => {
                    self.error(&f.span(), &f.path, msg);
                    None
                }
            },
            _ => {
                self.expected(
                    f,
                    r#"a size such as "20MiB", "512KiB" or a number of bytes"#,
                    "",
                );
                None
            }
        }
    }

    /// An `ip:port` socket address with a non-zero port. `name_hint` says what to do with a
    /// host name (names are never resolved here).
    pub(super) fn addr(
        &mut self,
        f: &Field<'_, '_>,
        example: &str,
        name_hint: &str,
    ) -> Option<SocketAddr> {
        let expected = format!("an \"ip:port\" address such as {example:?}");
        let s = self.string(f, &expected)?;
        if let Ok(addr) = s.parse::<SocketAddr>() {
            if addr.port() == 0 {
                let msg =
                    format!("port 0 is not allowed in {s:?}; use a fixed port, e.g. {example:?}");
                self.error(&f.span(), &f.path, msg);
                return None;
            }
            return Some(addr);
        }
        let msg = match s.rsplit_once(':') {
            _ if s.parse::<std::net::IpAddr>().is_ok() => {
                format!("{s:?} has no port; write it as \"ip:port\", e.g. {example:?}")
            }
            Some((host, port))
                if port.parse::<u16>().is_ok() && !host.is_empty() && !host.contains(':') =>
            {
                format!("{s:?} uses a host name; {name_hint}")
            }
            _ => format!("expected {expected}, found {s:?}"),
        };
        self.error(&f.span(), &f.path, msg);
        None
    }

    /// A file or directory path, resolved against the config file's directory.
    pub(super) fn path(&mut self, f: &Field<'_, '_>, example: &str) -> Option<PathBuf> {
        let s = self.nonempty(f, &format!("a file path such as {example:?}"))?;
        Some(self.resolve(s))
    }

    /// A URL path (or path prefix): starts with `/`, no spaces, no query or fragment.
    pub(super) fn http_path(&mut self, f: &Field<'_, '_>, example: &str) -> Option<String> {
        let expected = format!("a path starting with \"/\" such as {example:?}");
        let s = self.string(f, &expected)?;
        let valid = s.starts_with('/')
            && !s
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '?' || c == '#');
        if !valid {
            let hint = if s.contains(['?', '#']) {
                "query strings and fragments cannot be matched; remove them"
            } else {
                ""
            };
            self.expected(f, &expected, hint);
            return None;
        }
        Some(s.to_string())
    }

    /// One of a fixed set of words.
    pub(super) fn choice<T: Copy>(
        &mut self,
        f: &Field<'_, '_>,
        all: &[T],
        name: fn(T) -> &'static str,
    ) -> Option<T> {
        let found = match f.value.get_ref() {
            DeValue::String(s) => all.iter().copied().find(|&v| name(v) == s.as_ref()),
            _ => None,
        };
        if found.is_none() {
            let names: Vec<String> = all.iter().map(|&v| format!("{:?}", name(v))).collect();
            let expected = format!("one of {}", names.join(", "));
            let hint = match f.value.get_ref() {
                DeValue::String(s) => {
                    suggest(s, all.iter().map(|&v| name(v))).map(|n| format!("did you mean {n:?}?"))
                }
                _ => None,
            };
            self.expected(f, &expected, hint.as_deref().unwrap_or(""));
        }
        found
    }

    /// `"ip"` (the client address) or `"header:NAME"` (stored lower-case).
    pub(super) fn request_key(&mut self, f: &Field<'_, '_>) -> Option<RequestKey> {
        self.word_or_header(
            f,
            ("ip", RequestKey::ClientAddr),
            RequestKey::Header,
            r#"e.g. "header:x-api-key"; NAME must be a valid HTTP header name"#,
        )
    }

    /// The string `word.0` (giving `word.1`) or `"header:NAME"` (giving `header` of the
    /// lower-case NAME); anything else is an error showing both forms and `hint`.
    pub(super) fn word_or_header<T>(
        &mut self,
        f: &Field<'_, '_>,
        word: (&str, T),
        header: impl FnOnce(String) -> T,
        hint: &str,
    ) -> Option<T> {
        let valid = match f.value.get_ref() {
            DeValue::String(s) if s.as_ref() == word.0 => Some(word.1),
            DeValue::String(s) => header_key(s).map(header),
            _ => None,
        };
        if valid.is_none() {
            self.expected(f, &format!(r#""{}" or "header:NAME""#, word.0), hint);
        }
        valid
    }

    /// A table (inline or not), ready to read its keys.
    pub(super) fn table<'a, 'i>(
        &mut self,
        f: &Field<'a, 'i>,
        example: &str,
    ) -> Option<TableReader<'a, 'i>> {
        match f.value.get_ref() {
            DeValue::Table(t) => Some(TableReader::new(t, f.span(), f.path.clone())),
            _ => {
                self.expected(f, &format!("a table such as {example}"), "");
                None
            }
        }
    }

    /// An array; items come with their own key paths (`key[0]`, `key[1]`, ...).
    pub(super) fn array<'a, 'i>(
        &mut self,
        f: &Field<'a, 'i>,
        example: &str,
    ) -> Option<Vec<Field<'a, 'i>>> {
        match f.value.get_ref() {
            DeValue::Array(a) => Some(
                a.iter()
                    .enumerate()
                    .map(|(i, value)| Field {
                        path: format!("{}[{i}]", f.path),
                        value,
                    })
                    .collect(),
            ),
            _ => {
                self.expected(f, &format!("an array such as {example}"), "");
                None
            }
        }
    }
}

/// HTTP header name characters (RFC 9110 `tchar`).
/// The lower-case header name of a `"header:NAME"` key, if NAME is a valid header name.
pub(crate) fn header_key(s: &str) -> Option<String> {
    s.strip_prefix("header:")
        .map(str::trim)
        .filter(|n| !n.is_empty() && n.bytes().all(is_header_char))
        .map(str::to_ascii_lowercase)
}

fn is_header_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// One value in the tree together with its key path, e.g. `upstream.vision.retries`.
pub(crate) struct Field<'a, 'i> {
    pub path: String,
    pub value: &'a Spanned<DeValue<'i>>,
}

impl Field<'_, '_> {
    pub(super) fn span(&self) -> Range<usize> {
        self.value.span()
    }
}

/// Appends a key to a key path, quoting it when it is not a bare TOML key.
pub(crate) fn join(path: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    let key = if bare {
        key.to_string()
    } else {
        format!("{key:?}")
    };
    if path.is_empty() {
        key
    } else {
        format!("{path}.{key}")
    }
}

/// Reads the keys of one table. Every key asked for is remembered; [`TableReader::finish`]
/// reports the others as unknown.
pub(crate) struct TableReader<'a, 'i> {
    table: &'a DeTable<'i>,
    span: Range<usize>,
    path: String,
    asked: Vec<&'static str>,
}

impl<'a, 'i> TableReader<'a, 'i> {
    pub(super) fn new(table: &'a DeTable<'i>, span: Range<usize>, path: String) -> Self {
        TableReader {
            table,
            span,
            path,
            asked: Vec::new(),
        }
    }

    pub(super) fn path(&self) -> &str {
        &self.path
    }

    /// Where the table starts (its header, or its opening brace); used for missing keys.
    pub(super) fn span(&self) -> Range<usize> {
        self.span.clone()
    }

    /// The value of `key`, if present; either way the key counts as known.
    pub(super) fn take(&mut self, key: &'static str) -> Option<Field<'a, 'i>> {
        self.asked.push(key);
        self.table.get(key).map(|value| Field {
            path: join(&self.path, key),
            value,
        })
    }

    /// Like [`take`](Self::take), but a missing key is an error: "missing; add {example}".
    pub(super) fn require(
        &mut self,
        cx: &mut Ctx<'_>,
        key: &'static str,
        example: &str,
    ) -> Option<Field<'a, 'i>> {
        let f = self.take(key);
        if f.is_none() {
            // Array items (`route[0]`) have no header of their own to name.
            let table = if self.path.is_empty() || self.path.ends_with(']') {
                String::new()
            } else {
                format!(" to [{}]", self.path)
            };
            cx.error(
                &self.span,
                &join(&self.path, key),
                format!("missing; add {example}{table}"),
            );
        }
        f
    }

    /// All entries, for tables whose keys are names (e.g. `[upstream.NAME]`): `(name, name span, field)`.
    pub(super) fn entries(&self) -> Vec<(&'a str, Range<usize>, Field<'a, 'i>)> {
        self.table
            .iter()
            .map(|(k, value)| {
                let name: &'a str = k.get_ref().as_ref();
                (
                    name,
                    k.span(),
                    Field {
                        path: join(&self.path, name),
                        value,
                    },
                )
            })
            .collect()
    }

    /// Reports every key that was never asked for, suggesting the closest known key.
    pub(super) fn finish(self, cx: &mut Ctx<'_>) {
        for (k, _) in self.table.iter() {
            let key = k.get_ref().as_ref();
            if self.asked.contains(&key) {
                continue;
            }
            let hint = match suggest(key, self.asked.iter().copied()) {
                Some(s) => format!("did you mean `{s}`?"),
                None if self.asked.is_empty() => "remove it".to_string(),
                None => {
                    let mut known = self.asked.clone();
                    known.sort_unstable();
                    known.dedup();
                    format!("allowed keys here: {}", known.join(", "))
                }
            };
            cx.error(
                &k.span(),
                &join(&self.path, key),
                format!("unknown key `{key}`; {hint}"),
            );
        }
    }
}

/// The candidate closest to `word` (case-insensitive optimal-string-alignment distance:
/// insertions, deletions, substitutions and adjacent swaps), if it is close enough to be
/// a likely typo.
pub(crate) fn suggest<'c>(
    word: &str,
    candidates: impl Iterator<Item = &'c str>,
) -> Option<&'c str> {
    let word = word.to_ascii_lowercase();
    let limit = match word.chars().count() {
        0..=2 => 0,
        3..=5 => 1,
        6..=9 => 2,
        _ => 3,
    };
    candidates
        .map(|c| (strsim::osa_distance(&word, &c.to_ascii_lowercase()), c))
        .filter(|&(d, _)| d <= limit)
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distance_and_suggestions() {
        assert_eq!(
            suggest("max_inflite", ["max_inflight"].into_iter()),
            Some("max_inflight")
        );
        assert_eq!(suggest("rteries", ["retries"].into_iter()), Some("retries"));
        assert_eq!(
            suggest("upstreams", ["upstream", "route"].into_iter()),
            Some("upstream")
        );
        assert_eq!(suggest("zzz", ["upstream", "route"].into_iter()), None);
        assert_eq!(suggest("HTTP", ["http", "https"].into_iter()), Some("http"));
    }

    #[test]
    fn positions() {
        let cx = Ctx::new("ab\né\nxyz", Path::new("f.toml"));
        assert_eq!(cx.position(0), (1, 1));
        assert_eq!(cx.position(3), (2, 1));
        assert_eq!(cx.position(5), (2, 2));
        assert_eq!(cx.position(7), (3, 2));
        assert_eq!(cx.position(100), (3, 4));
    }

    #[test]
    fn joins() {
        assert_eq!(join("", "listen"), "listen");
        assert_eq!(join("upstream", "a.b"), "upstream.\"a.b\"");
    }
}
