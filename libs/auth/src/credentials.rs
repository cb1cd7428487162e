use std::fmt;

use cookie::Cookie;
use http::HeaderMap;
use http::header::{AUTHORIZATION, AsHeaderName, COOKIE, SEC_WEBSOCKET_PROTOCOL};

use crate::AuthError;

const SUBPROTOCOL_PREFIX: &str = "accesskey.";

/// What a request presents. Nothing here is trusted until
/// [`AccessKeys::authenticate`](crate::AccessKeys::authenticate) has checked it.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The `user` header or cookie, when sent; it must then match the key's username.
    pub user: Option<String>,
    /// The access key.
    pub key: String,
    /// The exact `accesskey.<key>` entry the client offered in `Sec-WebSocket-Protocol`, for
    /// the server to echo back. Set whenever such an entry was offered, even if the key came
    /// from a source of higher precedence: a browser drops a WebSocket whose offered
    /// subprotocol is not echoed.
    pub subprotocol: Option<String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("key", &"<redacted>")
            .field(
                "subprotocol",
                &self
                    .subprotocol
                    .as_ref()
                    .map(|_| format!("{SUBPROTOCOL_PREFIX}<redacted>")),
            )
            .finish()
    }
}

/// The credentials a request presents.
///
/// The key comes from, in this order of precedence: header `accesskey`,
/// `Authorization: Bearer <key>`, the WebSocket subprotocol `accesskey.<key>` (in the
/// comma-separated `Sec-WebSocket-Protocol` list), cookie `accesskey=`. The user from header
/// `user`, else — when the key came from the cookie — cookie `user=`. Empty values count as
/// absent; cookie values are percent-decoded, as browsers' `encodeURIComponent` writes them.
///
/// Fails with [`AuthError::MissingCredentials`] when no source carries a key.
pub fn credentials(headers: &HeaderMap) -> Result<Credentials, AuthError> {
    let subprotocol = offered_subprotocol(headers);
    let presented = header_value(headers, "accesskey")
        .or_else(|| bearer_token(headers))
        .or_else(|| subprotocol.and_then(|entry| entry.strip_prefix(SUBPROTOCOL_PREFIX)));
    // The `user` cookie is read only beside the `accesskey` cookie: a leftover cookie from
    // another login in the same browser must not spoil a key presented another way.
    let (key, user) = match presented {
        Some(key) => (
            key.to_owned(),
            header_value(headers, "user").map(str::to_owned),
        ),
        None => (
            cookie(headers, "accesskey").ok_or(AuthError::MissingCredentials)?,
            header_value(headers, "user")
                .map(str::to_owned)
                .or_else(|| cookie(headers, "user")),
        ),
    };
    Ok(Credentials {
        user,
        key,
        subprotocol: subprotocol.map(str::to_owned),
    })
}

/// Values that are not visible ASCII cannot be ours and are skipped.
fn values(headers: &HeaderMap, name: impl AsHeaderName) -> impl Iterator<Item = &str> {
    headers
        .get_all(name)
        .into_iter()
        .filter_map(|value| value.to_str().ok())
}

fn header_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    values(headers, name)
        .map(str::trim)
        .find(|value| !value.is_empty())
}

fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    values(headers, AUTHORIZATION).find_map(|value| {
        let (scheme, token) = value.trim().split_once(' ')?;
        // The auth scheme is case-insensitive (RFC 9110 §11.1).
        let token = token.trim();
        (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
    })
}

fn offered_subprotocol(headers: &HeaderMap) -> Option<&str> {
    values(headers, SEC_WEBSOCKET_PROTOCOL)
        .flat_map(|list| list.split(','))
        .map(str::trim)
        .find(|entry| {
            entry
                .strip_prefix(SUBPROTOCOL_PREFIX)
                .is_some_and(|key| !key.is_empty())
        })
}

