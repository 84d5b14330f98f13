//! `--api-socket PATH`: HTTP/1.1 over a Unix socket, paths and bodies in
//! Cloud Hypervisor's style (docs/api.md). hyper parses and writes HTTP on
//! one current-thread tokio runtime in the `api` thread (its own seccomp
//! list); every request that touches the VM becomes an [`ApiRequest`] the
//! supervisor answers between its ticks, through the same paths signals
//! and options take (src/vmm/control.rs). The API thread never touches
//! the VM itself.

use std::cell::RefCell;
use std::convert::Infallible;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};

use crate::error::{Error, Result};

/// Largest request body taken (a larger one gets 413).
pub const MAX_BODY: usize = 64 << 10;
/// A client that connects and sends no complete request header in this
/// time is dropped.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more are answered 503 and closed.
pub const MAX_CONNECTIONS: usize = 256;
/// How long the supervisor may take to answer (a snapshot of a large
/// guest is the slowest).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(120);
/// At exit, how long in-flight responses get to go out.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// What a client asked of the VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiRequest {
    /// GET vm.info: the machine and its state.
    Info,
    /// GET vm.counters: the live exit report.
    Counters,
    /// PUT vm.pause
    Pause,
    /// PUT vm.resume
    Resume,
    /// PUT vm.snapshot {"destination_url": "file:///dir"}
    Snapshot(PathBuf),
    /// PUT vm.shutdown: as SIGTERM.
    Shutdown,
}

/// A successful answer: 200 with JSON, or 204.
#[derive(Debug)]
pub enum Body {
    Empty,
    Json(serde_json::Value),
}

/// A refused request: its status and the message the JSON error carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }
    /// The request does not fit the VM's state (pause a paused VM).
    pub fn conflict(message: String) -> ApiError {
        ApiError::new(409, message)
    }
    pub fn internal(message: String) -> ApiError {
        ApiError::new(500, message)
    }
}

type Answer = std::result::Result<Body, ApiError>;

/// A request waiting for the supervisor, with where its answer goes.
pub struct Call {
    pub request: ApiRequest,
    reply: tokio::sync::oneshot::Sender<Answer>,
}

impl Call {
    pub fn reply(self, answer: Answer) {
        // The client may have gone: nothing to tell it.
        let _ = self.reply.send(answer);
    }
}

/// The API socket of one VM: bound before the VM starts (so a bad path is
/// a setup error), served once it runs, removed when it ends.
pub struct ApiServer {
    path: PathBuf,
    listener: RefCell<Option<UnixListener>>,
    tx: RefCell<Option<mpsc::Sender<Call>>>,
    rx: mpsc::Receiver<Call>,
    /// A call taken by [`ApiServer::wait`], handed out next.
    pending: RefCell<Option<Call>>,
    stop: Arc<tokio::sync::Notify>,
    thread: RefCell<Option<std::thread::JoinHandle<()>>>,
    seccomp: crate::seccomp::Mode,
}

/// The route of a method and path, or the status refusing it.
pub fn route(method: &Method, path: &str) -> std::result::Result<Route, ApiError> {
    let Some(name) = path.strip_prefix("/api/v1/") else {
        return Err(ApiError::new(404, format!("no such path: {path}")));
    };
    let (want, route) = match name {
        "vmm.ping" => (Method::GET, Route::Ping),
        "vm.info" => (Method::GET, Route::Vm(ApiRequest::Info)),
        "vm.counters" => (Method::GET, Route::Vm(ApiRequest::Counters)),
        "vm.pause" => (Method::PUT, Route::Vm(ApiRequest::Pause)),
        "vm.resume" => (Method::PUT, Route::Vm(ApiRequest::Resume)),
        "vm.shutdown" => (Method::PUT, Route::Vm(ApiRequest::Shutdown)),
        "vm.snapshot" => (Method::PUT, Route::Snapshot),
        _ => return Err(ApiError::new(404, format!("no such path: {path}"))),
    };
    if *method != want {
        return Err(ApiError::new(
            405,
            format!("{path} takes {want}, not {method}"),
        ));
    }
    Ok(route)
}

