//! Finding `model`, `stream` and `stream_options` among the top-level keys of an
//! OpenAI request body without building a tree of it.
//!
//! serde_json walks the object key by key; every value but the ones wanted is skipped
//! with `IgnoredAny` (validated, never allocated). The whole object is walked.
//!
//! One rule for every top-level key the proxy reads ([`Key`]: the ones it routes and
//! streams by here, and the prompt that cache affinity reads in
//! [`super::prompt`]): a key that appears twice is refused ([`Seen`]), because model
//! servers disagree on which one counts (Python's `json`, used by vLLM and FastAPI,
//! keeps the last; a scanner that stops early the first), and the proxy must read the
//! body as the replica will.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};

/// The top-level keys of interest.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Fields<'a> {
    /// `model`, when present and not `null`.
    pub model: Option<Cow<'a, str>>,
    /// `stream`, when present and not `null`.
    pub stream: Option<bool>,
    /// `stream_options` is present (whatever its value).
    pub stream_options: bool,
}

/// A top-level body key the proxy reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Model,
    Stream,
    StreamOptions,
    /// Read by cache affinity (`affinity_key = "prompt"`), chat bodies.
    Messages,
    /// Read by cache affinity (`affinity_key = "prompt"`), completions bodies.
    Prompt,
}

impl Key {
    /// The key as it is written in the body.
    pub fn name(self) -> &'static str {
        match self {
            Key::Model => "model",
            Key::Stream => "stream",
            Key::StreamOptions => "stream_options",
            Key::Messages => "messages",
            Key::Prompt => "prompt",
        }
    }
}

/// The keys of one body's top level a parser has met, to refuse a second of any.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Seen(u8);

impl Seen {
    /// Notes `key`; [`Invalid::Duplicate`] when it was met before.
    #[inline]
    pub(crate) fn first(&mut self, key: Key) -> Result<(), Invalid> {
        let bit = 1u8 << key as u8;
        if self.0 & bit != 0 {
            return Err(Invalid::Duplicate(key));
        }
        self.0 |= bit;
        Ok(())
    }
}

/// Why a body is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalid {
    /// Not JSON, or not an object; the message says where.
    NotObject(String),
    /// `model` is not a string (nor `null`).
    ModelNotString,
    /// `stream` is not a boolean (nor `null`): `"true"` and `1` are refused, as OpenAI's
    /// API does, rather than guessed at.
    StreamNotBool,
    /// A top-level key the proxy reads appears more than once.
    Duplicate(Key),
}

/// Scans `body`, a whole request body, for the top-level keys of [`Fields`].
pub fn scan(body: &[u8]) -> Result<Fields<'_>, Invalid> {
    let mut fields = Fields::default();
    let mut refused = None;
    let mut de = serde_json::Deserializer::from_slice(body);
    let result = (&mut de).deserialize_map(TopLevel {
        fields: &mut fields,
        refused: &mut refused,
    });
    if let Some(r) = refused {
        return Err(r);
    }
    match result.and_then(|()| de.end()) {
        Ok(()) => Ok(fields),
        Err(e) => Err(Invalid::NotObject(e.to_string())),
    }
}

struct TopLevel<'f, 'a> {
    fields: &'f mut Fields<'a>,
    /// Set, with the walk cut short, when the body is well-formed so far but refused.
    refused: &'f mut Option<Invalid>,
}

impl TopLevel<'_, '_> {
    fn refuse<E: de::Error>(&mut self, why: Invalid) -> E {
        refuse(self.refused, why)
    }
}

/// The next top-level key of `map` that is one of `read`, skipping the values of the
/// others; a key met before (`seen`) is refused: kept in `refused`, and the walk cut
/// short. Keys compare unescaped: `"mod\u0065l"` is `model` to every JSON parser.
pub(crate) fn next_read_key<'de, A: MapAccess<'de>>(
    map: &mut A,
    read: &[Key],
    seen: &mut Seen,
    refused: &mut Option<Invalid>,
) -> Result<Option<Key>, A::Error> {
    while let Some(k) = map.next_key::<Str<'de>>()? {
        let Some(&key) = read.iter().find(|key| key.name() == k.0) else {
            map.next_value::<IgnoredAny>()?;
            continue;
        };
        if let Err(why) = seen.first(key) {
            return Err(refuse(refused, why));
        }
        return Ok(Some(key));
    }
    Ok(None)
}

/// Keeps `why` in `refused` and returns the error that cuts a serde walk short (the
/// caller answers `why`, not the error).
pub(crate) fn refuse<E: de::Error>(refused: &mut Option<Invalid>, why: Invalid) -> E {
    *refused = Some(why);
    E::custom("refused")
}

