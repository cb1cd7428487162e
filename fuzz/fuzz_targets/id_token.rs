//! ID tokens as `POST /v1.0/login` receives them with `SAMVAD_AUTH_PROVIDER=jwks`, built token
//! by token (any header, any claims, signed with the provider's EC key or forged), checked by
//! the real verifier against a JWKS it fetches over HTTP from a server in this process. Nothing
//! panics, and a token is accepted only when it has every reason to be: ES256 under the
//! provider's kid, a genuine signature, our issuer and audience, in its lifetime, naming the
//! user who logs in.
#![no_main]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::LazyLock;

use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use samvad_auth::{JwksConfig, JwksVerifier};
use samvad_fuzz::{Jwt, Name, Profile, Signature, now, seconds};
use serde_json::Value;

const ISSUER: &str = "https://securetoken.google.com/samvad-fuzz";
const AUDIENCE: &str = "samvad-fuzz";
const PHONE: &str = "+15550100";
const JWKS: &str = include_str!("../../libs/auth/tests/fixtures/jwks.json");
const EC_PEM: &[u8] = include_bytes!("../../libs/auth/tests/fixtures/ec.pem");

struct Harness {
    runtime: tokio::runtime::Runtime,
    verifier: JwksVerifier,
    key: EncodingKey,
}

/// Serves the fixture JWKS to every request, one connection at a time, for the process's life.
fn serve_jwks() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    let url = format!("http://{}/jwks", listener.local_addr().expect("bound"));
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(&stream);
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                line.clear();
            }
            let _ = write!(
                &stream,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncache-control: max-age=3600\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{JWKS}",
                JWKS.len()
            );
        }
    });
    url
}

static HARNESS: LazyLock<Harness> = LazyLock::new(|| {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = JwksConfig {
        jwks_url: serve_jwks(),
        issuer: ISSUER.into(),
        audience: AUDIENCE.into(),
        username_claim: "phone_number".into(),
    };
    let harness = Harness {
        runtime: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime"),
        verifier: JwksVerifier::new(config, reqwest::Client::new()).expect("valid settings"),
        key: EncodingKey::from_ec_pem(EC_PEM).expect("the fixture key"),
    };
    // The harness is only worth running if a good token passes it.
    let good = Jwt {
        header: Vec::new(),
        claims: Vec::new(),
        signature: Signature::Genuine,
        trailer: Vec::new(),
    };
    let token = good.build(&profile(), &harness.key, Algorithm::ES256).token;
    harness
        .runtime
        .block_on(harness.verifier.verify(PHONE, &token))
        .expect("a good token passes");
    harness
});

fn good(name: &Name) -> Value {
    match name {
        Name::Alg => "ES256".into(),
        Name::Kid => "ec-1".into(),
        Name::Iss => ISSUER.into(),
        Name::Aud => AUDIENCE.into(),
        Name::Sub => "uid-1".into(),
        Name::User => PHONE.into(),
        Name::Exp => (now() + 3600).into(),
        Name::Iat => now().into(),
        Name::Nbf => now().into(),
        _ => Value::Null,
    }
}

fn profile() -> Profile<'static> {
    Profile {
        user_claim: "phone_number",
        header: &[Name::Alg, Name::Kid],
        claims: &[
            Name::Iss,
            Name::Aud,
            Name::Sub,
            Name::Iat,
            Name::Exp,
            Name::User,
        ],
        good: &good,
    }
}

#[derive(Arbitrary, Debug)]
struct Input {
    jwt: Jwt,
    /// Who logs in (the phone number the token is made for when absent).
    username: Option<String>,
}

fuzz_target!(|input: Input| {
    let harness = &*HARNESS;
    let built = input.jwt.build(&profile(), &harness.key, Algorithm::ES256);
    let username = input.username.as_deref().unwrap_or(PHONE);
    if harness
        .runtime
        .block_on(harness.verifier.verify(username, &built.token))
        .is_err()
    {
        return;
    }
    let (header, claims, token) = (&built.header, &built.claims, &built.token);
    assert!(built.genuine, "a forged token was accepted: {token}");
    assert_eq!(header.get("alg"), Some(&"ES256".into()), "{token}");
    assert_eq!(header.get("kid"), Some(&"ec-1".into()), "{token}");
    // `"crit": null` names no extension, so nothing in it can be critical (found by this
    // target; jsonwebtoken reads it as absent, as the verifier then does).
    assert!(header.get("crit").is_none_or(Value::is_null), "{token}");
    assert_eq!(claims.get("iss"), Some(&ISSUER.into()), "{token}");
    let audience_ok = match claims.get("aud") {
        Some(Value::String(aud)) => aud == AUDIENCE,
        Some(Value::Array(auds)) => auds.iter().any(|a| a == AUDIENCE),
        _ => false,
    };
    assert!(audience_ok, "another audience: {token}");
    assert!(
        seconds(claims, "exp").is_some_and(|exp| exp > now() - 61),
        "expired: {token}"
    );
    assert!(
        seconds(claims, "iat").is_some_and(|iat| iat <= now() + 61),
        "{token}"
    );
    if claims.contains_key("nbf") {
        assert!(
            seconds(claims, "nbf").is_some_and(|nbf| nbf <= now() + 61),
            "not yet valid: {token}"
        );
    }
    assert_eq!(
        claims.get("phone_number"),
        Some(&username.into()),
        "another user: {token}"
    );
});