/// Where a request goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// Answered by the API thread: the VMM is alive.
    Ping,
    /// Needs the body read first (the destination).
    Snapshot,
    Vm(ApiRequest),
}

/// vm.snapshot's body, as Cloud Hypervisor's: `{"destination_url":
/// "file:///dir"}`.
pub fn snapshot_destination(body: &[u8]) -> std::result::Result<PathBuf, ApiError> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct SnapshotConfig {
        destination_url: String,
    }
    let bad = |m: String| ApiError::new(400, m);
    let cfg: SnapshotConfig = serde_json::from_slice(body).map_err(|e| {
        bad(format!(
            "vm.snapshot body: {e} (want {{\"destination_url\": \"file:///DIR\"}})"
        ))
    })?;
    match cfg.destination_url.strip_prefix("file://") {
        Some(p) if p.starts_with('/') => Ok(PathBuf::from(p)),
        _ => Err(bad(format!(
            "destination_url '{}' is not an absolute file:/// URL",
            cfg.destination_url
        ))),
    }
}

fn json_response(status: u16, body: Vec<u8>) -> Response<Full<Bytes>> {
    let json = !body.is_empty();
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if json {
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/json"),
        );
    }
    r
}

fn error_response(e: &ApiError) -> Response<Full<Bytes>> {
    let body = serde_json::json!({ "error": e.message });
    let mut r = json_response(e.status, body.to_string().into_bytes());
    if e.status == 405 {
        r.headers_mut().insert(
            hyper::header::ALLOW,
            hyper::header::HeaderValue::from_static("GET, PUT"),
        );
    }
    r
}

fn answer_response(a: Answer) -> Response<Full<Bytes>> {
    match a {
        Ok(Body::Empty) => json_response(204, Vec::new()),
        Ok(Body::Json(v)) => json_response(200, v.to_string().into_bytes()),
        Err(e) => error_response(&e),
    }
}

/// One request: route it, read its body (at most [`MAX_BODY`]), hand it to
/// the supervisor and wait for the answer.
async fn handle(req: Request<Incoming>, tx: mpsc::Sender<Call>) -> Response<Full<Bytes>> {
    let route = match route(req.method(), req.uri().path()) {
        Ok(r) => r,
        Err(e) => return error_response(&e),
    };
    let too_large = || ApiError::new(413, format!("request body over {MAX_BODY} bytes"));
    let declared = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return error_response(&too_large());
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return error_response(&too_large()),
        Err(e) => return error_response(&ApiError::new(400, format!("request body: {e}"))),
    };
    let request = match route {
        Route::Ping => {
            let v = serde_json::json!({ "version": env!("CARGO_PKG_VERSION") });
            return answer_response(Ok(Body::Json(v)));
        }
        Route::Snapshot => match snapshot_destination(&body) {
            Ok(dir) => ApiRequest::Snapshot(dir),
            Err(e) => return error_response(&e),
        },
        Route::Vm(r) => r,
    };
    let (reply, answer) = tokio::sync::oneshot::channel();
    let gone = || ApiError::new(503, "the VM is stopping");
    if tx.send(Call { request, reply }).is_err() {
        return error_response(&gone());
    }
    match tokio::time::timeout(ANSWER_TIMEOUT, answer).await {
        Ok(Ok(a)) => answer_response(a),
        Ok(Err(_)) => error_response(&gone()),
        Err(_) => error_response(&ApiError::new(504, "the VM did not answer in time")),
    }
}

