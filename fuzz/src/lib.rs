//! What the fuzz targets share: JWTs built from structured input, so that the fuzzer spends its
//! time on what a verifier decides (algorithms, key ids, claims, signatures) rather than on
//! rediscovering base64 and JSON, and the claims a token really carries, for the targets'
//! oracle: a verifier that accepts a token must have had every reason to.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use serde_json::{Map, Value};

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A JSON value as a token field may hold it; `Good` is whatever the verifier expects there.
#[derive(Arbitrary, Debug, Clone)]
pub enum Field {
    Good,
    /// Now plus this many seconds (for the time claims).
    Now(i32),
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Null,
    List(Vec<String>),
    Object,
}

impl Field {
    fn json(&self, good: &Value) -> Value {
        match self {
            Field::Good => good.clone(),
            Field::Now(offset) => Value::from(now() + i64::from(*offset)),
            Field::Str(s) => Value::from(s.as_str()),
            Field::Int(n) => Value::from(*n),
            Field::Float(f) => Value::from(*f),
            Field::Bool(b) => Value::from(*b),
            Field::Null => Value::Null,
            Field::List(items) => Value::from(items.clone()),
            Field::Object => Value::Object(Map::new()),
        }
    }
}

/// How a token is signed.
#[derive(Arbitrary, Debug, Clone)]
pub enum Signature {
    /// With the key the verifier trusts, under the header's algorithm.
    Genuine,
    /// Left empty.
    Empty,
    /// Any bytes.
    Forged(Vec<u8>),
}

/// A JWT, told as changes to a token the verifier accepts (no change at all is a good token),
/// so that the fuzzer explores the edge of validity, and how it is signed.
#[derive(Arbitrary, Debug, Clone)]
pub struct Jwt {
    pub header: Vec<Edit>,
    pub claims: Vec<Edit>,
    pub signature: Signature,
    /// Bytes put after the signature (a fourth part, whitespace, …).
    pub trailer: Vec<u8>,
}

/// A change to a header or the claims.
#[derive(Arbitrary, Debug, Clone)]
pub enum Edit {
    /// Gives every member of that name this value (adds one if there is none).
    Set(Name, Field),
    /// Removes every member of that name.
    Remove(Name),
    /// Adds a member, even one of a name already there.
    Repeat(Name, Field),
}

/// The names a verifier cares about, or any other.
#[derive(Arbitrary, Debug, Clone, PartialEq)]
pub enum Name {
    Alg,
    Kid,
    Typ,
    Crit,
    Jku,
    Iss,
    Aud,
    Sub,
    Exp,
    Iat,
    Nbf,
    /// The claim that names the user (`phone_number` for ID tokens, `dev` for access keys).
    User,
    Other(String),
}

/// What "good" and the names mean for one kind of token.
pub struct Profile<'a> {
    pub user_claim: &'a str,
    /// The members of a good token's header and claims.
    pub header: &'a [Name],
    pub claims: &'a [Name],
    /// Good values by name (absent: `Good` writes null).
    pub good: &'a dyn Fn(&Name) -> Value,
}

impl Name {
    fn as_str<'a>(&'a self, profile: &'a Profile<'_>) -> &'a str {
        match self {
            Name::Alg => "alg",
            Name::Kid => "kid",
            Name::Typ => "typ",
            Name::Crit => "crit",
            Name::Jku => "jku",
            Name::Iss => "iss",
            Name::Aud => "aud",
            Name::Sub => "sub",
            Name::Exp => "exp",
            Name::Iat => "iat",
            Name::Nbf => "nbf",
            Name::User => profile.user_claim,
            Name::Other(name) => name,
        }
    }
}

/// The members of a good token's part, changed by `edits`.
fn edited(good: &[Name], edits: &[Edit]) -> Vec<(Name, Field)> {
    let mut fields: Vec<(Name, Field)> = good.iter().map(|n| (n.clone(), Field::Good)).collect();
    for edit in edits {
        match edit {
            Edit::Set(name, field) => {
                let mut found = false;
                for (_, value) in fields.iter_mut().filter(|(n, _)| n == name) {
                    *value = field.clone();
                    found = true;
                }
                if !found {
                    fields.push((name.clone(), field.clone()));
                }
            }
            Edit::Remove(name) => fields.retain(|(n, _)| n != name),
            Edit::Repeat(name, field) => fields.push((name.clone(), field.clone())),
        }
    }
    fields
}

/// A JSON object written from (name, value) pairs in order, repeats kept.
fn object(fields: &[(Name, Field)], profile: &Profile<'_>) -> String {
    let members: Vec<String> = fields
        .iter()
        .map(|(name, field)| {
            let key = Value::from(name.as_str(profile));
            format!("{key}:{}", field.json(&(profile.good)(name)))
        })
        .collect();
    format!("{{{}}}", members.join(","))
}

/// A built token, and what its parts say when read as a JSON object reads them (the last of
/// repeated names wins, as serde_json's does).
pub struct Built {
    pub token: String,
    pub header: Map<String, Value>,
    pub claims: Map<String, Value>,
    pub genuine: bool,
}

impl Jwt {
    /// Writes the token, signing it with `key` when asked (under the algorithm the header
    /// names, if `key` can sign with it).
    pub fn build(&self, profile: &Profile<'_>, key: &EncodingKey, key_alg: Algorithm) -> Built {
        let header = object(&edited(profile.header, &self.header), profile);
        let claims = object(&edited(profile.claims, &self.claims), profile);
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&header),
            URL_SAFE_NO_PAD.encode(&claims)
        );
        let (signature, genuine) = match &self.signature {
            Signature::Genuine => (
                jsonwebtoken::crypto::sign(signing_input.as_bytes(), key, key_alg)
                    .unwrap_or_default(),
                true,
            ),
            Signature::Empty => (String::new(), false),
            Signature::Forged(bytes) => (URL_SAFE_NO_PAD.encode(bytes), false),
        };
        let read = |text: &str| match serde_json::from_str(text) {
            Ok(Value::Object(map)) => map,
            _ => Map::new(),
        };
        Built {
            token: format!(
                "{signing_input}.{signature}{}",
                String::from_utf8_lossy(&self.trailer)
            ),
            header: read(&header),
            claims: read(&claims),
            genuine,
        }
    }
}

/// A claim as a whole number of seconds, as a verifier would read it.
pub fn seconds(claims: &Map<String, Value>, name: &str) -> Option<i64> {
    let value = claims.get(name)?;
    value
        .as_i64()
        .or_else(|| value.as_u64().map(|n| n.min(i64::MAX as u64) as i64))
        .or_else(|| value.as_f64().map(|f| f as i64))
}
