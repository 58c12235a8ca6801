//! Running orgkeeper's own servers as child processes, the way a user starts them.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;

/// A child process, stopped when dropped.
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The key (`OSO_AUTH`) of a Secret manifest written by `orgkeeper apply`.
pub fn key_from(secret_file: &Path) -> String {
    let yaml = std::fs::read_to_string(secret_file).unwrap();
    let secret: Secret = serde_norway::from_str(&yaml).unwrap();
    let data = secret.data.unwrap();
    String::from_utf8(data["OSO_AUTH"].0.clone()).unwrap()
}

/// Polls `GET /readyz` on the metrics port until it answers 200; panics with the log if the process exits.
pub fn wait_ready(what: &str, metrics_port: u16, child: &mut Child, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "{what} exited ({status}):\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", metrics_port)) {
            let _ = stream.write_all(b"GET /readyz HTTP/1.0\r\nHost: localhost\r\n\r\n");
            let mut answer = String::new();
            let _ = stream.read_to_string(&mut answer);
            if answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200") {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what} did not become ready within 60 s");
}
