//! The small, strict HTTP/1.1 request parser the proxy needs.
//!
//! Only what a proxy must understand: the request line (`CONNECT host:port` or an absolute
//! `http://` URI), header names and values, and enough body framing (`Content-Length` or
//! `chunked`) to forward exactly one request's body and not a byte of the next. Anything
//! ambiguous is refused rather than guessed at: obsolete line folding, control characters,
//! both `Content-Length` and `Transfer-Encoding`, conflicting lengths, codings other than
//! `chunked`, credentials in the URI.

use std::borrow::Cow;

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// The method, e.g. `CONNECT` or `GET`.
    pub method: String,
    /// The request target as sent.
    pub target: String,
    /// `HTTP/1.1` or `HTTP/1.0`.
    pub version: String,
    /// Header fields in order, names as sent.
    pub headers: Vec<(String, String)>,
}

/// How the request body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// A refusal with its HTTP status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRequest {
    /// Status to answer with.
    pub status: u16,
    /// One-line reason.
    pub reason: &'static str,
}

fn bad(reason: &'static str) -> BadRequest {
    BadRequest {
        status: 400,
        reason,
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Finds the end of the head (`\r\n\r\n`) in `buf`, searching from `from`.
pub fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    let start = from.saturating_sub(3);
    buf.get(start..)?
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| start + i + 4)
}

/// Parses a head (including its final blank line).
pub fn parse_head(raw: &[u8], max_headers: usize) -> Result<Head, BadRequest> {
    let text = std::str::from_utf8(raw).map_err(|_| bad("request head is not UTF-8"))?;
    let text = text
        .strip_suffix("\r\n\r\n")
        .ok_or(bad("request head does not end with a blank line"))?;
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("malformed request line"));
    };
    if method.is_empty() || !method.bytes().all(is_tchar) {
        return Err(bad("malformed method"));
    }
    if target.is_empty() || !target.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad("malformed request target"));
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(BadRequest {
            status: 505,
            reason: "only HTTP/1.0 and HTTP/1.1 are supported",
        });
    }
    let mut headers = Vec::new();
    for line in lines {
        if headers.len() >= max_headers {
            return Err(BadRequest {
                status: 431,
                reason: "too many header fields",
            });
        }
        if line.contains('\n') || line.contains('\r') {
            return Err(bad("bare CR or LF in the request head"));
        }
        let (name, value) = line.split_once(':').ok_or(bad("malformed header field"))?;
        if name.is_empty() || !name.bytes().all(is_tchar) {
            return Err(bad("malformed header name (or obsolete line folding)"));
        }
        let value = value.trim_matches([' ', '\t']);
        if value.bytes().any(|b| b != b'\t' && (b < 0x20 || b == 0x7f)) {
            return Err(bad("control character in a header value"));
        }
        headers.push((name.to_owned(), value.to_owned()));
    }
    Ok(Head {
        method: method.to_owned(),
        target: target.to_owned(),
        version: version.to_owned(),
        headers,
    })
}

impl Head {
    /// Values of every field named `name` (case-insensitive).
    pub fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body framing, refusing the shapes request smuggling is made of.
    pub fn framing(&self) -> Result<Framing, BadRequest> {
        let te: Vec<&str> = self.values("transfer-encoding").collect();
        let cl: Vec<&str> = self.values("content-length").collect();
        if !te.is_empty() {
            if !cl.is_empty() {
                return Err(bad("both Content-Length and Transfer-Encoding"));
            }
            // HTTP/1.0 has no chunked coding (RFC 9112 6.1: such framing is faulty); an origin
            // that ignores it would read the chunks as a request of their own.
            if self.version != "HTTP/1.1" {
                return Err(bad("Transfer-Encoding in an HTTP/1.0 request"));
            }
            if te.len() == 1 && te[0].eq_ignore_ascii_case("chunked") {
                return Ok(Framing::Chunked);
            }
            return Err(BadRequest {
                status: 501,
                reason: "only Transfer-Encoding: chunked is supported",
            });
        }
        let mut length = None;
        for v in cl {
            let n: u64 = match v.parse() {
                Ok(n) if v.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => return Err(bad("malformed Content-Length")),
            };
            if length.is_some_and(|l| l != n) {
                return Err(bad("conflicting Content-Length values"));
            }
            length = Some(n);
        }
        Ok(match length {
            None | Some(0) => Framing::None,
            Some(n) => Framing::Length(n),
        })
    }
}

