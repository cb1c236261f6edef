//! A minimal HTTP/1.1 client for the admin endpoints the CLI talks to on loopback (the control
//! plane's 15014, each proxy's 15000): one request per connection, JSON bodies, a timeout.
//! Nothing here is on a request path; it only has to be correct and small.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::de::DeserializeOwned;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A response: status code and body.
#[derive(Debug, Clone)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The body (de-chunked).
    pub body: Vec<u8>,
}

impl Response {
    /// The body as JSON, if the status is 2xx.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T> {
        if !(200..300).contains(&self.status) {
            bail!(
                "status {}: {}",
                self.status,
                String::from_utf8_lossy(&self.body).trim()
            );
        }
        serde_json::from_slice(&self.body).context("the response is not the JSON expected")
    }
}

/// Sends one request and reads the whole response, within `timeout`.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<Response> {
    tokio::time::timeout(timeout, request_inner(addr, method, path, bearer, body))
        .await
        .with_context(|| format!("{method} http://{addr}{path}: no answer within {timeout:?}"))?
        .with_context(|| format!("{method} http://{addr}{path}"))
}

async fn request_inner(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&[u8]>,
) -> Result<Response> {
    let mut s = TcpStream::connect(addr).await?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(t) = bearer {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if let Some(b) = body {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await?;
    if let Some(b) = body {
        s.write_all(b).await?;
    }
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await?;
    parse(&raw)
}

fn parse(raw: &[u8]) -> Result<Response> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("the response has no end of headers")?;
    let head = std::str::from_utf8(&raw[..split]).context("response headers are not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let mut body = raw[split + 4..].to_vec();
    if chunked {
        body = dechunk(&body)?;
    }
    Ok(Response { status, body })
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("truncated chunk size")?;
        let size_text = std::str::from_utf8(&b[..eol])?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .with_context(|| format!("bad chunk size {size_text:?}"))?;
        b = &b[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if b.len() < size {
            bail!("truncated chunk");
        }
        out.extend_from_slice(&b[..size]);
        b = b.get(size + 2..).unwrap_or_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked_responses() {
        let r = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"{}"[..]));
        let r = parse(b"HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nRBAC\r\n3\r\n: a\r\n0\r\n\r\n")
            .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (403, &b"RBAC: a"[..]));
        assert!(parse(b"garbage").is_err());
    }
}

/// The running control plane's admin API, as the operator commands reach it.
#[derive(Debug, Clone)]
pub struct AdminClient {
    addr: SocketAddr,
    token: String,
}

impl AdminClient {
    /// The admin API at `addr`, with the credential `state/admin.token` (created when the
    /// control plane first started with that state folder).
    pub fn new(addr: SocketAddr, state: &std::path::Path) -> Result<Self> {
        let path = state.join("admin.token");
        let token = std::fs::read_to_string(&path)
            .with_context(|| {
                format!(
                    "reading the admin credential {} (is the control plane running with --state {}?)",
                    path.display(),
                    state.display()
                )
            })?
            .trim()
            .to_owned();
        Ok(Self { addr, token })
    }

    /// `GET path` as JSON.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        request(
            self.addr,
            "GET",
            path,
            Some(&self.token),
            None,
            Duration::from_secs(5),
        )
        .await?
        .json()
        .with_context(|| format!("GET {path} on the control plane at {}", self.addr))
    }

    /// `POST path` with a JSON body, answer as JSON.
    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<T> {
        let bytes = serde_json::to_vec(body)?;
        request(
            self.addr,
            "POST",
            path,
            Some(&self.token),
            Some(&bytes),
            Duration::from_secs(30),
        )
        .await?
        .json()
        .with_context(|| format!("POST {path} on the control plane at {}", self.addr))
    }
}
