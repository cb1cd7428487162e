//! JSON plumbing shared by the text codecs and the internal form.
//!
//! Frames are parsed into lists of [`RawValue`]s so that a message's `body` reaches the canonical
//! `content` byte for byte (key order, number spelling and all), and field values are only
//! interpreted where the mapping needs them. Keys and values borrow from the frame: decoding a
//! frame allocates only what the message keeps.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::DecodeError;

/// A JSON object whose values are left unparsed, its members in the order written. A key
/// written twice means its last value, as in a map.
#[derive(Debug, Default)]
pub(crate) struct Object<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'a> Object<'a> {
    /// The value of `key` (its last, if written twice).
    fn value(&self, key: &str) -> Option<&'a RawValue> {
        self.0.iter().rev().find(|(k, _)| k == key).map(|(_, v)| *v)
    }
}

impl<'a> IntoIterator for Object<'a> {
    type Item = (Cow<'a, str>, &'a RawValue);
    type IntoIter = std::vec::IntoIter<Self::Item>;

    /// The members in the order written (a key written twice comes twice, its last value last).
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Object<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> Visitor<'de> for Members {
            type Value = Object<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Object<'de>, A::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some((Key(key), value)) = map.next_entry()? {
                    members.push((key, value));
                }
                Ok(Object(members))
            }
        }
        deserializer.deserialize_map(Members)
    }
}

/// An object key, borrowed from the text unless it had to be unescaped.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Text;
        impl<'de> Visitor<'de> for Text {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        deserializer.deserialize_str(Text)
    }
}

/// Whether `text` cannot nest as deep as serde_json's limit (128): it holds fewer brackets
/// that open than that, in strings or not. Counting them is far cheaper than a parse, and a
/// frame holds a handful.
fn shallow(text: &[u8]) -> bool {
    text.iter().filter(|&&b| b == b'[' || b == b'{').count() < 128
}

/// Validates JSON text, applying serde_json's nesting limit (128) to every value.
///
/// serde_json skips over `RawValue`s and `IgnoredAny` iteratively, without that limit, so text
/// that is not plainly [`shallow`] is walked with this visitor first: it recurses through
/// `deserialize_any`, which is depth-checked, and allocates nothing.
struct Checked;

impl<'de> Deserialize<'de> for Checked {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(CheckedVisitor)
    }
}

struct CheckedVisitor;

impl<'de> Visitor<'de> for CheckedVisitor {
    type Value = Checked;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Checked, A::Error> {
        while seq.next_element::<Checked>()?.is_some() {}
        Ok(Checked)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Checked, A::Error> {
        while map.next_entry::<IgnoredAny, Checked>()?.is_some() {}
        Ok(Checked)
    }
}

/// Checks that `bytes` is one JSON value (surrounding whitespace allowed), nested ≤ 128 deep.
pub(crate) fn check_slice(bytes: &[u8]) -> Result<(), serde_json::Error> {
    if shallow(bytes) {
        serde_json::from_slice::<IgnoredAny>(bytes).map(|_| ())
    } else {
        serde_json::from_slice::<Checked>(bytes).map(|_| ())
    }
}

/// Parses a text frame into its top-level object: [`DecodeError::Json`] unless it is valid,
/// adequately shallow JSON, [`DecodeError::NotAnObject`] unless that JSON is an object.
pub(crate) fn parse_frame(frame: &str) -> Result<Object<'_>, DecodeError> {
    let json = |e: serde_json::Error| DecodeError::Json(e.to_string());
    if !shallow(frame.as_bytes()) {
        serde_json::from_str::<Checked>(frame).map_err(json)?;
    }
    if !frame.trim_start().starts_with('{') {
        serde_json::from_str::<IgnoredAny>(frame).map_err(json)?;
        return Err(DecodeError::NotAnObject);
    }
    serde_json::from_str(frame).map_err(json)
}

