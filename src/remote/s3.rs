//! `s3://bucket/prefix` through the object_store crate. Endpoint, region and credentials come
//! from the usual AWS environment variables (`AWS_ENDPOINT_URL` for S3-compatible servers, which
//! are addressed path-style); without credentials, requests go unsigned. Large files go up as
//! multipart uploads, read from disk chunk by chunk.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

use futures::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjPath;
use object_store::{ObjectStoreExt, RetryConfig, WriteMultipart};

use super::{Backend, RemoteError};

/// Files above this go up in parts of this size.
const PART: usize = 16 << 20;

pub struct S3Backend {
    url: String,
    store: AmazonS3,
    prefix: String,
    rt: tokio::runtime::Runtime,
}

impl S3Backend {
    pub fn new(url: &str, rest: &str) -> Result<S3Backend, RemoteError> {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(RemoteError::Url(url.to_string()));
        }
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            // Retries (with backoff) are the caller's, so an unreachable server fails fast.
            .with_retry(RetryConfig {
                max_retries: 0,
                ..RetryConfig::default()
            });
        if let Some(endpoint) = env("AWS_ENDPOINT_URL_S3")
            .or_else(|| env("AWS_ENDPOINT_URL"))
            .or_else(|| env("AWS_ENDPOINT"))
        {
            b = b
                .with_allow_http(endpoint.starts_with("http://"))
                .with_endpoint(endpoint);
        }
        if env("AWS_REGION")
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .is_none()
        {
            b = b.with_region("us-east-1");
        }
        if env("AWS_ACCESS_KEY_ID").is_none() {
            b = b.with_skip_signature(true);
        }
        let store = b.build().map_err(|e| RemoteError::Permanent {
            url: url.to_string(),
            message: e.to_string(),
        })?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| RemoteError::Permanent {
                url: url.to_string(),
                message: e.to_string(),
            })?;
        Ok(S3Backend {
            url: url.trim_end_matches('/').to_string(),
            store,
            prefix: prefix.trim_matches('/').to_string(),
            rt,
        })
    }

    fn key(&self, path: &str) -> ObjPath {
        if self.prefix.is_empty() {
            ObjPath::from(path)
        } else {
            ObjPath::from(format!("{}/{path}", self.prefix))
        }
    }

    fn err(&self, path: &str, e: object_store::Error) -> RemoteError {
        use object_store::Error as E;
        let url = format!("{}/{path}", self.url);
        match e {
            E::NotImplemented { .. }
            | E::InvalidPath { .. }
            | E::PermissionDenied { .. }
            | E::Unauthenticated { .. } => RemoteError::Permanent {
                url,
                message: e.to_string(),
            },
            other => RemoteError::Transient {
                url,
                message: other.to_string(),
            },
        }
    }
}

impl Backend for S3Backend {
    fn get_bytes(&self, path: &str) -> Result<Option<Vec<u8>>, RemoteError> {
        self.rt.block_on(async {
            match self.store.get(&self.key(path)).await {
                Ok(r) => Ok(Some(
                    r.bytes().await.map_err(|e| self.err(path, e))?.to_vec(),
                )),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(self.err(path, e)),
            }
        })
    }

    fn get_file(&self, path: &str, dest: &Path) -> Result<bool, RemoteError> {
        self.rt.block_on(async {
            let r = match self.store.get(&self.key(path)).await {
                Ok(r) => r,
                Err(object_store::Error::NotFound { .. }) => return Ok(false),
                Err(e) => return Err(self.err(path, e)),
            };
            let mut out = File::create(dest).map_err(RemoteError::io(dest))?;
            let mut stream = r.into_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| self.err(path, e))?;
                out.write_all(&chunk).map_err(RemoteError::io(dest))?;
            }
            Ok(true)
        })
    }

    fn exists(&self, path: &str) -> Result<bool, RemoteError> {
        self.rt.block_on(async {
            match self.store.head(&self.key(path)).await {
                Ok(_) => Ok(true),
                Err(object_store::Error::NotFound { .. }) => Ok(false),
                Err(e) => Err(self.err(path, e)),
            }
        })
    }

    fn put_file(&self, path: &str, src: &Path) -> Result<(), RemoteError> {
        let mut f = File::open(src).map_err(RemoteError::io(src))?;
        let len = f.metadata().map_err(RemoteError::io(src))?.len();
        if len <= PART as u64 {
            let mut buf = Vec::with_capacity(len as usize);
            f.read_to_end(&mut buf).map_err(RemoteError::io(src))?;
            return self.put_bytes(path, &buf);
        }
        self.rt.block_on(async {
            let upload = self
                .store
                .put_multipart(&self.key(path))
                .await
                .map_err(|e| self.err(path, e))?;
            let mut w = WriteMultipart::new_with_chunk_size(upload, PART);
            let mut buf = vec![0u8; PART];
            loop {
                let n = f.read(&mut buf).map_err(RemoteError::io(src))?;
                if n == 0 {
                    break;
                }
                w.wait_for_capacity(4)
                    .await
                    .map_err(|e| self.err(path, e))?;
                w.write(&buf[..n]);
            }
            w.finish().await.map_err(|e| self.err(path, e))?;
            Ok(())
        })
    }

    fn put_bytes(&self, path: &str, bytes: &[u8]) -> Result<(), RemoteError> {
        self.rt.block_on(async {
            self.store
                .put(&self.key(path), bytes.to_vec().into())
                .await
                .map(|_| ())
                .map_err(|e| self.err(path, e))
        })
    }
}
