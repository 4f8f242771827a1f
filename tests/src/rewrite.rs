//! An HTTP/1.1 proxy on loopback that passes each request to the coordinator and lets a test
//! change an answer on its way back: a coordinator newer than the runner (a field the runner
//! does not know), played by the real coordinator and one edit, with no second build of it.
//!
//! One request per connection: each goes upstream with `connection: close` and comes back
//! with `connection: close`, so the daemon's client opens a connection per request. A request
//! must announce its body's length (the daemon's always do); a chunked one is dropped (the
//! client sees its connection closed). Answers are read whole, so keep them small.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;

/// What a test does with an answer: given the request's method and path and the answer's
/// status and body, `Some(new body)` to replace the body, `None` to pass it as it came.
pub type Rewrite = dyn Fn(&str, &str, u16, &[u8]) -> Option<Vec<u8>> + Send + Sync;

/// The proxy: listen on [`Rewriter::url`], forward to the upstream address.
#[derive(Debug)]
pub struct Rewriter {
    addr: SocketAddr,
}

impl Rewriter {
    /// Starts a proxy to `upstream` (`127.0.0.1:PORT`) that hands every answer to `rewrite`.
    pub fn start(
        upstream: SocketAddr,
        rewrite: impl Fn(&str, &str, u16, &[u8]) -> Option<Vec<u8>> + Send + Sync + 'static,
    ) -> Rewriter {
        assert!(upstream.ip().is_loopback(), "tests proxy to loopback only");
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let rewrite: Arc<Rewrite> = Arc::new(rewrite);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let rewrite = Arc::clone(&rewrite);
                std::thread::spawn(move || {
                    let _ = relay_one(client, upstream, &*rewrite);
                });
            }
        });
        Rewriter { addr }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Reads from `s` until a blank line ends a head; the head and what came after it.
fn read_head(s: &mut TcpStream) -> std::io::Result<(String, Vec<u8>)> {
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).into_owned();
            return Ok((head, got[end + 4..].to_vec()));
        }
        let n = s.read(&mut buf)?;
        if n == 0 || got.len() > 1 << 20 {
            return Err(std::io::Error::other("no head"));
        }
        got.extend_from_slice(&buf[..n]);
    }
}

/// The value of header `name` in `head`.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// `head` without its `connection` and (when `drop_length`) `content-length` headers.
fn strip(head: &str, drop_length: bool) -> String {
    head.lines()
        .filter(|l| {
            let name = l.split(':').next().unwrap_or("").trim();
            !(name.eq_ignore_ascii_case("connection")
                || (drop_length && name.eq_ignore_ascii_case("content-length")))
        })
        .collect::<Vec<_>>()
        .join("\r\n")
}

fn relay_one(
    mut client: TcpStream,
    upstream: SocketAddr,
    rewrite: &Rewrite,
) -> std::io::Result<()> {
    let (head, mut body) = read_head(&mut client)?;
    if header(&head, "transfer-encoding").is_some() {
        return Err(std::io::Error::other("a chunked request"));
    }
    let len: usize = header(&head, "content-length")
        .map_or(Ok(0), str::parse)
        .map_err(std::io::Error::other)?;
    let mut buf = [0u8; 8192];
    while body.len() < len {
        let n = client.read(&mut buf)?;
        if n == 0 {
            return Err(std::io::Error::other("the body ended early"));
        }
        body.extend_from_slice(&buf[..n]);
    }
    let mut parts = head.split(' ');
    let (method, path) = (
        parts.next().unwrap_or("").to_owned(),
        parts.next().unwrap_or("").to_owned(),
    );
    let mut server = TcpStream::connect(upstream)?;
    server.write_all(format!("{}\r\nconnection: close\r\n\r\n", strip(&head, false)).as_bytes())?;
    server.write_all(&body)?;
    let mut answer = Vec::new();
    server.read_to_end(&mut answer)?;
    let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Err(std::io::Error::other("no answer"));
    };
    let answer_head = String::from_utf8_lossy(&answer[..end]).into_owned();
    let answer_body = &answer[end + 4..];
    let status: u16 = answer_head
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let plain = header(&answer_head, "transfer-encoding").is_none();
    let out = match plain
        .then(|| rewrite(&method, &path, status, answer_body))
        .flatten()
    {
        Some(new) => {
            let mut out = format!(
                "{}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                strip(&answer_head, true),
                new.len()
            )
            .into_bytes();
            out.extend_from_slice(&new);
            out
        }
        None => {
            let mut out = format!(
                "{}\r\nconnection: close\r\n\r\n",
                strip(&answer_head, false)
            )
            .into_bytes();
            out.extend_from_slice(answer_body);
            out
        }
    };
    client.write_all(&out)?;
    let _ = client.shutdown(Shutdown::Write);
    Ok(())
}
