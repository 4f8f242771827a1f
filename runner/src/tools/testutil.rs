//! Test helpers: hand-built (hostile) archives and a loopback HTTP server that counts.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};

/// One tar entry, written with raw header fields so that hostile names survive.
#[derive(Debug, Clone)]
pub struct TarEntry {
    pub path: String,
    pub kind: tar::EntryType,
    pub mode: u32,
    pub link: String,
    pub data: Vec<u8>,
}

pub fn file(path: &str, mode: u32, data: &[u8]) -> TarEntry {
    TarEntry {
        path: path.into(),
        kind: tar::EntryType::Regular,
        mode,
        link: String::new(),
        data: data.to_vec(),
    }
}

pub fn dir(path: &str) -> TarEntry {
    TarEntry {
        path: path.into(),
        kind: tar::EntryType::Directory,
        mode: 0o755,
        link: String::new(),
        data: Vec::new(),
    }
}

pub fn link(path: &str, kind: tar::EntryType, target: &str) -> TarEntry {
    TarEntry {
        path: path.into(),
        kind,
        mode: 0o777,
        link: target.into(),
        data: Vec::new(),
    }
}

pub fn special(path: &str, kind: tar::EntryType, mode: u32) -> TarEntry {
    TarEntry {
        path: path.into(),
        kind,
        mode,
        link: String::new(),
        data: Vec::new(),
    }
}

/// A tar stream of `entries`; a path or link target longer than the header's 100 bytes is
/// written as GNU tar does: a `K` (link) or `L` (name) entry before, and the header field cut.
pub fn tar_bytes(entries: &[TarEntry]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for e in entries {
        for (long, kind) in [
            (&e.link, tar::EntryType::GNULongLink),
            (&e.path, tar::EntryType::GNULongName),
        ] {
            if long.len() > 100 {
                let mut data = long.as_bytes().to_vec();
                data.push(0);
                builder
                    .append(&extension(kind, data.len() as u64), data.as_slice())
                    .unwrap();
            }
        }
        let mut h = tar::Header::new_gnu();
        {
            let gnu = h.as_gnu_mut().unwrap();
            let (path, link) = (&e.path.as_bytes(), &e.link.as_bytes());
            let (path, link) = (&path[..path.len().min(100)], &link[..link.len().min(100)]);
            gnu.name[..path.len()].copy_from_slice(path);
            gnu.linkname[..link.len()].copy_from_slice(link);
        }
        h.set_entry_type(e.kind);
        h.set_mode(e.mode);
        h.set_size(e.data.len() as u64);
        h.set_cksum();
        builder.append(&h, e.data.as_slice()).unwrap();
    }
    builder.into_inner().unwrap()
}

/// The header of a GNU long-name/long-link or pax extension entry of `size` bytes, named as
/// GNU tar names them.
pub fn extension(kind: tar::EntryType, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    let name: &[u8] = match kind {
        tar::EntryType::XGlobalHeader => b"pax_global_header",
        tar::EntryType::XHeader => b"PaxHeaders/entry",
        _ => b"././@LongLink",
    };
    h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name);
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_size(size);
    h.set_cksum();
    h
}

pub fn tar_gz(entries: &[TarEntry]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar_bytes(entries)).unwrap();
    gz.finish().unwrap()
}

/// A zip with `(name, unix mode, data)` entries, stored or deflated.
pub fn zip_bytes(entries: &[(&str, u32, &[u8])]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, mode, data) in entries {
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .unix_permissions(*mode);
        if name.ends_with('/') {
            w.add_directory(*name, options).unwrap();
        } else {
            w.start_file(*name, options).unwrap();
            w.write_all(data).unwrap();
        }
    }
    w.finish().unwrap().into_inner()
}

pub fn sha256(bytes: &[u8]) -> String {
    crate::outputs::hex(&Sha256::digest(bytes))
}

