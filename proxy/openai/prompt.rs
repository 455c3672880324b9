//! The cache-affinity key of an OpenAI request (`affinity_key = "prompt"`): the role and
//! text of each of its `messages` (chat) or its `prompt` (completions), in body order,
//! cut into chained prefix blocks (see [`crate::upstream::PrefixKey`]).
//!
//! The body is walked once with serde_json; text is fed to the key where it lies
//! (unescaped in serde_json's scratch buffer when it has escapes), never collected.
//! A body with `messages` or `prompt` twice is refused, as every key the proxy reads
//! is (see [`super::body`]): a replica reads the last, and the key must be of the text
//! the replica caches.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::body::{next_read_key, Invalid, Key, Seen, Str};
use crate::upstream::PrefixKey;

/// The prefix blocks of `body`'s messages or prompt; empty when the body is not a JSON
/// object or carries neither (the request then has no affinity and is balanced by load).
/// A body with `messages` or `prompt` more than once is [`Invalid::Duplicate`].
pub fn prompt_blocks(body: &[u8]) -> Result<Vec<u64>, Invalid> {
    let mut key = PrefixKey::with_capacity(body.len());
    let mut refused = None;
    let mut de = serde_json::Deserializer::from_slice(body);
    let walked = de.deserialize_map(TopLevel {
        key: &mut key,
        refused: &mut refused,
    });
    match (refused, walked) {
        (Some(why), _) => Err(why),
        (None, Ok(())) => Ok(key.finish()),
        (None, Err(_)) => Ok(Vec::new()),
    }
}

struct TopLevel<'k> {
    key: &'k mut PrefixKey,
    /// Set, with the walk cut short, when a key it reads comes twice.
    refused: &'k mut Option<Invalid>,
}

impl<'de> Visitor<'de> for TopLevel<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = Seen::default();
        let read = &[Key::Messages, Key::Prompt];
        while next_read_key(&mut map, read, &mut seen, self.refused)?.is_some() {
            map.next_value_seed(Text(&mut *self.key))?;
        }
        Ok(())
    }
}

/// Feeds the text of a value: strings as they are, arrays element by element, and of
/// objects (a message, a content part) only `role`, `content` (each followed by a
/// newline) and `text`, so text parts key as the same text in one string would.
/// Token ids (`"prompt": [1, 2, ...]` or a batch of such lists, as vLLM and OpenAI take
/// them) are the prompt's text too: each non-negative integer is fed as its 4 bytes
/// (little-endian; 8 above `u32::MAX`), so a 64-byte block is 16 tokens. Other
/// numbers, booleans and other keys (images, tool calls) add nothing.
struct Text<'k>(&'k mut PrefixKey);

impl<'de> DeserializeSeed<'de> for Text<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Text<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("message text")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.0.feed(v.as_bytes());
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Text(&mut *self.0))?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(k) = map.next_key::<Str<'de>>()? {
            match &*k.0 {
                "role" | "content" => {
                    map.next_value_seed(Text(&mut *self.0))?;
                    self.0.feed(b"\n");
                }
                "text" => map.next_value_seed(Text(&mut *self.0))?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        match u32::try_from(v) {
            Ok(id) => self.0.feed(&id.to_le_bytes()),
            Err(_) => self.0.feed(&v.to_le_bytes()),
        }
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocks(body: &[u8]) -> Vec<u64> {
        prompt_blocks(body).unwrap_or_else(|why| panic!("refused: {why:?}"))
    }

    fn chat(msgs: &[(&str, &str)]) -> Vec<u8> {
        let messages: Vec<_> = msgs
            .iter()
            .map(|(r, c)| serde_json::json!({"role": r, "content": c}))
            .collect();
        serde_json::json!({"model": "m", "temperature": 0.2, "messages": messages})
            .to_string()
            .into_bytes()
    }

    #[test]
    fn a_later_turn_extends_the_earlier_turns_blocks() {
        let sys = "You are a careful assistant. ".repeat(20);
        let one = blocks(&chat(&[("system", &sys), ("user", "hello")]));
        let two = blocks(&chat(&[
            ("system", &sys),
            ("user", "hello"),
            ("assistant", "hi there"),
            ("user", "tell me more"),
        ]));
        assert!(one.len() >= 9);
        // Every full block of the first turn is a prefix block of the second.
        assert_eq!(one[..one.len() - 1], two[..one.len() - 1]);
        let other = blocks(&chat(&[("system", "Another prompt."), ("user", "hello")]));
        assert_ne!(one[0], other[0]);
    }

    #[test]
    fn content_parts_escapes_and_completions_prompts_count_as_text() {
        let parts = br#"{"messages":[{"role":"user","content":[{"type":"text","text":"a\nb"},{"type":"image_url","image_url":{"url":"x"}}]}]}"#;
        let plain = br#"{"messages":[{"role":"user","content":"a\nb"}]}"#;
        assert_eq!(blocks(parts), blocks(plain));
        let completion = br#"{"model":"m","prompt":"Once upon a time"}"#;
        assert_eq!(blocks(completion).len(), 1);
    }

    #[test]
    fn token_id_prompts_are_keyed_like_text() {
        let ids = |n: u64, tail: &[u64]| {
            let mut p: Vec<u64> = (0..n).map(|i| 1000 + i * 7).collect();
            p.extend_from_slice(tail);
            serde_json::json!({"model": "m", "prompt": p})
                .to_string()
                .into_bytes()
        };
        // 600 tokens of 4 bytes: 37.5 blocks of 16 tokens.
        let long = blocks(&ids(600, &[]));
        assert_eq!(long.len(), 38);
        // A longer prompt with the same first tokens shares their blocks; other ids do not.
        let longer = blocks(&ids(
            600,
            &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16],
        ));
        assert_eq!(long[..37], longer[..37]);
        let other = blocks(
            &serde_json::to_vec(&serde_json::json!({"prompt": [5, 6, 7]})).unwrap_or_default(),
        );
        assert_eq!(other.len(), 1);
        assert_ne!(other[0], long[0]);
        // A batch of token lists, and the duplicate-key rule, as for text.
        let batch = br#"{"prompt":[[1,2,3],[4,5]]}"#;
        assert_eq!(blocks(batch), blocks(br#"{"prompt":[1,2,3,4,5]}"#));
        assert_eq!(
            prompt_blocks(br#"{"prompt":[1,2],"prompt":[3]}"#),
            Err(Invalid::Duplicate(Key::Prompt))
        );
    }

    #[test]
    fn bodies_without_text_or_not_json_have_no_key() {
        assert!(blocks(br#"{"model":"m"}"#).is_empty());
        assert!(blocks(b"not json").is_empty());
        assert!(blocks(br#"{"messages":[1,2"#).is_empty());
    }

    #[test]
    fn messages_or_prompt_twice_is_refused_nested_ones_are_not() {
        for (body, key) in [
            (
                &br#"{"messages":[{"role":"user","content":"a"}],"model":"m","messages":[]}"#[..],
                Key::Messages,
            ),
            (br#"{"prompt":"a","prompt":"b"}"#, Key::Prompt),
            (br#"{"prompt":null,"pr\u006fmpt":"b"}"#, Key::Prompt),
        ] {
            assert_eq!(
                prompt_blocks(body),
                Err(Invalid::Duplicate(key)),
                "{body:?}"
            );
        }
        // One of each, and the keys inside messages, are fine.
        let ok = br#"{"messages":[{"role":"user","content":"a","prompt":"x"}],"prompt":"b"}"#;
        assert!(!blocks(ok).is_empty());
    }
}
