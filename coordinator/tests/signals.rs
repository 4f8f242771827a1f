//! The `bulwark-coordinator` binary stops cleanly on SIGTERM and SIGINT: it stops accepting,
//! lets the requests in flight finish, and exits 0 (a service manager reads anything else as a
//! crash).
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

fn stops_cleanly_on(signal: Signal) {
    let dir = std::env::temp_dir().join(format!(
        "bulwark-coordinator-signals-{}-{signal}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let state = dir.join("state");
    let bin = env!("CARGO_BIN_EXE_bulwark-coordinator");
    let o = Command::new(bin)
        .args(["init", "--state"])
        .arg(&state)
        .args(["--issuer", "http://127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut child = Command::new(bin)
        .args(["serve", "--listen", "127.0.0.1:0", "--state"])
        .arg(&state)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let addr = loop {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "exited before listening"
        );
        if let Some(a) = line.trim().strip_prefix("listening on ") {
            break a.to_owned();
        }
    };
    // A request in flight when the signal comes: its body is not all sent yet.
    let mut c = TcpStream::connect(&addr).unwrap();
    c.write_all(b"POST /v1/runners/register HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{")
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    kill(Pid::from_raw(i32::try_from(child.id()).unwrap()), signal).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    c.write_all(b"}").unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut answer = Vec::new();
    let _ = c.read_to_end(&mut answer);
    assert!(
        answer.starts_with(b"HTTP/1.1 400"),
        "the request in flight got: {:?}",
        String::from_utf8_lossy(&answer)
    );
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("the coordinator did not stop within 10 s of {signal}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut rest = String::new();
    let _ = stderr.read_to_string(&mut rest);
    assert_eq!(status.code(), Some(0), "{status:?}: {rest}");
    assert!(rest.contains("stopped"), "{rest}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sigterm_drains_the_request_in_flight_and_exits_zero() {
    stops_cleanly_on(Signal::SIGTERM);
}

#[test]
fn sigint_drains_the_request_in_flight_and_exits_zero() {
    stops_cleanly_on(Signal::SIGINT);
}