/// Serve until `stop`: each connection on the runtime, closed when idle
/// for [`IDLE_TIMEOUT`] before a complete header; then let in-flight
/// responses go out.
async fn serve(
    listener: tokio::net::UnixListener,
    tx: mpsc::Sender<Call>,
    stop: Arc<tokio::sync::Notify>,
) {
    use hyper::server::conn::http1;
    use hyper_util::rt::{TokioIo, TokioTimer};
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let open = Arc::new(());
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    log::warn!("API socket: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = stop.notified() => break,
        };
        // Each connection holds a clone: the count of clones is the count
        // of open connections.
        if Arc::strong_count(&open) > MAX_CONNECTIONS {
            let e = ApiError::new(503, "too many API connections");
            let conn = http1::Builder::new().serve_connection(
                TokioIo::new(stream),
                hyper::service::service_fn(move |_| {
                    let r = error_response(&e);
                    async move { Ok::<_, Infallible>(r) }
                }),
            );
            tokio::spawn(async move {
                let _ = tokio::time::timeout(IDLE_TIMEOUT, conn).await;
            });
            continue;
        }
        let tx = tx.clone();
        let service = hyper::service::service_fn(move |req| {
            let tx = tx.clone();
            async move { Ok::<_, Infallible>(handle(req, tx).await) }
        });
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(IDLE_TIMEOUT)
            .serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        let held = open.clone();
        tokio::spawn(async move {
            let _ = conn.await;
            drop(held);
        });
    }
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await;
}

