//! A `moto_server` child process on 127.0.0.1, for integration tests and the local demo.
//!
//! Invariants: the server listens on loopback only, on a port picked free at start; it is
//! killed when the [`Moto`] value is dropped, so no test leaves a process behind.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long `moto_server` may take to accept connections after spawn.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running `moto_server`. Dropping it kills the process.
pub struct Moto {
    child: Child,
    port: u16,
}

/// The `moto_server` executable: `$MOTO_SERVER`, else the project's `.venv` (made by `make venv`).
pub fn moto_server_path() -> PathBuf {
    if let Some(path) = std::env::var_os("MOTO_SERVER") {
        return PathBuf::from(path);
    }
    workspace_root().join(".venv/bin/moto_server")
}

/// The workspace root (the folder that holds the top-level `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// A TCP port that was free on 127.0.0.1 a moment ago.
pub fn free_port() -> std::io::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

impl Moto {
    /// Spawns `moto_server` on a free loopback port and waits until it answers.
    pub fn start() -> std::io::Result<Moto> {
        let path = moto_server_path();
        if !path.exists() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{} not found: run `make venv` (or set MOTO_SERVER)", path.display()),
            ));
        }
        let port = free_port()?;
        let child = Command::new(&path)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let moto = Moto { child, port };
        moto.wait_ready()?;
        Ok(moto)
    }

    fn wait_ready(&self) -> std::io::Result<()> {
        let started = Instant::now();
        loop {
            if self.http("GET", "/moto-api/").is_ok() {
                return Ok(());
            }
            if started.elapsed() > START_TIMEOUT {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "moto_server did not start in time",
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The endpoint to give the SDK as `AWS_ENDPOINT_URL`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The TCP port moto listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Clears every resource (`POST /moto-api/reset`).
    pub fn reset(&self) -> std::io::Result<()> {
        self.http("POST", "/moto-api/reset").map(|_| ())
    }

    /// An SDK config pointed at this server, with dummy credentials and `us-east-1`.
    pub async fn sdk_config(&self) -> aws_config::SdkConfig {
        sdk_config_for(&self.endpoint()).await
    }

    /// A minimal HTTP/1.1 request on a fresh connection; returns the status line.
    fn http(&self, method: &str, path: &str) -> std::io::Result<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let status = response.lines().next().unwrap_or_default().to_string();
        if status.contains(" 200 ") {
            Ok(status)
        } else {
            Err(std::io::Error::other(format!("{method} {path}: {status}")))
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An SDK config for a local endpoint, with dummy credentials and `us-east-1`.
pub async fn sdk_config_for(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_sqs::config::Credentials::new("test", "test", None, None, "sfn-pacer-tests"))
        .load()
        .await
}
