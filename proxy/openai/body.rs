//! Finding `model`, `stream` and `stream_options` among the top-level keys of an
//! OpenAI request body without building a tree of it.
//!
//! serde_json walks the object key by key; every value but the ones wanted is skipped
//! with `IgnoredAny` (validated, never allocated), and the walk stops as soon as every
//! wanted key is known, so a body whose `model` comes first is read no further than it.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};

/// The top-level keys of interest, as found so far.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Fields<'a> {
    pub model: Option<Cow<'a, str>>,
    /// `stream`, when present and a boolean.
    pub stream: Option<bool>,
    /// `stream_options` is present (whatever its value).
    pub stream_options: bool,
}

/// Which keys the caller needs before it can decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Want {
    pub model: bool,
    /// `stream` and `stream_options`: only the whole body tells that they are absent.
    pub stream: bool,
    /// The whole body is needed (its prompt is the cache-affinity key).
    pub whole: bool,
}

/// The outcome of scanning a body prefix.
#[derive(Debug, PartialEq, Eq)]
pub enum Scan<'a> {
    /// Everything wanted is known (the rest of the body need not be read).
    Done(Fields<'a>),
    /// The prefix ends before that; read more.
    NeedMore,
    /// Not a JSON object, or malformed; the message says where.
    Invalid(String),
}

/// Scans `buf`, the body read so far; `complete` when it is the whole body.
pub fn scan(buf: &[u8], want: Want, complete: bool) -> Scan<'_> {
    let mut found = Found {
        fields: Fields::default(),
        want,
        done: false,
    };
    let mut de = serde_json::Deserializer::from_slice(buf);
    let result = (&mut de).deserialize_map(TopLevel(&mut found));
    if found.done {
        return Scan::Done(found.fields);
    }
    match result.and_then(|()| de.end()) {
        Ok(()) => Scan::Done(found.fields),
        Err(e) if e.is_eof() && !complete => Scan::NeedMore,
        Err(e) => Scan::Invalid(e.to_string()),
    }
}

struct Found<'a> {
    fields: Fields<'a>,
    want: Want,
    /// Every wanted key is known; the walk was cut short on purpose.
    done: bool,
}

impl Found<'_> {
    fn complete(&self) -> bool {
        // Without `stream` wanted, only the model matters; with it, absence of
        // `stream` or `stream_options` is only known at the end of the object.
        !self.want.whole
            && (!self.want.model || self.fields.model.is_some())
            && (!self.want.stream || (self.fields.stream.is_some() && self.fields.stream_options))
    }
}

struct TopLevel<'f, 'a>(&'f mut Found<'a>);

impl<'de, 'f> Visitor<'de> for TopLevel<'f, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let found = self.0;
        while let Some(key) = map.next_key::<Str<'de>>()? {
            match &*key.0 {
                "model" => match map.next_value::<Option<Str<'de>>>()? {
                    Some(s) => found.fields.model = Some(s.0),
                    None => found.fields.model = None,
                },
                "stream" => found.fields.stream = map.next_value::<Option<bool>>()?,
                "stream_options" => {
                    map.next_value::<IgnoredAny>()?;
                    found.fields.stream_options = true;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            if found.complete() {
                found.done = true;
                return Err(de::Error::custom("stopped: every wanted key found"));
            }
        }
        Ok(())
    }
}

/// A string borrowed from the body when it has no escapes, owned otherwise.
pub(crate) struct Str<'de>(pub(crate) Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Str<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(StrVisitor)
    }
}

struct StrVisitor;

impl<'de> Visitor<'de> for StrVisitor {
    type Value = Str<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Str<'de>, E> {
        Ok(Str(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Str<'de>, E> {
        Ok(Str(Cow::Owned(v.to_owned())))
    }
}

/// `"stream_options":{"include_usage":true},` inserted right after the body's opening
/// brace; `None` when the body does not start with `{` (after whitespace).
pub fn with_usage_requested(body: &[u8]) -> Option<Vec<u8>> {
    const INSERT: &[u8] = br#""stream_options":{"include_usage":true},"#;
    let brace = body.iter().position(|b| !b.is_ascii_whitespace())?;
    if body[brace] != b'{' {
        return None;
    }
    let rest = &body[brace + 1..];
    // An empty object takes the member without the trailing comma.
    let empty = rest.iter().all(|b| b.is_ascii_whitespace() || *b == b'}');
    let mut out = Vec::with_capacity(body.len() + INSERT.len());
    out.extend_from_slice(&body[..=brace]);
    if empty {
        out.extend_from_slice(&INSERT[..INSERT.len() - 1]);
    } else {
        out.extend_from_slice(INSERT);
    }
    out.extend_from_slice(rest);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODEL: Want = Want {
        model: true,
        stream: false,
        whole: false,
    };
    const ALL: Want = Want {
        model: true,
        stream: true,
        whole: false,
    };

    fn model(s: &str) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(s))
    }

    #[test]
    fn model_first_stops_before_the_rest() {
        let body = br#"{"model":"llama-3-8b","messages":[{"role":"user","content":"hi"#;
        match scan(body, MODEL, false) {
            Scan::Done(f) => assert_eq!(f.model, model("llama-3-8b")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn model_last_needs_the_whole_body() {
        let full = br#"{"messages":[{"role":"user","content":"a \"model\": x"}],"stream":true,"model":"m\u00e9"}"#;
        for cut in 1..full.len() - 1 {
            assert_eq!(
                scan(&full[..cut], MODEL, false),
                Scan::NeedMore,
                "cut {cut}"
            );
        }
        match scan(full, MODEL, true) {
            Scan::Done(f) => {
                assert_eq!(f.model.as_deref(), Some("mé"));
                assert!(matches!(f.model, Some(Cow::Owned(_))));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn stream_keys_need_the_end_unless_both_are_seen() {
        let body = br#"{"model":"m","stream":true,"messages":[]}"#;
        assert_eq!(scan(&body[..30], ALL, false), Scan::NeedMore);
        assert_eq!(
            scan(body, ALL, true),
            Scan::Done(Fields {
                model: model("m"),
                stream: Some(true),
                stream_options: false
            })
        );
        let body =
            br#"{"stream_options":{"include_usage":false},"stream":true,"model":"m","messages":["#;
        assert!(matches!(scan(body, ALL, false), Scan::Done(f) if f.stream_options));
    }

    #[test]
    fn bad_bodies_are_invalid_not_pending() {
        assert!(matches!(scan(b"[1,2]", MODEL, true), Scan::Invalid(_)));
        assert!(matches!(
            scan(b"{\"model\":", MODEL, true),
            Scan::Invalid(_)
        ));
        assert!(matches!(
            scan(b"{\"model\":1}", MODEL, true),
            Scan::Invalid(_)
        ));
        assert!(matches!(scan(b"not json", MODEL, false), Scan::Invalid(_)));
        assert_eq!(
            scan(b"{\"model\":null}", MODEL, true),
            Scan::Done(Fields::default())
        );
    }

    #[test]
    fn usage_request_is_inserted_first() {
        let out = with_usage_requested(br#" {"model":"m","stream":true}"#).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["model"], "m");
        let out = with_usage_requested(b"{ }").unwrap();
        assert!(serde_json::from_slice::<serde_json::Value>(&out).is_ok());
        assert_eq!(with_usage_requested(b"[]"), None);
    }
}
