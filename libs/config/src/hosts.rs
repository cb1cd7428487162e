//! The `Host` names a server answers for, and how a `Host` header is read.

use std::net::IpAddr;

/// The `Host` names requests may carry (`SAMVAD_ALLOWED_HOSTS`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedHosts {
    Any,
    /// These names (lowercase, no port), and with `loopback` also `localhost`, `*.localhost`
    /// and loopback addresses.
    Only {
        names: Vec<String>,
        loopback: bool,
    },
}

/// The host of an authority (`Host` header, or a URL's `host:port`): a name or an IP literal,
/// without port or brackets, without a trailing dot, in lowercase.
pub(crate) fn host_name(authority: &str) -> String {
    let name = match authority.strip_prefix('[') {
        // `[::1]:8080`
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => authority
            .rsplit_once(':')
            .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
            .map_or(authority, |(name, _)| name),
    };
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl AllowedHosts {
    /// Whether a `Host` header value (a name or an IP literal, with or without a port) is
    /// allowed.
    pub fn allows(&self, host: &str) -> bool {
        let Self::Only { names, loopback } = self else {
            return true;
        };
        let name = host_name(host);
        names.contains(&name)
            || *loopback
                && (name == "localhost"
                    || name.ends_with(".localhost")
                    || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_matched_by_name_without_port_or_case() {
        let only = AllowedHosts::Only {
            names: vec!["chat.example.com".into()],
            loopback: true,
        };
        for host in [
            "chat.example.com",
            "Chat.Example.com:443",
            "chat.example.com.",
            "localhost:8080",
            "app.localhost",
            "127.0.0.1:8080",
            "127.9.9.9",
            "[::1]:8080",
            "[::1]",
        ] {
            assert!(only.allows(host), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:8080",
            "chat.example.com.evil.example",
            "localhost.evil.example",
            "10.0.0.1:8080",
            "[::2]:8080",
            "",
            "127.0.0.1:80:80",
            // An IPv6 address without brackets is no Host value.
            "::1",
            "\u{fffd}",
        ] {
            assert!(!only.allows(host), "{host}");
        }
        let names_only = AllowedHosts::Only {
            names: vec!["chat.example.com".into()],
            loopback: false,
        };
        assert!(!names_only.allows("127.0.0.1:8080"));
        assert!(AllowedHosts::Any.allows("evil.example"));
    }
}
