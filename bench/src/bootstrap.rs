//! The release bootstrap: its size, its init-to-ready time under a local Lambda Runtime API,
//! and its peak RSS after a few invocations.
//!
//! The Runtime API here is a minimal HTTP/1.1 server on 127.0.0.1 (keep-alive, Content-Length
//! or chunked bodies): `GET /2018-06-01/runtime/invocation/next` hands out queued events and
//! then holds the request open (as Lambda does between invocations); `POST …/response` and
//! `…/error` are acknowledged with 202. The bootstrap's StartExecution calls go to a fake
//! Step Functions endpoint without a quota.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use local_stack::fake_sfn::{FakeSfn, FakeSfnHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};

use crate::common::{BenchError, Runtimes, STATE_MACHINE_ARN};
use crate::cost::event_json;
use crate::cpu;

/// How long the bootstrap may take to ask for its first event.
const INIT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the invocations of the RSS run may take in all.
const INVOKE_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest request the Runtime API accepts, bytes.
const MAX_REQUEST_BYTES: usize = 8 << 20;

#[derive(Default)]
struct ApiState {
    events: VecDeque<String>,
    next_id: u64,
    first_next: Option<Instant>,
    /// `next` requests received.
    nexts: u64,
    responses: Vec<String>,
    errors: Vec<String>,
}

/// A local Lambda Runtime API.
struct RuntimeApi {
    addr: std::net::SocketAddr,
    state: Arc<Mutex<ApiState>>,
    /// Notified on every request.
    activity: Arc<Notify>,
    stop: watch::Sender<bool>,
}

impl RuntimeApi {
    async fn start() -> Result<RuntimeApi, BenchError> {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(|e| format!("binding the Runtime API: {e}"))?;
        let addr = listener.local_addr().map_err(|e| format!("Runtime API address: {e}"))?;
        let state = Arc::new(Mutex::new(ApiState::default()));
        let activity = Arc::new(Notify::new());
        let (stop, stopped) = watch::channel(false);
        let (s, a) = (state.clone(), activity.clone());
        tokio::spawn(async move {
            let mut stopped_accept = stopped.clone();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else {
                            // E.g. out of file descriptors: back off instead of spinning.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        };
                        tokio::spawn(serve(stream, s.clone(), a.clone(), stopped.clone()));
                    }
                    _ = stopped_accept.changed() => break,
                }
            }
        });
        Ok(RuntimeApi {
            addr,
            state,
            activity,
            stop,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ApiState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until `done(state)` holds, or `timeout` passes (then errs with `what`).
    async fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&ApiState) -> bool,
    ) -> Result<(), BenchError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.activity.notified();
            if done(&self.lock()) {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(format!("timed out waiting for {what}").into());
            }
        }
    }
}

