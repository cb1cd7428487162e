//! Access keys as a client presents them: built token by token (any header, any claims, signed
//! with our secret or forged), and as request headers (`accesskey`, `Authorization`, the
//! WebSocket subprotocol, cookies, `user`), carrying keys we issued or anything else. Nothing
//! panics, and a key is accepted only when it has every reason to be: signed with our secret
//! under HS256 and our kid, unexpired, for the user and device it names; headers authenticate
//! only as someone we issued a key to.
#![no_main]

use std::sync::LazyLock;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use samvad_auth::{AccessKeys, Identity, credentials};
use samvad_fuzz::{Jwt, Name, Profile, Signature, now, seconds};
use serde_json::Value;

const SIGNING: &[u8] = &[7; 32];
const OTHER: &[u8] = &[9; 32];

static KEYS: LazyLock<AccessKeys> = LazyLock::new(|| {
    let keys = AccessKeys::new(
        vec![
            ("k1".into(), SIGNING.to_vec()),
            ("k0".into(), OTHER.to_vec()),
        ],
        Duration::from_secs(3600),
    )
    .expect("valid settings");
    // The harness is only worth running if a good key passes it.
    let good = Jwt {
        header: Vec::new(),
        claims: Vec::new(),
        signature: Signature::Genuine,
        trailer: Vec::new(),
    };
    let token = good
        .build(
            &PROFILE,
            &EncodingKey::from_secret(SIGNING),
            Algorithm::HS256,
        )
        .token;
    keys.verify(&token).expect("a good key passes");
    keys
});

const PROFILE: Profile<'static> = Profile {
    user_claim: "dev",
    header: &[Name::Alg, Name::Kid],
    claims: &[Name::Sub, Name::User, Name::Iat, Name::Exp],
    good: &good,
};

#[derive(Arbitrary, Debug)]
enum Input {
    Token(Jwt),
    Headers(Vec<(Header, Content)>),
}

#[derive(Arbitrary, Debug)]
enum Header {
    AccessKey,
    Authorization,
    Subprotocol,
    Cookie,
    User,
    Other(String),
}

#[derive(Arbitrary, Debug)]
enum Content {
    Raw(Vec<u8>),
    /// A key we issued to (user, device), written as the header wants it.
    Issued {
        user: String,
        device: String,
    },
    /// Two keys we issued, in one header (a cookie or protocol list, say).
    Both {
        first: String,
        second: String,
    },
}

fn good(name: &Name) -> Value {
    match name {
        Name::Alg => "HS256".into(),
        Name::Kid => "k1".into(),
        Name::Sub => "alice".into(),
        Name::User => "phone".into(),
        Name::Exp => (now() + 3600).into(),
        Name::Iat => now().into(),
        _ => Value::Null,
    }
}

fn written(header: &Header, key: &str) -> String {
    match header {
        Header::Authorization => format!("Bearer {key}"),
        Header::Subprotocol => format!("chat, accesskey.{key}"),
        Header::Cookie => format!("theme=dark; accesskey={key}"),
        _ => key.to_owned(),
    }
}

fuzz_target!(|input: Input| {
    match input {
        Input::Token(jwt) => {
            let built = jwt.build(
                &PROFILE,
                &EncodingKey::from_secret(SIGNING),
                Algorithm::HS256,
            );
            let Ok(who) = KEYS.verify(&built.token).map(|access| access.who) else {
                return;
            };
            let (header, claims) = (&built.header, &built.claims);
            assert!(built.genuine, "a forged key was accepted: {}", built.token);
            assert_eq!(header.get("alg"), Some(&"HS256".into()), "{}", built.token);
            assert_eq!(header.get("kid"), Some(&"k1".into()), "{}", built.token);
            assert_eq!(
                claims.get("sub"),
                Some(&who.user.as_str().into()),
                "{}",
                built.token
            );
            assert!(!who.user.is_empty() && !who.device.is_empty());
            match claims.get("dev") {
                None => assert_eq!(who.device, "default"),
                Some(dev) => assert_eq!(dev, who.device.as_str(), "{}", built.token),
            }
            assert!(
                seconds(claims, "exp").is_some_and(|exp| exp > now() - 61),
                "expired: {}",
                built.token
            );
            assert!(
                seconds(claims, "iat").is_some_and(|iat| iat <= now() + 61),
                "{}",
                built.token
            );
        }
        Input::Headers(headers) => {
            let mut map = HeaderMap::new();
            let mut issued = Vec::new();
            let mut issue = |user: &str, device: &str| {
                let who = Identity::new(user, device);
                let key = KEYS.issue(&who, "s1");
                issued.push(who);
                key
            };
            for (header, content) in &headers {
                let name = match header {
                    Header::AccessKey => HeaderName::from_static("accesskey"),
                    Header::Authorization => http::header::AUTHORIZATION,
                    Header::Subprotocol => http::header::SEC_WEBSOCKET_PROTOCOL,
                    Header::Cookie => http::header::COOKIE,
                    Header::User => HeaderName::from_static("user"),
                    Header::Other(name) => match HeaderName::from_bytes(name.as_bytes()) {
                        Ok(name) => name,
                        Err(_) => continue,
                    },
                };
                let value = match content {
                    Content::Raw(bytes) => bytes.clone(),
                    Content::Issued { user, device } => {
                        written(header, &issue(user, device)).into_bytes()
                    }
                    Content::Both { first, second } => {
                        let (a, b) = (issue(first, "d1"), issue(second, "d2"));
                        format!("{}, {}; {}", written(header, &a), b, written(header, &b))
                            .into_bytes()
                    }
                };
                if let Ok(value) = HeaderValue::from_bytes(&value) {
                    map.append(name, value);
                }
            }
            let Ok(creds) = credentials(&map) else {
                return;
            };
            if let Ok(who) = KEYS.authenticate(&creds).map(|access| access.who) {
                assert!(
                    issued.contains(&who),
                    "{who:?} authenticated, but was never issued a key"
                );
                if let Some(user) = &creds.user {
                    assert_eq!(*user, who.user);
                }
            }
        }
    }
});