/// A JSON value that is a string, a boolean, `null`, or something else (skipped).
enum Scalar<'de> {
    Str(Str<'de>),
    Bool(bool),
    Null,
    Other,
}

impl<'de> de::Deserialize<'de> for Scalar<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Str(Str(Cow::Borrowed(v))))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Str(Str(Cow::Owned(v.to_owned()))))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Bool(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Null)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Other)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Other)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Other)
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Scalar<'de>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scalar<'de>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other)
    }
}

impl<'de> Visitor<'de> for TopLevel<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        const READ: &[Key] = &[Key::Model, Key::Stream, Key::StreamOptions];
        let mut seen = Seen::default();
        while let Some(key) = next_read_key(&mut map, READ, &mut seen, self.refused)? {
            match key {
                Key::Model => {
                    self.fields.model = match map.next_value::<Scalar<'de>>()? {
                        Scalar::Str(s) => Some(s.0),
                        Scalar::Null => None,
                        _ => return Err(self.refuse(Invalid::ModelNotString)),
                    };
                }
                Key::Stream => {
                    self.fields.stream = match map.next_value::<Scalar<'de>>()? {
                        Scalar::Bool(b) => Some(b),
                        Scalar::Null => None,
                        _ => return Err(self.refuse(Invalid::StreamNotBool)),
                    };
                }
                // `stream_options`, the one other key read: its presence only.
                _ => {
                    self.fields.stream_options = true;
                    map.next_value::<IgnoredAny>()?;
                }
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

    fn model(s: &str) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(s))
    }

    #[test]
    fn keys_anywhere_at_the_top_level_are_found() {
        let body = br#"{"messages":[{"role":"user","content":"a \"model\": x","model":"n"}],"stream":true,"model":"m\u00e9"}"#;
        let f = scan(body).unwrap();
        assert_eq!(f.model.as_deref(), Some("mé"));
        assert!(matches!(f.model, Some(Cow::Owned(_))));
        assert_eq!(f.stream, Some(true));
        assert!(!f.stream_options);
        let f = scan(br#"{"model":"m","stream_options":{"include_usage":false},"stream":false}"#)
            .unwrap();
        assert_eq!(
            f,
            Fields {
                model: model("m"),
                stream: Some(false),
                stream_options: true
            }
        );
    }

    #[test]
    fn a_decided_key_twice_is_refused_nested_ones_are_not() {
        for (body, key) in [
            (
                &br#"{"model":"a","model":"b"}"#[..],
                Invalid::Duplicate(Key::Model),
            ),
            (
                br#"{"model":"a","messages":[],"mod\u0065l":"b"}"#,
                Invalid::Duplicate(Key::Model),
            ),
            (
                br#"{"model":null,"model":"b"}"#,
                Invalid::Duplicate(Key::Model),
            ),
            (
                br#"{"model":"a","stream":false,"stream":true}"#,
                Invalid::Duplicate(Key::Stream),
            ),
            (
                br#"{"stream_options":{},"model":"a","stream_options":null}"#,
                Invalid::Duplicate(Key::StreamOptions),
            ),
        ] {
            assert_eq!(scan(body), Err(key), "{body:?}");
        }
        let nested =
            br#"{"model":"a","messages":[{"model":"b","stream":"x"}],"metadata":{"model":"c"}}"#;
        assert_eq!(scan(nested).unwrap().model, model("a"));
    }

    #[test]
    fn bad_bodies_are_refused_with_their_reason() {
        assert!(matches!(scan(b"[1,2]"), Err(Invalid::NotObject(_))));
        assert!(matches!(scan(b"{\"model\":"), Err(Invalid::NotObject(_))));
        assert!(matches!(scan(b"not json"), Err(Invalid::NotObject(_))));
        assert!(matches!(scan(b"{} {}"), Err(Invalid::NotObject(_))));
        assert_eq!(scan(b"{\"model\":1}"), Err(Invalid::ModelNotString));
        assert_eq!(scan(b"{\"model\":[\"m\"]}"), Err(Invalid::ModelNotString));
        for v in ["\"true\"", "1", "0", "{}"] {
            let body = format!(r#"{{"model":"m","stream":{v}}}"#);
            assert_eq!(scan(body.as_bytes()), Err(Invalid::StreamNotBool), "{v}");
        }
        assert_eq!(
            scan(b"{\"model\":null,\"stream\":null}"),
            Ok(Fields::default())
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