/// Splits `host:port` or `[v6]:port`; `default_port` applies when there is no port.
pub fn split_authority(authority: &str, default_port: Option<u16>) -> Option<(&str, u16)> {
    if authority.contains('@') {
        return None;
    }
    let (host, port) = if authority.starts_with('[') {
        let end = authority.find(']')?;
        let rest = &authority[end + 1..];
        let port = if rest.is_empty() {
            None
        } else {
            Some(rest.strip_prefix(':')?)
        };
        (&authority[..=end], port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, _)) if h.contains(':') => return None,
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port = match port {
        None => default_port?,
        Some(p) if !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => {
            p.parse().ok().filter(|&p| p != 0)?
        }
        Some(_) => return None,
    };
    (!host.is_empty()).then_some((host, port))
}

/// Splits an absolute `http://authority/path?query` into authority and origin-form path. The
/// path always starts with `/`: `http://a?x=1` becomes `/?x=1` (RFC 9112, 3.2.1: an empty
/// path is sent as `/`), never a request line `GET ?x=1` that origins read differently.
pub fn split_absolute_uri(target: &str) -> Result<(&str, Cow<'_, str>), BadRequest> {
    let scheme_end = target.find("://").ok_or(bad(
        "a proxy request needs an absolute http:// URI (or CONNECT for https)",
    ))?;
    if !target[..scheme_end].eq_ignore_ascii_case("http") {
        return Err(bad(
            "only http:// URIs are forwarded; use CONNECT for https",
        ));
    }
    let rest = &target[scheme_end + 3..];
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    let path = path.split('#').next().unwrap_or_default();
    let path = if path.starts_with('/') {
        Cow::Borrowed(path)
    } else {
        Cow::Owned(format!("/{path}"))
    };
    Ok((authority, path))
}

/// Tracks where a chunked body ends while its bytes pass through unchanged.
///
/// Trailer lines must be fields (`name: value`, the name a token) and not the framing or
/// routing ones (`Content-Length`, `Transfer-Encoding`, `Host`, ...): an origin that merges
/// trailers into the head, or reads a line that is no field as the start of something else,
/// would otherwise be told what this proxy never checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkedTracker {
    state: Chunk,
    line_len: usize,
    /// The trailer line so far: its field name, up to the colon (lower case).
    trailer_name: Vec<u8>,
    /// Whether the current trailer line has reached its colon.
    trailer_colon: bool,
}

/// Fields a trailer may not carry (RFC 9110 §6.5.1: framing, routing, and what a request
/// head alone decides).
const FORBIDDEN_TRAILERS: &[&[u8]] = &[
    b"content-length",
    b"transfer-encoding",
    b"host",
    b"te",
    b"trailer",
    b"connection",
    b"keep-alive",
    b"upgrade",
    b"expect",
    b"content-encoding",
    b"content-type",
    b"content-range",
    b"authorization",
    b"proxy-authorization",
    b"cookie",
    b"set-cookie",
    b"max-forwards",
    b"cache-control",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Size { size: u64, digits: u8, ext: bool },
    SizeLf { size: u64 },
    Data(u64),
    DataCr,
    DataLf,
    Trailer,
    TrailerLf { empty: bool },
    Done,
}

/// Longest chunk-size or trailer line accepted.
const MAX_CHUNK_LINE: usize = 4096;

impl Default for ChunkedTracker {
    fn default() -> Self {
        ChunkedTracker {
            state: Chunk::Size {
                size: 0,
                digits: 0,
                ext: false,
            },
            line_len: 0,
            trailer_name: Vec::new(),
            trailer_colon: false,
        }
    }
}

impl ChunkedTracker {
    /// Whether the whole body (last chunk and trailers) has been seen.
    pub fn done(&self) -> bool {
        self.state == Chunk::Done
    }

