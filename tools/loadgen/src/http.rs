//! Just enough HTTP/1.1 for setting a run up (logins, groups): keep-alive, JSON bodies,
//! `Content-Length` or chunked answers. A full client would be most of the binary's size.

use std::net::SocketAddr;

use anyhow::{Context as _, bail};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

pub struct Http {
    addr: SocketAddr,
    conn: Option<BufReader<TcpStream>>,
}

impl Http {
    pub fn new(addr: SocketAddr) -> Self {
        Self { addr, conn: None }
    }

    /// Sends a JSON request and returns the status and the JSON answer (`Null` if none).
    /// Reconnects once if a kept-alive connection turns out to be closed.
    pub async fn call(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &Value,
    ) -> anyhow::Result<(u16, Value)> {
        let body = body.to_string();
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n",
            self.addr,
            body.len()
        );
        for (k, v) in headers {
            request.push_str(&format!("{k}: {v}\r\n"));
        }
        request.push_str("\r\n");
        request.push_str(&body);
        let fresh = self.conn.is_none();
        match self.exchange(&request).await {
            Ok(answer) => Ok(answer),
            Err(_) if !fresh => {
                self.conn = None;
                self.exchange(&request).await
            }
            Err(e) => Err(e),
        }
    }

    async fn exchange(&mut self, request: &str) -> anyhow::Result<(u16, Value)> {
        let conn = match &mut self.conn {
            Some(c) => c,
            None => {
                let stream = TcpStream::connect(self.addr)
                    .await
                    .with_context(|| format!("cannot connect to {}", self.addr))?;
                stream.set_nodelay(true)?;
                self.conn.insert(BufReader::new(stream))
            }
        };
        let result = roundtrip(conn, request).await;
        if !matches!(result, Ok((_, _, true))) {
            self.conn = None;
        }
        result.map(|(status, body, _)| (status, body))
    }
}

/// One request and its answer; the flag says whether the connection may be reused.
async fn roundtrip(
    conn: &mut BufReader<TcpStream>,
    request: &str,
) -> anyhow::Result<(u16, Value, bool)> {
    conn.get_mut().write_all(request.as_bytes()).await?;
    let mut line = String::new();
    conn.read_line(&mut line).await?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("not an HTTP status line: {line:?}"))?;
    let mut length = None;
    let mut chunked = false;
    let mut keep_alive = true;
    loop {
        line.clear();
        if conn.read_line(&mut line).await? == 0 {
            bail!("connection closed in the headers");
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let Some((name, value)) = header.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.to_ascii_lowercase().as_str() {
            "content-length" => length = Some(value.parse::<usize>()?),
            "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
            "connection" => keep_alive = !value.eq_ignore_ascii_case("close"),
            _ => {}
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            conn.read_line(&mut line).await?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .with_context(|| format!("bad chunk size {line:?}"))?;
            let start = body.len();
            body.resize(start + size + 2, 0);
            conn.read_exact(&mut body[start..]).await?;
            body.truncate(start + size);
            if size == 0 {
                break;
            }
        }
    } else if let Some(n) = length {
        body.resize(n, 0);
        conn.read_exact(&mut body).await?;
    } else {
        conn.read_to_end(&mut body).await?;
        keep_alive = false;
    }
    let value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body).unwrap_or(Value::Null)
    };
    Ok((status, value, keep_alive))
}

/// Logs `user` in with the dev provider, as `device` (default: the server's default device),
/// and returns the access key, which speaks for that device.
pub async fn login(http: &mut Http, user: &str, device: Option<&str>) -> anyhow::Result<String> {
    let mut body = serde_json::json!({
        "username": user,
        "authToken": "bench",
        "notificationToken": format!("bench-{user}-{}", device.unwrap_or("default")),
    });
    if let Some(device) = device {
        body["deviceId"] = device.into();
    }
    let (status, answer) = http.call("POST", "/v1.0/login", &[], &body).await?;
    if status != 200 {
        bail!("login of {user}: HTTP {status} {answer}");
    }
    answer["accesskey"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("login of {user}: no accesskey in {answer}"))
}

/// Creates a group of `members` (the creator first) and returns its id: one create call with
/// up to 99 others, then additions of 50 at a time (the API's limits).
pub async fn create_group(
    http: &mut Http,
    name: &str,
    creator: (&str, &str),
    others: &[String],
) -> anyhow::Result<String> {
    let headers = [("user", creator.0), ("accesskey", creator.1)];
    let first = others.len().min(99);
    let body = serde_json::json!({"name": name, "members": &others[..first]});
    let (status, answer) = http.call("POST", "/v1.0/groups/", &headers, &body).await?;
    if status != 200 {
        bail!("creating group {name}: HTTP {status} {answer}");
    }
    let id = answer["groupId"]
        .as_str()
        .with_context(|| format!("creating group {name}: no groupId in {answer}"))?
        .to_owned();
    for chunk in others[first..].chunks(50) {
        let path = format!("/v1.0/groups/{id}/members");
        let body = serde_json::json!({ "members": chunk });
        let (status, answer) = http.call("POST", &path, &headers, &body).await?;
        if status != 200 {
            bail!("adding members to {name}: HTTP {status} {answer}");
        }
    }
    Ok(id)
}
