//! `splitvm top`'s side of the API socket: GET a path, parse the JSON
//! (hyper's HTTP/1.1 client on a current-thread runtime, one connection
//! per request as curl makes them).

use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// How long one request may take (the supervisor answers within a tick).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Client {
    socket: PathBuf,
    rt: tokio::runtime::Runtime,
}

impl Client {
    pub fn new(socket: &Path) -> Result<Client, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| format!("no runtime: {e}"))?;
        Ok(Client {
            socket: socket.to_path_buf(),
            rt,
        })
    }

    /// GET `path` (e.g. `/api/v1/vm.counters`) as JSON.
    pub fn get(&self, path: &str) -> Result<serde_json::Value, String> {
        let socket = &self.socket;
        let fetch = async {
            let stream = tokio::net::UnixStream::connect(socket)
                .await
                .map_err(|e| format!("cannot connect to {}: {e}", socket.display()))?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            let req = hyper::Request::get(path)
                .header(hyper::header::HOST, "localhost")
                .body(Empty::<Bytes>::new())
                .map_err(|e| e.to_string())?;
            let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            if !status.is_success() {
                return Err(format!(
                    "{path}: {status}: {}",
                    String::from_utf8_lossy(&body).trim()
                ));
            }
            serde_json::from_slice(&body).map_err(|e| format!("{path}: {e}"))
        };
        self.rt.block_on(async {
            tokio::time::timeout(REQUEST_TIMEOUT, fetch)
                .await
                .map_err(|_| format!("{path}: no answer in {REQUEST_TIMEOUT:?}"))?
        })
    }
}
