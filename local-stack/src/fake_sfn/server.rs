//! The HTTP side: accept loop, one hyper HTTP/1.1 connection task per TCP connection, and the
//! request handler that carries out the [`Plan`] decided by the state.
//!
//! Connection resets: each connection task keeps a duplicate of the socket's file descriptor.
//! To reset, the handler wakes the task, which drops the hyper connection (closing one
//! descriptor), sets `SO_LINGER` to 0 on the duplicate and drops it, so the kernel sends RST
//! instead of FIN and no HTTP response is ever written.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use socket2::SockRef;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinSet;

use super::state::{ErrorKind, FakeSfnState, Plan, Reply};

/// The largest request body read, in bytes (inputs over 256 KiB must still reach validation).
const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// Pause after a failed `accept` (e.g. out of file descriptors), in milliseconds.
const ACCEPT_BACKOFF_MS: u64 = 10;

/// Accepts connections until `shutdown` fires or its sender is dropped. Returning drops the
/// `JoinSet`, which aborts every connection task.
pub(crate) async fn serve(listener: TcpListener, state: FakeSfnState, mut shutdown: oneshot::Receiver<()>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    connections.spawn(serve_connection(stream, state.clone()));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(ACCEPT_BACKOFF_MS)).await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Serves one TCP connection (keep-alive) until the client closes it, or a handler asks for a
/// reset.
async fn serve_connection(stream: TcpStream, state: FakeSfnState) {
    let _ = stream.set_nodelay(true);
    // A duplicate descriptor of the same socket, used only to force an RST on reset.
    let duplicate = SockRef::from(&stream).try_clone().ok();
    let reset = Arc::new(Notify::new());
    let service = {
        let reset = reset.clone();
        hyper::service::service_fn(move |request| handle(state.clone(), reset.clone(), request))
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    // No header-read timeout: an idle keep-alive connection is never closed by the server, so
    // a pooled client connection never races a server-side close (no spurious errors).
    builder
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(None);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    // `select!` drops both futures (and so the hyper connection and its stream) before
    // running the chosen branch.
    let reset_asked = tokio::select! {
        _ = connection => false,
        _ = reset.notified() => true,
    };
    if let Some(socket) = duplicate {
        if reset_asked {
            let _ = socket.set_linger(Some(Duration::ZERO));
        }
        drop(socket);
    }
}

async fn handle(
    state: FakeSfnState,
    reset: Arc<Notify>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    state.count_request();
    let request_id = state.next_request_id();
    let target = request
        .headers()
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    if request.method() != Method::POST {
        let reply = Reply::error(ErrorKind::UnknownOperation, "Only POST is supported");
        return Ok(to_response(reply, &request_id));
    }
    let body = match Limited::new(request.into_body(), MAX_BODY_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            let reply = Reply::error(ErrorKind::Serialization, "Request body unreadable or too large");
            return Ok(to_response(reply, &request_id));
        }
    };
    let reply = match target.as_str() {
        "AWSStepFunctions.StartExecution" => match start_execution(&state, &reset, &body).await {
            Some(reply) => reply,
            // The connection is being reset; never answer (the connection task drops us).
            None => std::future::pending().await,
        },
        "AWSStepFunctions.DescribeExecution" => state.describe(&body),
        "AWSStepFunctions.ListExecutions" => state.list(&body),
        "AWSStepFunctions.DescribeStateMachine" => state.describe_state_machine(&body),
        other => state.unknown_operation(other),
    };
    Ok(to_response(reply, &request_id))
}

/// Carries out the plan for one `StartExecution`. `None` means: reset the connection.
async fn start_execution(state: &FakeSfnState, reset: &Notify, body: &[u8]) -> Option<Reply> {
    let request = state.parse_start(body);
    match state.plan_start(request) {
        Plan::Respond { reply, delay } => {
            sleep(delay).await;
            Some(reply)
        }
        Plan::Reset { delay } => {
            sleep(delay).await;
            reset.notify_one();
            None
        }
        Plan::ApplyLater { delay, request } => {
            // A separate task, so the request is applied even if the client hangs up and
            // hyper drops this handler.
            let (tx, rx) = oneshot::channel();
            let state = state.clone();
            tokio::spawn(async move {
                sleep(delay).await;
                let _ = tx.send(state.apply_later(request));
            });
            Some(
                rx.await
                    .unwrap_or_else(|_| Reply::error(ErrorKind::InternalFailure, "Deferred processing lost")),
            )
        }
    }
}

async fn sleep(delay: Duration) {
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
}

fn to_response(reply: Reply, request_id: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(reply.body)));
    *response.status_mut() = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/x-amz-json-1.0"));
    if let Ok(id) = HeaderValue::from_str(request_id) {
        headers.insert("x-amzn-requestid", id);
    }
    if let Some(code) = reply.error_type {
        headers.insert("x-amzn-errortype", HeaderValue::from_static(code));
    }
    response
}
