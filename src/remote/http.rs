//! `http(s)://host/prefix`: plain GET, HEAD and PUT of each object, as nginx with WebDAV PUT
//! serves them (`dav_methods PUT; create_full_put_path on;`, or collections made with MKCOL when
//! the server answers 409). Bodies are streamed from and to files.

use std::fs::File;
use std::path::Path;
use std::time::Duration;

use ureq::http::{Method, Request, StatusCode};
use ureq::{Agent, Body, SendBody};

use super::{Backend, RemoteError};

/// The largest run entry read into memory (10,000-file manifests are ~2 MB).
const MAX_SMALL: u64 = 256 << 20;

pub struct HttpBackend {
    base: String,
    agent: Agent,
}

impl HttpBackend {
    pub fn new(url: &str) -> HttpBackend {
        let agent = Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(5)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .build()
            .new_agent();
        HttpBackend {
            base: url.trim_end_matches('/').to_string(),
            agent,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.base)
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<SendBody<'_>>,
    ) -> Result<ureq::http::Response<Body>, RemoteError> {
        let url = self.url(path);
        let transient = |e: ureq::Error| RemoteError::Transient {
            url: url.clone(),
            message: e.to_string(),
        };
        let req = Request::builder().method(method).uri(&url);
        let resp = match body {
            Some(b) => self
                .agent
                .run(req.body(b).map_err(|e| permanent(&url, e.to_string()))?),
            None => self
                .agent
                .run(req.body(()).map_err(|e| permanent(&url, e.to_string()))?),
        }
        .map_err(transient)?;
        if resp.status().is_server_error() {
            return Err(RemoteError::Transient {
                url,
                message: format!("server answered {}", resp.status()),
            });
        }
        Ok(resp)
    }

    fn put(
        &self,
        path: &str,
        len: u64,
        mut body: impl FnMut() -> Result<SendBody<'static>, RemoteError>,
    ) -> Result<(), RemoteError> {
        let mut made_collections = false;
        loop {
            let mut resp = self.put_once(path, len, body()?)?;
            match resp.status() {
                s if s.is_success() => return Ok(()),
                StatusCode::CONFLICT if !made_collections => {
                    self.make_collections(path)?;
                    made_collections = true;
                }
                s => {
                    let text = resp.body_mut().read_to_string().unwrap_or_default();
                    return Err(permanent(
                        &self.url(path),
                        format!("PUT answered {s} {}", text.trim()),
                    ));
                }
            }
        }
    }

    fn put_once(
        &self,
        path: &str,
        len: u64,
        body: SendBody<'static>,
    ) -> Result<ureq::http::Response<Body>, RemoteError> {
        let url = self.url(path);
        let req = Request::builder()
            .method(Method::PUT)
            .uri(&url)
            .header("Content-Length", len.to_string());
        let resp = self
            .agent
            .run(req.body(body).map_err(|e| permanent(&url, e.to_string()))?)
            .map_err(|e| RemoteError::Transient {
                url: url.clone(),
                message: e.to_string(),
            })?;
        if resp.status().is_server_error() {
            return Err(RemoteError::Transient {
                url,
                message: format!("server answered {}", resp.status()),
            });
        }
        Ok(resp)
    }

    /// MKCOL each parent collection of `path` (for servers without create_full_put_path).
    fn make_collections(&self, path: &str) -> Result<(), RemoteError> {
        let parts: Vec<&str> = path.split('/').collect();
        for i in 1..parts.len() {
            let dir = format!("{}/", parts[..i].join("/"));
            let mkcol = Method::from_bytes(b"MKCOL").expect("valid method");
            self.request(mkcol, &dir, None)?;
        }
        Ok(())
    }
}

fn permanent(url: &str, message: String) -> RemoteError {
    RemoteError::Permanent {
        url: url.to_string(),
        message,
    }
}

impl Backend for HttpBackend {
    fn get_bytes(&self, path: &str) -> Result<Option<Vec<u8>>, RemoteError> {
        let mut resp = self.request(Method::GET, path, None)?;
        match resp.status() {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => {
                let url = self.url(path);
                let bytes = resp
                    .body_mut()
                    .with_config()
                    .limit(MAX_SMALL)
                    .read_to_vec()
                    .map_err(|e| RemoteError::Transient {
                        url,
                        message: e.to_string(),
                    })?;
                Ok(Some(bytes))
            }
            s => Err(permanent(&self.url(path), format!("GET answered {s}"))),
        }
    }

    fn get_file(&self, path: &str, dest: &Path) -> Result<bool, RemoteError> {
        let mut resp = self.request(Method::GET, path, None)?;
        match resp.status() {
            StatusCode::NOT_FOUND => Ok(false),
            s if s.is_success() => {
                let mut out = File::create(dest).map_err(RemoteError::io(dest))?;
                let mut body = resp.body_mut().with_config().limit(u64::MAX).reader();
                std::io::copy(&mut body, &mut out).map_err(|e| RemoteError::Transient {
                    url: self.url(path),
                    message: format!("download interrupted: {e}"),
                })?;
                Ok(true)
            }
            s => Err(permanent(&self.url(path), format!("GET answered {s}"))),
        }
    }

    fn exists(&self, path: &str) -> Result<bool, RemoteError> {
        let resp = self.request(Method::HEAD, path, None)?;
        match resp.status() {
            StatusCode::NOT_FOUND => Ok(false),
            s if s.is_success() => Ok(true),
            s => Err(permanent(&self.url(path), format!("HEAD answered {s}"))),
        }
    }

    fn put_file(&self, path: &str, src: &Path) -> Result<(), RemoteError> {
        let len = std::fs::metadata(src).map_err(RemoteError::io(src))?.len();
        self.put(path, len, || {
            let f = File::open(src).map_err(RemoteError::io(src))?;
            Ok(SendBody::from_owned_reader(f))
        })
    }

    fn put_bytes(&self, path: &str, bytes: &[u8]) -> Result<(), RemoteError> {
        let owned = bytes.to_vec();
        self.put(path, owned.len() as u64, || {
            Ok(SendBody::from_owned_reader(std::io::Cursor::new(
                owned.clone(),
            )))
        })
    }
}