impl Drop for RuntimeApi {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// One parsed request.
struct Request {
    method: String,
    path: String,
    body: Vec<u8>,
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Decodes a chunked body that is complete in `data`: `Some((body, bytes used))`.
fn dechunk(data: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let line_end = at + find(&data[at..], b"\r\n")?;
        let size_text = std::str::from_utf8(&data[at..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        at = line_end + 2;
        if size == 0 {
            // No trailers: an empty line; else trailer lines, then an empty line.
            let end = if data[at..].starts_with(b"\r\n") {
                at + 2
            } else {
                at + find(&data[at..], b"\r\n\r\n")? + 4
            };
            return Some((body, end));
        }
        if data.len() < at + size + 2 {
            return None;
        }
        body.extend_from_slice(&data[at..at + size]);
        at += size + 2;
    }
}

/// Reads one request from `buffer` + the stream. `Ok(None)` when the peer closed.
async fn read_request(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> std::io::Result<Option<Request>> {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(head_end) = find(buffer, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..head_end]).to_string();
            let mut lines = head.split("\r\n");
            let mut first = lines.next().unwrap_or_default().split_whitespace();
            let method = first.next().unwrap_or_default().to_string();
            let path = first.next().unwrap_or_default().to_string();
            let mut length = 0usize;
            let mut chunked = false;
            for line in lines {
                let Some((name, value)) = line.split_once(':') else {
                    continue;
                };
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                } else if name.eq_ignore_ascii_case("transfer-encoding")
                    && value.to_ascii_lowercase().contains("chunked")
                {
                    chunked = true;
                }
            }
            let body_start = head_end + 4;
            if chunked {
                if let Some((body, used)) = dechunk(&buffer[body_start..]) {
                    buffer.drain(..body_start + used);
                    return Ok(Some(Request { method, path, body }));
                }
            } else if buffer.len() >= body_start + length {
                let body = buffer[body_start..body_start + length].to_vec();
                buffer.drain(..body_start + length);
                return Ok(Some(Request { method, path, body }));
            }
        }
        if buffer.len() > MAX_REQUEST_BYTES {
            return Err(std::io::Error::other("request too large"));
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
}

async fn write_response(
    stream: &mut TcpStream,
    status: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nContent-Type: application/json\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    stream.flush().await
}

/// Serves one connection until the peer closes it, an error, or the API stops.
async fn serve(
    mut stream: TcpStream,
    state: Arc<Mutex<ApiState>>,
    activity: Arc<Notify>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut buffer = Vec::new();
    loop {
        let request = tokio::select! {
            r = read_request(&mut stream, &mut buffer) => r,
            _ = stopped.changed() => return,
        };
        let Ok(Some(request)) = request else { return };
        let lock = || state.lock().unwrap_or_else(|p| p.into_inner());
        let result = if request.method == "GET" && request.path == "/2018-06-01/runtime/invocation/next" {
            let event = {
                let mut s = lock();
                s.nexts += 1;
                if s.first_next.is_none() {
                    s.first_next = Some(Instant::now());
                }
                s.next_id += 1;
                s.events.pop_front().map(|e| (e, s.next_id))
            };
            activity.notify_waiters();
            match event {
                Some((event, id)) => {
                    let deadline = sfn_pacer::handler::now_epoch_ms() + 30_000;
                    let headers = vec![
                        ("Lambda-Runtime-Aws-Request-Id".to_string(), format!("req-{id}")),
                        ("Lambda-Runtime-Deadline-Ms".to_string(), deadline.to_string()),
                        (
                            "Lambda-Runtime-Invoked-Function-Arn".to_string(),
                            "arn:aws:lambda:us-east-1:123456789012:function:starter".to_string(),
                        ),
                        (
                            "Lambda-Runtime-Trace-Id".to_string(),
                            format!("Root=1-00000000-{id:024x};Sampled=0"),
                        ),
                    ];
                    write_response(&mut stream, "200 OK", &headers, event.as_bytes()).await
                }
                // Nothing to do: hold the request open, as Lambda does, until the API stops.
                None => {
                    let _ = stopped.changed().await;
                    return;
                }
            }
        } else if request.method == "POST" && request.path.starts_with("/2018-06-01/runtime/") {
            {
                let mut s = lock();
                let body = String::from_utf8_lossy(&request.body).to_string();
                if request.path.ends_with("/response") {
                    s.responses.push(body);
                } else {
                    s.errors.push(format!("{}: {body}", request.path));
                }
            }
            activity.notify_waiters();
            write_response(&mut stream, "202 Accepted", &[], br#"{"status":"OK"}"#).await
        } else {
            write_response(&mut stream, "404 Not Found", &[], b"{}").await
        };
        if result.is_err() {
            return;
        }
    }
}

/// The bootstrap's measurements.
#[derive(Debug, Clone)]
pub struct BootstrapResult {
    /// The binary measured.
    pub path: PathBuf,
    /// Its size, bytes.
    pub size_bytes: u64,
    /// Spawn to the first `GET …/next`, milliseconds, one per run.
    pub init_ms: Vec<f64>,
    /// Invocations served in the RSS run (batches of 10 messages).
    pub invocations: u64,
    /// Executions the fake endpoint recorded during those invocations.
    pub started: u64,
    /// Peak resident set (VmHWM) after those invocations, kibibytes.
    pub peak_rss_kib: u64,
    /// Resident set (VmRSS) then, kibibytes.
    pub rss_kib: u64,
}

/// A child killed and reaped when dropped.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(exe: &Path, api: std::net::SocketAddr, sfn_endpoint: &str) -> Result<Reaped, BenchError> {
    let child = Command::new(exe)
        .env_clear()
        .env("AWS_LAMBDA_RUNTIME_API", api.to_string())
        .env("AWS_LAMBDA_FUNCTION_NAME", "starter")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_LAMBDA_LOG_STREAM_NAME", "bench")
        .env("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/starter")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_ENDPOINT_URL", sfn_endpoint)
        .env("STATE_MACHINE_ARN", STATE_MACHINE_ARN)
        .env("STARTS_PER_SECOND", "300")
        .env("STARTS_BURST", "1300")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("spawning {}: {e}", exe.display()))?;
    Ok(Reaped(child))
}

/// Measures `exe`: `init_runs` cold starts, then one run of `invocations` invocations.
pub fn measure(
    runtimes: &Runtimes,
    exe: &Path,
    init_runs: usize,
    invocations: u64,
) -> Result<BootstrapResult, BenchError> {
    let size_bytes = std::fs::metadata(exe)
        .map_err(|e| {
            format!(
                "{}: {e} (build it with `cargo build --release -p starter`)",
                exe.display()
            )
        })?
        .len();
    let sfn: FakeSfnHandle = runtimes
        .server
        .block_on(FakeSfn::builder().start())
        .map_err(|e| format!("starting the fake Step Functions endpoint: {e}"))?;
    let result = runtimes.client.block_on(async {
        let mut init_ms = Vec::with_capacity(init_runs);
        for _ in 0..init_runs {
            let api = RuntimeApi::start().await?;
            let spawned = Instant::now();
            let child = spawn(exe, api.addr, &sfn.endpoint())?;
            api.wait_for(INIT_TIMEOUT, "the bootstrap's first `next` request", |s| {
                s.first_next.is_some()
            })
            .await?;
            let first = api.lock().first_next.unwrap_or_else(Instant::now);
            init_ms.push((first - spawned).as_secs_f64() * 1e3);
            drop(child);
        }

        let api = RuntimeApi::start().await?;
        api.lock().events = (0..invocations).map(|i| event_json(i * 10, 10)).collect();
        let child = spawn(exe, api.addr, &sfn.endpoint())?;
        // Done when the bootstrap asks for the event after the last one.
        api.wait_for(INVOKE_TIMEOUT, "the invocations", |s| {
            s.nexts > invocations || !s.errors.is_empty()
        })
        .await?;
        let pid = child.0.id();
        let peak_rss_kib = cpu::proc_status_kib(pid, "VmHWM")?;
        let rss_kib = cpu::proc_status_kib(pid, "VmRSS")?;
        {
            let s = api.lock();
            if let Some(e) = s.errors.first() {
                return Err(format!("the bootstrap reported an error: {e}").into());
            }
            let failed = s.responses.iter().filter(|r| r.contains("itemIdentifier")).count();
            if failed > 0 {
                return Err(format!("{failed} invocations reported failed messages").into());
            }
        }
        drop(child);
        let started = sfn.execution_count() as u64;
        Ok(BootstrapResult {
            path: exe.to_path_buf(),
            size_bytes,
            init_ms,
            invocations,
            started,
            peak_rss_kib,
            rss_kib,
        })
    });
    runtimes.server.block_on(sfn.shutdown());
    result
}

/// The ELF machine of a binary (`x86_64`, `aarch64`), from its header.
pub fn elf_machine(path: &Path) -> Option<&'static str> {
    use std::io::Read;
    let mut bytes = [0u8; 20];
    std::fs::File::open(path).ok()?.read_exact(&mut bytes).ok()?;
    if &bytes[..4] != b"\x7fELF" {
        return None;
    }
    match u16::from_le_bytes([bytes[18], bytes[19]]) {
        0x3e => Some("x86_64"),
        0xb7 => Some("aarch64"),
        _ => Some("other"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_decode() {
        assert_eq!(
            dechunk(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"),
            Some((b"abcde".to_vec(), 20))
        );
        assert_eq!(dechunk(b"3\r\nabc\r\n"), None, "incomplete");
        assert_eq!(
            dechunk(b"0\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some((Vec::new(), 5)),
            "the next request is not a trailer"
        );
        assert_eq!(
            dechunk(b"1\r\nz\r\n0\r\nX-T: 1\r\n\r\n"),
            Some((b"z".to_vec(), 19)),
            "trailers"
        );
    }
}
