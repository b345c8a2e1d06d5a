//! A lean HTTP/1.1 client for the read scenarios.
//!
//! Reads (manifest GET, HEAD blob, blob GET) are measured with this client instead of
//! reqwest so that the client spends as little CPU as possible on the shared two
//! cores and blob bodies are read with 1 MiB `read(2)` calls into one reused buffer,
//! the same way the loopback-copy reference reads. It keeps one keep-alive connection
//! per `host:port`, decodes `Content-Length` and chunked bodies, and follows
//! redirects (Distribution's redirect mode sends clients to SeaweedFS) — but only to
//! loopback addresses: any other target is an error, never a connection.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::Context;
use anyhow::bail;
use reqwest::Url;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Size of the per-connection read buffer.
pub const READ_BUF: usize = 1024 * 1024;
const MAX_HEAD: usize = 64 * 1024;
const MAX_REDIRECTS: usize = 5;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One response, body consumed.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// Body bytes received (after de-chunking).
    pub body_len: u64,
    /// The body, when the request asked to keep it.
    pub body: Option<Vec<u8>>,
    /// Redirects followed to get here.
    pub redirects: usize,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

struct Conn {
    authority: String,
    stream: TcpStream,
    buf: Box<[u8]>,
    pos: usize,
    end: usize,
}