    /// Consumes body bytes from `data`; returns how many belong to the body (stops at its end).
    pub fn feed(&mut self, data: &[u8]) -> Result<usize, BadRequest> {
        let malformed = || bad("malformed chunked body");
        let mut i = 0;
        while i < data.len() {
            if let Chunk::Data(n) = self.state {
                let take = n.min((data.len() - i) as u64);
                i += take as usize;
                self.state = if n == take {
                    Chunk::DataCr
                } else {
                    Chunk::Data(n - take)
                };
                continue;
            }
            let b = data[i];
            i += 1;
            self.line_len += 1;
            if self.line_len > MAX_CHUNK_LINE {
                return Err(malformed());
            }
            // A chunk extension or trailer line holds no control byte but HTAB: a bare LF
            // there would end the line for a lenient origin and not for this parser, which
            // could then be sent bytes it takes for a request of their own.
            if matches!(self.state, Chunk::Size { ext: true, .. } | Chunk::Trailer)
                && b != b'\r'
                && b != b'\t'
                && (b < 0x20 || b == 0x7f)
            {
                return Err(malformed());
            }
            self.state = match self.state {
                Chunk::Size { .. }
                | Chunk::Trailer
                | Chunk::TrailerLf { .. }
                | Chunk::SizeLf { .. }
                    if b == b'\r' =>
                {
                    match self.state {
                        Chunk::Size { size, digits, .. } if digits > 0 => Chunk::SizeLf { size },
                        Chunk::Trailer => {
                            let empty = self.line_len == 1;
                            if !empty && !self.trailer_colon {
                                // Not a field: no colon after a name.
                                return Err(malformed());
                            }
                            Chunk::TrailerLf { empty }
                        }
                        _ => return Err(malformed()),
                    }
                }
                Chunk::Size { size, digits, ext } => {
                    if ext || b == b';' {
                        if digits == 0 {
                            return Err(malformed());
                        }
                        Chunk::Size {
                            size,
                            digits,
                            ext: true,
                        }
                    } else {
                        let d = (b as char).to_digit(16).ok_or_else(malformed)?;
                        if digits >= 15 {
                            return Err(malformed());
                        }
                        Chunk::Size {
                            size: size * 16 + u64::from(d),
                            digits: digits + 1,
                            ext: false,
                        }
                    }
                }
                Chunk::SizeLf { size } if b == b'\n' => {
                    self.line_len = 0;
                    if size == 0 {
                        Chunk::Trailer
                    } else {
                        Chunk::Data(size)
                    }
                }
                Chunk::DataCr if b == b'\r' => Chunk::DataLf,
                Chunk::DataLf if b == b'\n' => {
                    self.line_len = 0;
                    Chunk::Size {
                        size: 0,
                        digits: 0,
                        ext: false,
                    }
                }
                Chunk::Trailer => {
                    if !self.trailer_colon {
                        if b == b':' {
                            let name = self.trailer_name.as_slice();
                            if name.is_empty() || FORBIDDEN_TRAILERS.contains(&name) {
                                return Err(malformed());
                            }
                            self.trailer_colon = true;
                        } else if is_tchar(b) {
                            self.trailer_name.push(b.to_ascii_lowercase());
                        } else {
                            return Err(malformed());
                        }
                    }
                    Chunk::Trailer
                }
                Chunk::TrailerLf { empty } if b == b'\n' => {
                    self.line_len = 0;
                    self.trailer_name.clear();
                    self.trailer_colon = false;
                    if empty {
                        self.state = Chunk::Done;
                        return Ok(i);
                    }
                    Chunk::Trailer
                }
                _ => return Err(malformed()),
            };
        }
        Ok(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_parse_and_bad_shapes_are_refused() {
        let h = parse_head(
            b"GET http://a.test/x HTTP/1.1\r\nHost: a.test\r\nX:  y \r\n\r\n",
            10,
        )
        .unwrap();
        assert_eq!(h.method, "GET");
        assert_eq!(h.headers[1], ("X".into(), "y".into()));
        for raw in [
            &b"GET  http://a/ HTTP/1.1\r\n\r\n"[..],
            b"GET http://a/ HTTP/2\r\n\r\n",
            b"GET http://a/ HTTP/1.1\r\n folded\r\n\r\n",
            b"GET http://a/ HTTP/1.1\r\nA: b\nC: d\r\n\r\n",
            b"GET http://a/ HTTP/1.1\r\nA: \x01\r\n\r\n",
            b"\xff\r\n\r\n",
        ] {
            assert!(
                parse_head(raw, 10).is_err(),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
        let many = format!("GET http://a/ HTTP/1.1\r\n{}\r\n", "A: b\r\n".repeat(11));
        assert_eq!(parse_head(many.as_bytes(), 10).unwrap_err().status, 431);
    }

    #[test]
    fn framing_refuses_smuggling_shapes() {
        let f = |extra: &str| {
            parse_head(
                format!("POST http://a/ HTTP/1.1\r\n{extra}\r\n").as_bytes(),
                10,
            )
            .unwrap()
            .framing()
        };
        assert_eq!(f("Content-Length: 5\r\n"), Ok(Framing::Length(5)));
        assert_eq!(f("Transfer-Encoding: Chunked\r\n"), Ok(Framing::Chunked));
        assert_eq!(f(""), Ok(Framing::None));
        assert!(f("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n").is_err());
        assert!(f("Content-Length: 5\r\nContent-Length: 6\r\n").is_err());
        assert!(f("Content-Length: +5\r\n").is_err());
        let head10 = parse_head(
            b"POST http://a/ HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            10,
        )
        .unwrap();
        assert_eq!(head10.framing().unwrap_err().status, 400);
        assert_eq!(
            f("Transfer-Encoding: gzip, chunked\r\n")
                .unwrap_err()
                .status,
            501
        );
    }

    #[test]
    fn authorities_and_uris_split() {
        assert_eq!(split_authority("a.test:443", None), Some(("a.test", 443)));
        assert_eq!(split_authority("[::1]:80", None), Some(("[::1]", 80)));
        assert_eq!(split_authority("a.test", Some(80)), Some(("a.test", 80)));
        assert_eq!(split_authority("a.test", None), None);
        assert_eq!(split_authority("a.test:0", None), None);
        assert_eq!(split_authority("a.test:99999", None), None);
        assert_eq!(split_authority("::1:80", None), None);
        assert_eq!(split_authority("u@a.test:80", None), None);
        assert_eq!(
            split_absolute_uri("http://a.test:8080/p?q#f"),
            Ok(("a.test:8080", "/p?q".into()))
        );
        assert_eq!(
            split_absolute_uri("HTTP://a.test"),
            Ok(("a.test", "/".into()))
        );
        assert_eq!(
            split_absolute_uri("http://a.test#f"),
            Ok(("a.test", "/".into()))
        );
        assert_eq!(
            split_absolute_uri("http://a.test:8080?x=1"),
            Ok(("a.test:8080", "/?x=1".into()))
        );
        assert_eq!(
            split_absolute_uri("http://a.test?x=1#f"),
            Ok(("a.test", "/?x=1".into()))
        );
        assert!(split_absolute_uri("https://a.test/").is_err());
        assert!(split_absolute_uri("/relative").is_err());
    }

    #[test]
    fn chunked_bodies_end_exactly_where_they_should() {
        let body = b"5;ext=1\r\nhello\r\n0\r\nX-Trailer: x\r\n\r\nGET http://next/";
        let mut t = ChunkedTracker::default();
        let n = t.feed(body).unwrap();
        assert!(t.done());
        assert_eq!(&body[n..], b"GET http://next/");
        // Byte by byte gives the same answer.
        let mut t = ChunkedTracker::default();
        let mut consumed = 0;
        for b in body.iter() {
            if t.done() {
                break;
            }
            consumed += t.feed(std::slice::from_ref(b)).unwrap();
        }
        assert_eq!(consumed, n);
        assert!(ChunkedTracker::default().feed(b"zz\r\n").is_err());
        assert!(ChunkedTracker::default().feed(b"5\r\nhelloXX").is_err());
        assert!(ChunkedTracker::default().feed(&[b'1'; 20]).is_err());
    }

    /// A bare LF (or another control byte) in a chunk extension or a trailer would end the
    /// line for a lenient origin: what follows could be taken there for a request of its own.
    #[test]
    fn control_bytes_in_chunk_extensions_and_trailers_are_refused() {
        for body in [
            &b"0\r\n\nGET /x HTTP/1.1\r\nHost: other\r\n\r\n"[..],
            b"0\r\nX: a\nGET /x HTTP/1.1\r\n\r\n",
            b"5;a\nb\r\nhello\r\n0\r\n\r\n",
            b"5;a\x00\r\nhello\r\n0\r\n\r\n",
            b"0\r\nX: \x7f\r\n\r\n",
        ] {
            assert!(
                ChunkedTracker::default().feed(body).is_err(),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
        // HTAB is allowed where whitespace is.
        let mut t = ChunkedTracker::default();
        t.feed(b"5;a=\tb\r\nhello\r\n0\r\nX:\ty\r\n\r\n").unwrap();
        assert!(t.done());
    }

    /// A trailer line must be a field, and not one that frames or routes the request: a line
    /// that is none (a request line) or a `Content-Length` would reach an origin that may
    /// read it as part of the head.
    #[test]
    fn trailer_lines_must_be_fields_and_not_framing_ones() {
        for body in [
            &b"0\r\nGET /smug HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"0\r\nno colon here\r\n\r\n",
            b"0\r\n: empty name\r\n\r\n",
            b"0\r\nX y: z\r\n\r\n",
            b"0\r\nContent-Length: 5\r\n\r\n",
            b"0\r\ntransfer-ENCODING: chunked\r\n\r\n",
            b"0\r\nHost: other.test\r\n\r\n",
            b"0\r\nX: 1\r\nAuthorization: Basic eA==\r\n\r\n",
        ] {
            assert!(
                ChunkedTracker::default().feed(body).is_err(),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
        // Fields, split anywhere across reads, and a value holding a colon.
        let body = b"3\r\nabc\r\n0\r\nX-Checksum-Sha256: a:b\r\nDigest: sha-256=x\r\n\r\n";
        for cut in 0..body.len() {
            let mut t = ChunkedTracker::default();
            let n = t.feed(&body[..cut]).unwrap() + t.feed(&body[cut..]).unwrap();
            assert_eq!(n, body.len(), "cut at {cut}");
            assert!(t.done(), "cut at {cut}");
        }
    }
}