impl ApiServer {
    /// Bind `path` (mode 0600). An existing socket nobody listens on is
    /// replaced; any other existing file is refused.
    pub fn bind(path: &Path, seccomp: crate::seccomp::Mode) -> Result<ApiServer> {
        let refuse = |msg: String| Error::Setup {
            what: "--api-socket",
            msg,
        };
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => {
                if std::os::unix::net::UnixStream::connect(path).is_ok() {
                    return Err(refuse(format!(
                        "'{}' is in use by another process",
                        path.display()
                    )));
                }
                std::fs::remove_file(path).map_err(|e| {
                    refuse(format!(
                        "cannot remove the stale socket '{}': {e}",
                        path.display()
                    ))
                })?;
            }
            Ok(_) => {
                return Err(refuse(format!(
                    "'{}' exists and is not a socket; not replacing it",
                    path.display()
                )))
            }
            Err(_) => {}
        }
        // The socket file is created 0600 (umask), never readable by others
        // even for an instant; splitvm is single-threaded here.
        // SAFETY: umask has no memory-safety preconditions.
        let old = unsafe { libc::umask(0o177) };
        let bound = UnixListener::bind(path);
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        let listener =
            bound.map_err(|e| refuse(format!("cannot bind '{}': {e}", path.display())))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| refuse(e.to_string()))?;
        let (tx, rx) = mpsc::channel();
        Ok(ApiServer {
            path: path.to_path_buf(),
            listener: RefCell::new(Some(listener)),
            tx: RefCell::new(Some(tx)),
            rx,
            pending: RefCell::new(None),
            stop: Arc::new(tokio::sync::Notify::new()),
            thread: RefCell::new(None),
            seccomp,
        })
    }

    /// Start serving (the VM runs): the `api` thread, under its own list.
    pub fn start(&self) -> std::result::Result<(), String> {
        let (Some(listener), Some(tx)) = (self.listener.take(), self.tx.take()) else {
            return Err("the API server was started twice".into());
        };
        let stop = self.stop.clone();
        let mode = self.seccomp;
        let h = std::thread::Builder::new()
            .name("api".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .enable_time()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => return log::error!("API socket: no runtime: {e}"),
                };
                if let Err(e) =
                    crate::seccomp::install(crate::seccomp::ThreadKind::Api, mode, "api")
                {
                    // Running unconfined when confinement was asked for is not an option.
                    eprintln!("splitvm: {e}");
                    std::process::exit(2);
                }
                rt.block_on(async move {
                    match tokio::net::UnixListener::from_std(listener) {
                        Ok(l) => serve(l, tx, stop).await,
                        Err(e) => log::error!("API socket: {e}"),
                    }
                });
            })
            .map_err(|e| e.to_string())?;
        *self.thread.borrow_mut() = Some(h);
        Ok(())
    }

    /// Supervisor side: wait up to `d` for a request (an idle VM's loop
    /// sleeps here).
    pub fn wait(&self, d: Duration) {
        // One taken and not yet answered (the VM is stopping: stop()
        // answers it): just sleep, never spin.
        if self.pending.borrow().is_some() {
            std::thread::sleep(d);
            return;
        }
        if let Ok(c) = self.rx.recv_timeout(d) {
            *self.pending.borrow_mut() = Some(c);
        }
    }

    /// Supervisor side: the next request waiting, if any.
    pub fn next_call(&self) -> Option<Call> {
        self.pending.take().or_else(|| self.rx.try_recv().ok())
    }

    /// The VM has stopped: requests still queued get 503, responses in
    /// flight go out, the thread ends and the socket file goes.
    pub fn stop(&self) {
        self.stop.notify_one();
        loop {
            while let Some(c) = self.next_call() {
                c.reply(Err(ApiError::new(503, "the VM is stopping")));
            }
            let finished = self
                .thread
                .borrow()
                .as_ref()
                .is_none_or(|h| h.is_finished());
            if finished {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        if let Some(h) = self.thread.take() {
            let _ = h.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for ApiServer {
    /// A run that ends before the VM starts still removes its socket.
    fn drop(&mut self) {
        if self.thread.borrow().is_none() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_paths_route_and_wrong_methods_get_405() {
        assert_eq!(
            route(&Method::GET, "/api/v1/vm.counters"),
            Ok(Route::Vm(ApiRequest::Counters))
        );
        assert_eq!(
            route(&Method::PUT, "/api/v1/vm.snapshot"),
            Ok(Route::Snapshot)
        );
        assert_eq!(
            route(&Method::GET, "/api/v1/vm.pause").unwrap_err().status,
            405
        );
        assert_eq!(
            route(&Method::DELETE, "/api/v1/vm.info")
                .unwrap_err()
                .status,
            405
        );
        assert_eq!(
            route(&Method::GET, "/api/v1/vm.nothing")
                .unwrap_err()
                .status,
            404
        );
        assert_eq!(route(&Method::GET, "/").unwrap_err().status, 404);
    }

    #[test]
    fn snapshot_body_needs_an_absolute_file_url() {
        assert_eq!(
            snapshot_destination(br#"{"destination_url":"file:///tmp/s"}"#),
            Ok(PathBuf::from("/tmp/s"))
        );
        for bad in [
            &br#"{"destination_url":"http://x/y"}"#[..],
            br#"{"destination_url":"file://rel"}"#,
            br#"{"dest":"file:///tmp"}"#,
            b"{not json",
            b"",
        ] {
            let e = snapshot_destination(bad).unwrap_err();
            assert_eq!(e.status, 400, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn errors_are_json_objects_naming_the_problem() {
        let r = error_response(&ApiError::new(404, "no such path: /x"));
        assert_eq!(r.status(), 404);
        assert_eq!(r.headers()[hyper::header::CONTENT_TYPE], "application/json");
    }

    #[test]
    fn an_existing_regular_file_is_not_replaced() {
        let dir = std::env::temp_dir().join(format!("splitvm-api-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("not-a-socket");
        std::fs::write(&f, b"keep me").unwrap();
        let e = ApiServer::bind(&f, crate::seccomp::Mode::Off)
            .err()
            .unwrap();
        assert!(e.to_string().contains("not a socket"), "{e}");
        assert_eq!(std::fs::read(&f).unwrap(), b"keep me");
        // A socket is made 0600 and removed when dropped unstarted.
        let s = dir.join("api.sock");
        let server = ApiServer::bind(&s, crate::seccomp::Mode::Off).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&s).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        drop(server);
        assert!(!s.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