enum Framing {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

impl Conn {
    async fn open(authority: &str) -> anyhow::Result<Conn> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(authority))
            .await
            .with_context(|| format!("connecting to {authority}: timed out"))?
            .with_context(|| format!("connecting to {authority}"))?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            authority: authority.to_owned(),
            stream,
            buf: vec![0u8; READ_BUF].into_boxed_slice(),
            pos: 0,
            end: 0,
        })
    }

    /// Reads more bytes into the buffer; returns how many (0 at EOF).
    async fn fill(&mut self) -> std::io::Result<usize> {
        if self.pos == self.end {
            self.pos = 0;
            self.end = 0;
        } else if self.end == self.buf.len() {
            self.buf.copy_within(self.pos..self.end, 0);
            self.end -= self.pos;
            self.pos = 0;
        }
        let n = self.stream.read(&mut self.buf[self.end..]).await?;
        self.end += n;
        Ok(n)
    }

    /// Reads up to and including the blank line ending the head; returns the head text.
    async fn read_head(&mut self) -> anyhow::Result<String> {
        loop {
            if let Some(i) = find(&self.buf[self.pos..self.end], b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[self.pos..self.pos + i]).into_owned();
                self.pos += i + 4;
                return Ok(head);
            }
            if self.end - self.pos >= MAX_HEAD {
                bail!("response head longer than {MAX_HEAD} bytes");
            }
            if self.fill().await? == 0 {
                bail!("connection closed before the response head");
            }
        }
    }

    async fn read_line(&mut self) -> anyhow::Result<String> {
        loop {
            if let Some(i) = find(&self.buf[self.pos..self.end], b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[self.pos..self.pos + i]).into_owned();
                self.pos += i + 2;
                return Ok(line);
            }
            if self.end - self.pos >= MAX_HEAD {
                bail!("chunk line longer than {MAX_HEAD} bytes");
            }
            if self.fill().await? == 0 {
                bail!("connection closed inside a chunked body");
            }
        }
    }

    /// Consumes exactly `n` body bytes, appending them to `keep` if given.
    async fn read_exact_body(&mut self, mut n: u64, keep: &mut Option<Vec<u8>>) -> anyhow::Result<()> {
        while n > 0 {
            if self.pos == self.end && self.fill().await? == 0 {
                bail!("connection closed with {n} body bytes missing");
            }
            let avail = (self.end - self.pos) as u64;
            let take = avail.min(n) as usize;
            if let Some(v) = keep.as_mut() {
                v.extend_from_slice(&self.buf[self.pos..self.pos + take]);
            }
            self.pos += take;
            n -= take as u64;
        }
        Ok(())
    }

    async fn read_body(&mut self, framing: Framing, keep: &mut Option<Vec<u8>>) -> anyhow::Result<u64> {
        match framing {
            Framing::None => Ok(0),
            Framing::Length(n) => {
                self.read_exact_body(n, keep).await?;
                Ok(n)
            }
            Framing::Chunked => {
                let mut total = 0u64;
                // Bounded: a chunk is at least one byte and bodies here are < 1 TiB.
                for _ in 0..(1u64 << 40) {
                    let line = self.read_line().await?;
                    let size_hex = line.split(';').next().unwrap_or("").trim();
                    let size =
                        u64::from_str_radix(size_hex, 16).with_context(|| format!("bad chunk size line {line:?}"))?;
                    if size == 0 {
                        // Trailers, up to the blank line.
                        for _ in 0..1000 {
                            if self.read_line().await?.is_empty() {
                                return Ok(total);
                            }
                        }
                        bail!("too many trailer lines");
                    }
                    self.read_exact_body(size, keep).await?;
                    total += size;
                    if !self.read_line().await?.is_empty() {
                        bail!("chunk not followed by CRLF");
                    }
                }
                bail!("too many chunks")
            }
            Framing::UntilClose => {
                let mut total = 0u64;
                loop {
                    if self.pos < self.end {
                        let n = self.end - self.pos;
                        if let Some(v) = keep.as_mut() {
                            v.extend_from_slice(&self.buf[self.pos..self.end]);
                        }
                        total += n as u64;
                        self.pos = self.end;
                    }
                    if self.fill().await? == 0 {
                        return Ok(total);
                    }
                }
            }
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Parsed status line and headers.
struct Head {
    status: u16,
    headers: Vec<(String, String)>,
    http10: bool,
}

fn parse_head(text: &str) -> anyhow::Result<Head> {
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        bail!("not an HTTP/1.x response: {status_line:?}");
    }
    let status: u16 = parts
        .next()
        .unwrap_or("")
        .parse()
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let mut headers = Vec::new();
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    Ok(Head {
        status,
        headers,
        http10: version == "HTTP/1.0",
    })
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Host and port of `url` as "host:port", if the host is a loopback address.
pub fn loopback_authority(url: &Url) -> anyhow::Result<String> {
    let host = url.host_str().context("URL without host")?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = bare == "localhost" || bare.parse::<IpAddr>().map(|ip| ip.is_loopback()).unwrap_or(false);
    if !loopback {
        bail!("refusing to contact non-loopback host {host:?} ({url})");
    }
    let port = url.port_or_known_default().context("URL without port")?;
    Ok(format!("{host}:{port}"))
}

/// One client: a keep-alive connection per authority. Not shared between tasks.
#[derive(Default)]
pub struct RawClient {
    conns: Vec<Conn>,
}

impl RawClient {
    pub fn new() -> RawClient {
        RawClient::default()
    }

    /// Sends `method url` with `headers`, follows redirects on loopback, and consumes
    /// the body (kept if `keep_body`).
    pub async fn request(
        &mut self,
        method: &str,
        url: &Url,
        headers: &[(&str, &str)],
        keep_body: bool,
    ) -> anyhow::Result<RawResponse> {
        let mut url = url.clone();
        for redirects in 0..=MAX_REDIRECTS {
            let resp = self.request_once(method, &url, headers, keep_body).await?;
            let is_redirect = matches!(resp.status, 301 | 302 | 303 | 307 | 308);
            match (is_redirect, resp.header("location")) {
                (true, Some(loc)) => {
                    url = url.join(loc).with_context(|| format!("bad Location {loc:?}"))?;
                }
                _ => return Ok(RawResponse { redirects, ..resp }),
            }
        }
        bail!("more than {MAX_REDIRECTS} redirects for {method} {url}")
    }

    async fn request_once(
        &mut self,
        method: &str,
        url: &Url,
        headers: &[(&str, &str)],
        keep_body: bool,
    ) -> anyhow::Result<RawResponse> {
        let authority = loopback_authority(url)?;
        let mut path = url.path().to_owned();
        if let Some(q) = url.query() {
            path.push('?');
            path.push_str(q);
        }
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: berth-bench\r\n");
        for (k, v) in headers {
            req.push_str(k);
            req.push_str(": ");
            req.push_str(v);
            req.push_str("\r\n");
        }
        req.push_str("\r\n");

        // A pooled connection may have been closed by the server meanwhile: one retry
        // on a fresh connection when a reused one fails before any response byte.
        for attempt in 0..2 {
            let (mut conn, reused) = match self.conns.iter().position(|c| c.authority == authority) {
                Some(i) if attempt == 0 => (self.conns.swap_remove(i), true),
                Some(i) => {
                    self.conns.swap_remove(i);
                    (Conn::open(&authority).await?, false)
                }
                None => (Conn::open(&authority).await?, false),
            };
            if let Err(e) = conn.stream.write_all(req.as_bytes()).await {
                if reused {
                    continue;
                }
                return Err(e).context("sending request");
            }
            let head_text = match conn.read_head().await {
                Ok(h) => h,
                Err(e) if reused && conn.pos == 0 && conn.end == 0 => {
                    tracing::debug!(error = %e, "reused connection failed; reconnecting");
                    continue;
                }
                Err(e) => return Err(e),
            };
            let head = parse_head(&head_text)?;
            let no_body =
                method.eq_ignore_ascii_case("HEAD") || head.status < 200 || head.status == 204 || head.status == 304;
            let chunked =
                header(&head.headers, "transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
            let framing = if no_body {
                Framing::None
            } else if chunked {
                Framing::Chunked
            } else if let Some(len) = header(&head.headers, "content-length") {
                Framing::Length(len.parse().with_context(|| format!("bad Content-Length {len:?}"))?)
            } else {
                Framing::UntilClose
            };
            let close = matches!(framing, Framing::UntilClose)
                || head.http10
                || header(&head.headers, "connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
            let mut keep = keep_body.then(Vec::new);
            let body_len = conn.read_body(framing, &mut keep).await?;
            if !close {
                self.conns.push(conn);
            }
            return Ok(RawResponse {
                status: head.status,
                headers: head.headers,
                body_len,
                body: keep,
                redirects: 0,
            });
        }
        bail!("{method} {url}: connection closed twice before a response")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    #[test]
    fn only_loopback_is_contacted() {
        let ok = Url::parse("http://127.0.0.1:5000/v2/").unwrap();
        assert_eq!(loopback_authority(&ok).unwrap(), "127.0.0.1:5000");
        let also = Url::parse("http://127.8.9.10/x").unwrap();
        assert_eq!(loopback_authority(&also).unwrap(), "127.8.9.10:80");
        for bad in ["http://10.0.0.1:5000/", "http://example.com/", "http://192.168.1.1/"] {
            assert!(loopback_authority(&Url::parse(bad).unwrap()).is_err(), "{bad}");
        }
    }

    /// A tiny server answering scripted responses on one connection.
    async fn serve(responses: Vec<Vec<u8>>) -> (Url, tokio::task::JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!("http://{}/", listener.local_addr().unwrap())).unwrap();
        let handle = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut seen = Vec::new();
            let mut buf = vec![0u8; 4096];
            for resp in responses {
                let mut req = Vec::new();
                while find(&req, b"\r\n\r\n").is_none() {
                    let n = sock.read(&mut buf).await.unwrap();
                    assert!(n > 0);
                    req.extend_from_slice(&buf[..n]);
                }
                seen.push(String::from_utf8_lossy(&req).into_owned());
                sock.write_all(&resp).await.unwrap();
            }
            seen
        });
        (url, handle)
    }

    #[tokio::test]
    async fn content_length_chunked_and_head_on_one_connection() {
        let (url, server) = serve(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello".to_vec(),
            b"HTTP/1.1 206 Partial\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\n\r\n".to_vec(),
            b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n".to_vec(),
        ])
        .await;
        let mut c = RawClient::new();
        let r = c.request("GET", &url, &[], true).await.unwrap();
        assert_eq!((r.status, r.body_len, r.body.as_deref()), (200, 5, Some(&b"hello"[..])));
        let r = c.request("GET", &url, &[("Range", "bytes=0-4")], true).await.unwrap();
        assert_eq!((r.status, r.body.as_deref()), (206, Some(&b"abcde"[..])));
        let r = c.request("HEAD", &url, &[], false).await.unwrap();
        assert_eq!(
            (r.status, r.body_len, r.header("content-length")),
            (200, 0, Some("1000"))
        );
        let seen = server.await.unwrap();
        assert!(seen[1].contains("Range: bytes=0-4"), "{}", seen[1]);
        assert!(seen[2].starts_with("HEAD / HTTP/1.1"));
    }

    #[tokio::test]
    async fn redirect_to_non_loopback_is_refused() {
        let (url, _server) = serve(vec![
            b"HTTP/1.1 307 Temporary Redirect\r\nLocation: http://10.1.2.3/x\r\nContent-Length: 0\r\n\r\n".to_vec(),
        ])
        .await;
        let err = RawClient::new().request("GET", &url, &[], false).await.unwrap_err();
        assert!(err.to_string().contains("non-loopback"), "{err}");
    }

    #[tokio::test]
    async fn redirect_on_loopback_is_followed() {
        let (target, _t) = serve(vec![b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec()]).await;
        let redirect =
            format!("HTTP/1.1 307 Temporary Redirect\r\nLocation: {target}blob\r\nContent-Length: 0\r\n\r\n");
        let (url, _s) = serve(vec![redirect.into_bytes()]).await;
        let r = RawClient::new().request("GET", &url, &[], true).await.unwrap();
        assert_eq!((r.status, r.redirects, r.body.as_deref()), (200, 1, Some(&b"ok"[..])));
    }
}