/// `value` as an object, or [`DecodeError::WrongType`] naming `field`.
pub(crate) fn object<'a>(
    value: &'a RawValue,
    field: &'static str,
) -> Result<Object<'a>, DecodeError> {
    let wrong = || DecodeError::WrongType {
        field,
        expected: "an object",
    };
    if !value.get().starts_with('{') {
        return Err(wrong());
    }
    serde_json::from_str(value.get()).map_err(|_| wrong())
}

/// The value of `key` in `object`, treating `null` as absent.
pub(crate) fn get<'a>(object: &Object<'a>, key: &str) -> Option<&'a RawValue> {
    object.value(key).filter(|v| v.get() != "null")
}

/// A JSON string's contents, or `None` if `value` is not a string.
pub(crate) fn as_str(value: &RawValue) -> Option<String> {
    let text = value.get();
    if !text.starts_with('"') {
        return None;
    }
    // Valid JSON, so a string with no escapes is what its quotes hold.
    if !text.contains('\\') {
        return Some(text[1..text.len() - 1].to_owned());
    }
    serde_json::from_str(text).ok()
}

/// `value` as a string: [`DecodeError::WrongType`] (naming `field`) if it is anything else.
pub(crate) fn string(value: &RawValue, field: &'static str) -> Result<String, DecodeError> {
    as_str(value).ok_or(DecodeError::WrongType {
        field,
        expected: "a string",
    })
}

/// The optional string field `key`: absent or `null` → `None`, a non-string → WrongType.
pub(crate) fn opt_string(
    object: &Object<'_>,
    key: &'static str,
) -> Result<Option<String>, DecodeError> {
    get(object, key).map(|v| string(v, key)).transpose()
}

/// The required string field `key`: absent or `null` → MissingField, a non-string → WrongType.
pub(crate) fn required_string(
    object: &Object<'_>,
    key: &'static str,
) -> Result<String, DecodeError> {
    let value = get(object, key).ok_or(DecodeError::MissingField(key))?;
    string(value, key)
}

/// A free-form attribute value as text: a string's contents, any other value's JSON text.
pub(crate) fn text(value: &RawValue) -> String {
    as_str(value).unwrap_or_else(|| value.get().to_owned())
}

/// A millisecond timestamp: a non-negative integer, written as a JSON number (integral floats
/// such as `1.7e12` included) or as a string of digits.
pub(crate) fn millis(value: &RawValue, field: &'static str) -> Result<u64, DecodeError> {
    let wrong = DecodeError::WrongType {
        field,
        expected: "a non-negative integer (milliseconds since the Unix epoch)",
    };
    if let Some(s) = as_str(value) {
        return s.trim().parse().map_err(|_| wrong);
    }
    let number: serde_json::Number =
        serde_json::from_str(value.get()).map_err(|_| wrong.clone())?;
    if let Some(n) = number.as_u64() {
        return Ok(n);
    }
    match number.as_f64() {
        // `as` saturates; the range check keeps it exact for every value accepted.
        Some(f) if f >= 0.0 && f.fract() == 0.0 && f < u64::MAX as f64 => Ok(f as u64),
        _ => Err(wrong),
    }
}

/// `content` as a JSON value to embed verbatim, if it is exactly one JSON text (no surrounding
/// whitespace) other than `null`, which the JSON forms use to mean "no content".
pub(crate) fn embeddable(content: &[u8]) -> Option<&RawValue> {
    let text = std::str::from_utf8(content).ok()?;
    let raw: &RawValue = serde_json::from_str(text).ok()?;
    (raw.get().len() == text.len() && text != "null").then_some(raw)
}

/// The top-level `text` of JSON content, if it is a string (for the flat v1 keys).
pub(crate) fn content_text(content: &RawValue) -> Option<Cow<'_, str>> {
    #[derive(Deserialize)]
    struct Text<'a> {
        #[serde(borrow)]
        text: Option<Cow<'a, str>>,
    }
    serde_json::from_str::<Text<'_>>(content.get())
        .ok()
        .and_then(|t| t.text)
}

/// Serialises one of this crate's output structs.
///
/// They only hold strings, numbers, string-keyed maps and `RawValue`s, for which serde_json's
/// serialiser cannot fail; the empty fallback only keeps this path free of panics.
pub(crate) fn to_string<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}