/// The workspace's one guard for test directories (`bulwark-<tag>-<pid>-<random>`, removed on
/// drop, read-only trees included).
pub use bulwark_sandbox::testutil::TempDir;

/// `f`'s result, which must come within ten seconds: for reads that, done carelessly, wait for
/// ever (a fifo without a writer). On a timeout the test fails and the thread is left behind.
pub fn returns_within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(10))
        .unwrap_or_else(|_| panic!("{what} did not return within 10 s"))
}

/// A fifo at `path` (mode 0600) that no one writes to.
pub fn fifo(path: &Path) {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
}

/// Every entry under `dir`, relative, sorted (symlinks not followed).
pub fn listing(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            out.push(p.strip_prefix(base).unwrap().to_string_lossy().into_owned());
            if std::fs::symlink_metadata(&p).unwrap().is_dir() {
                walk(base, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// What the test server answers on a path.
#[derive(Debug, Clone)]
pub enum Route {
    /// 200 with this body and its Content-Length.
    Body(Vec<u8>),
    /// 200 with this body, no Content-Length, closed at the end.
    Unsized(Vec<u8>),
    /// An empty answer with this status.
    Status(u16),
    /// Content-Length says `declared`, the server sends the body and closes.
    Truncated(Vec<u8>, usize),
    /// Waits, then answers with the body.
    Slow(Duration, Vec<u8>),
    /// 302 to this location.
    Redirect(String),
}

/// A loopback HTTP/1.1 server, one thread per connection, counting requests.
#[derive(Debug)]
pub struct Server {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    routes: Arc<Mutex<HashMap<String, Route>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    pub fn start(ip: &str) -> Server {
        let listener = TcpListener::bind((ip, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let routes: Arc<Mutex<HashMap<String, Route>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (h, r, s) = (hits.clone(), routes.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (h, r) = (h.clone(), r.clone());
                std::thread::spawn(move || serve(conn, &h, &r));
            }
        });
        Server {
            addr,
            hits,
            routes,
            stop,
            thread: Some(thread),
        }
    }

    pub fn route(&self, path: &str, route: Route) -> String {
        self.routes.lock().unwrap().insert(path.to_owned(), route);
        format!("http://{}{path}", self.addr)
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Stops accepting connections and closes the listening socket.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(mut conn: TcpStream, hits: &AtomicUsize, routes: &Mutex<HashMap<String, Route>>) {
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    hits.fetch_add(1, Ordering::SeqCst);
    let text = String::from_utf8_lossy(&request);
    let path = text.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let route = routes.lock().unwrap().get(&path).cloned();
    let head = |status: &str, extra: &str| {
        format!("HTTP/1.1 {status}\r\nConnection: close\r\n{extra}\r\n").into_bytes()
    };
    let _ = match route {
        None => conn.write_all(&head("404 Not Found", "Content-Length: 0\r\n")),
        Some(Route::Body(body)) => conn
            .write_all(&head(
                "200 OK",
                &format!("Content-Length: {}\r\n", body.len()),
            ))
            .and_then(|()| conn.write_all(&body)),
        Some(Route::Unsized(body)) => conn
            .write_all(&head("200 OK", ""))
            .and_then(|()| conn.write_all(&body)),
        Some(Route::Status(code)) => {
            conn.write_all(&head(&format!("{code} Status"), "Content-Length: 0\r\n"))
        }
        Some(Route::Truncated(body, declared)) => conn
            .write_all(&head("200 OK", &format!("Content-Length: {declared}\r\n")))
            .and_then(|()| conn.write_all(&body)),
        Some(Route::Slow(wait, body)) => {
            std::thread::sleep(wait);
            conn.write_all(&head(
                "200 OK",
                &format!("Content-Length: {}\r\n", body.len()),
            ))
            .and_then(|()| conn.write_all(&body))
        }
        Some(Route::Redirect(to)) => conn.write_all(&head(
            "302 Found",
            &format!("Location: {to}\r\nContent-Length: 0\r\n"),
        )),
    };
    let _ = conn.flush();
}