/// The first non-empty value of cookie `name`, percent-decoded, without the double quotes
/// RFC 6265 allows around it.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    values(headers, COOKIE)
        .flat_map(Cookie::split_parse_encoded)
        .filter_map(Result::ok)
        .filter(|cookie| cookie.name() == name)
        .map(|cookie| cookie.value_trimmed().to_owned())
        .find(|value| !value.is_empty())
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn creds(pairs: &[(&'static str, &str)]) -> Credentials {
        credentials(&headers(pairs)).unwrap()
    }

    #[test]
    fn the_user_cookie_counts_only_beside_the_key_cookie() {
        let leftover = "user=bob; accesskey=cookie-key";
        let creds = credentials(&headers(&[
            ("sec-websocket-protocol", "accesskey.proto-key"),
            ("cookie", leftover),
        ]))
        .unwrap();
        assert_eq!((creds.key.as_str(), creds.user), ("proto-key", None));
        let creds = credentials(&headers(&[("cookie", leftover)])).unwrap();
        assert_eq!(
            (creds.key.as_str(), creds.user.as_deref()),
            ("cookie-key", Some("bob"))
        );
        let creds = credentials(&headers(&[
            ("accesskey", "k"),
            ("user", "ann"),
            ("cookie", leftover),
        ]))
        .unwrap();
        assert_eq!(
            (creds.key.as_str(), creds.user.as_deref()),
            ("k", Some("ann"))
        );
    }

    #[test]
    fn the_accesskey_and_user_headers_are_read() {
        let c = creds(&[("accesskey", "k-header"), ("user", "alice")]);
        assert_eq!(c.key, "k-header");
        assert_eq!(c.user.as_deref(), Some("alice"));
        assert_eq!(c.subprotocol, None);
    }

    #[test]
    fn a_bearer_token_is_read_whatever_the_scheme_case() {
        for value in ["Bearer k-bearer", "bearer k-bearer", "BEARER   k-bearer "] {
            assert_eq!(
                creds(&[("authorization", value)]).key,
                "k-bearer",
                "{value}"
            );
        }
    }

    #[test]
    fn other_authorization_schemes_are_not_keys() {
        for value in ["Basic YWxpY2U6cHc=", "Bearer", "Bearer   ", "k-bare"] {
            let result = credentials(&headers(&[("authorization", value)]));
            assert!(
                matches!(result, Err(AuthError::MissingCredentials)),
                "{value}"
            );
        }
    }

    #[test]
    fn the_subprotocol_entry_is_picked_from_the_offered_list() {
        let c = creds(&[("sec-websocket-protocol", "v3.samvad, accesskey.k-ws ,json")]);
        assert_eq!(c.key, "k-ws");
        assert_eq!(c.subprotocol.as_deref(), Some("accesskey.k-ws"));
        assert_eq!(c.user, None);
    }

    #[test]
    fn the_subprotocol_entry_is_found_across_repeated_headers() {
        let c = creds(&[
            ("sec-websocket-protocol", "chat"),
            ("sec-websocket-protocol", "accesskey., accesskey.k-ws2"),
        ]);
        assert_eq!(c.key, "k-ws2");
        assert_eq!(c.subprotocol.as_deref(), Some("accesskey.k-ws2"));
    }

    #[test]
    fn cookies_are_parsed_among_several() {
        let c = creds(&[(
            "cookie",
            "theme=dark; accesskey=k-cookie;user=%2B91; lang=\"en\"",
        )]);
        assert_eq!(c.key, "k-cookie");
        assert_eq!(c.user.as_deref(), Some("+91"), "percent-decoded");

        let c = creds(&[
            ("cookie", "theme=dark"),
            ("cookie", "user=\"bob\"; accesskey=\"k-quoted\""),
        ]);
        assert_eq!(c.key, "k-quoted");
        assert_eq!(c.user.as_deref(), Some("bob"));
    }

    #[test]
    fn a_cookie_name_must_match_exactly() {
        let result = credentials(&headers(&[("cookie", "myaccesskey=x; accesskeyx=y")]));
        assert!(matches!(result, Err(AuthError::MissingCredentials)));
    }

    #[test]
    fn the_key_sources_are_taken_in_order_of_precedence() {
        let all = [
            ("accesskey", "k-header"),
            ("authorization", "Bearer k-bearer"),
            ("sec-websocket-protocol", "accesskey.k-ws"),
            ("cookie", "accesskey=k-cookie"),
        ];
        let expected = ["k-header", "k-bearer", "k-ws", "k-cookie"];
        for (skip, want) in expected.iter().enumerate() {
            assert_eq!(creds(&all[skip..]).key, *want);
        }
        // The offered subprotocol is echoed even when a header supplies the key.
        assert_eq!(creds(&all).subprotocol.as_deref(), Some("accesskey.k-ws"));
    }

    #[test]
    fn an_empty_source_falls_through_to_the_next() {
        let c = creds(&[
            ("accesskey", " "),
            ("authorization", "Bearer "),
            ("cookie", "accesskey=; accesskey=k-cookie"),
        ]);
        assert_eq!(c.key, "k-cookie");
    }

    #[test]
    fn the_user_header_wins_over_the_user_cookie() {
        let c = creds(&[
            ("cookie", "user=cookie-user; accesskey=k"),
            ("user", "header-user"),
        ]);
        assert_eq!(c.user.as_deref(), Some("header-user"));
    }

    #[test]
    fn no_key_anywhere_is_missing_credentials() {
        for pairs in [
            &[][..],
            &[("user", "alice")][..],
            &[("cookie", "user=alice")][..],
            &[("sec-websocket-protocol", "chat, accesskey.")][..],
        ] {
            assert!(matches!(
                credentials(&headers(pairs)),
                Err(AuthError::MissingCredentials)
            ));
        }
    }

    #[test]
    fn debug_output_redacts_the_key() {
        let c = creds(&[("sec-websocket-protocol", "accesskey.s3cr3t")]);
        let debug = format!("{c:?}");
        assert!(!debug.contains("s3cr3t"), "{debug}");
    }
}
