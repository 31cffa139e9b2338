//! Building a [`Client`]: seeds, region, deadlines, coalescing, identity, TLS and
//! credentials, with documented defaults.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::coalesce::{self, CoalesceConfig};
use crate::{Client, Error, Inner, routing};
/// Builds a [`Client`].
#[derive(Clone, Debug)]
pub struct ClientBuilder {
    pub(crate) seeds: Vec<String>,
    pub(crate) region: Option<String>,
    pub(crate) request_timeout: Duration,
    pub(crate) attempt_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) coalesce: CoalesceConfig,
    pub(crate) identity: String,
    pub(crate) tls: Option<TlsOptions>,
    pub(crate) token: Option<Token>,
}

/// TLS towards the cluster: the CA that signed the nodes' certificates, and this
/// client's own certificate and key when it authenticates with one.
#[derive(Clone)]
pub struct TlsOptions {
    ca_pem: Vec<u8>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsOptions")
            .field("client_certificate", &self.identity.is_some())
            .finish_non_exhaustive()
    }
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| Error::Config {
        message: format!("{}: cannot read: {e}", path.display()),
    })
}

impl TlsOptions {
    /// TLS trusting the CA in `ca` (PEM), presenting the certificate `cert` with key
    /// `key` (PEM) when given; without one, the client authenticates with a token.
    pub fn from_files(
        ca: &std::path::Path,
        cert_and_key: Option<(&std::path::Path, &std::path::Path)>,
    ) -> Result<TlsOptions, Error> {
        let identity = match cert_and_key {
            Some((cert, key)) => Some((read(cert)?, read(key)?)),
            None => None,
        };
        Ok(TlsOptions {
            ca_pem: read(ca)?,
            identity,
        })
    }

    pub(crate) fn config(&self) -> tonic::transport::ClientTlsConfig {
        let config = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&self.ca_pem));
        match &self.identity {
            Some((cert, key)) => config.identity(tonic::transport::Identity::from_pem(cert, key)),
            None => config,
        }
    }
}

/// A bearer token, never printed.
#[derive(Clone)]
pub(crate) struct Token(pub(crate) String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Default for ClientBuilder {
    fn default() -> Self {
        ClientBuilder {
            seeds: Vec::new(),
            region: None,
            request_timeout: Duration::from_secs(10),
            attempt_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_millis(500),
            coalesce: CoalesceConfig::default(),
            identity: "anonymous".to_string(),
            tls: None,
            token: None,
        }
    }
}

impl ClientBuilder {
    /// Addresses (`host:port`) of some nodes; any one reachable node is enough.
    pub fn seeds<S: Into<String>>(mut self, seeds: impl IntoIterator<Item = S>) -> Self {
        self.seeds = seeds.into_iter().map(Into::into).collect();
        self
    }

    /// The client's region: nodes there are tried first for discovery and stale reads.
    /// Default: none (no preference).
    pub fn region(mut self, region: impl Into<String>) -> Self {
        self.region = Some(region.into());
        self
    }

    /// The deadline of one call, retries included. Default 10 s.
    pub fn request_timeout(mut self, t: Duration) -> Self {
        self.request_timeout = t;
        self
    }

    /// The longest one attempt may take before the client tries another node.
    /// Default 2 s.
    pub fn attempt_timeout(mut self, t: Duration) -> Self {
        self.attempt_timeout = t;
        self
    }

    /// Connection attempts give up after this long. Default 500 ms.
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }

    /// Coalesce concurrent mutations of one shard into Batch RPCs (default on):
    /// `linger` is how long a mutation may wait for others (default 0: only what is
    /// already waiting joins), `batch_max` the most mutations per RPC (default 1000).
    pub fn coalesce(mut self, linger: Duration, batch_max: usize) -> Self {
        self.coalesce = CoalesceConfig {
            enabled: true,
            linger,
            batch_max: batch_max.max(1),
            ..self.coalesce
        };
        self
    }

    /// The largest Batch RPC the client sends, in bytes (default 4 MiB, the store's
    /// default `limits.request_bytes_max`); larger batches go as several RPCs. Match it
    /// to the store's limit when that is configured otherwise.
    pub fn batch_bytes_max(mut self, bytes: usize) -> Self {
        self.coalesce.batch_bytes_max = bytes.max(1);
        self
    }

    /// The identity the store's admission control budgets this client by (the
    /// `x-stockpile-client` header). Default "anonymous". Printable ASCII only.
    pub fn identity(mut self, identity: impl Into<String>) -> Self {
        self.identity = identity.into();
        self
    }

    /// Talk TLS to every node (a cluster with `[security] tls = true`). Default: off.
    pub fn tls(mut self, tls: TlsOptions) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Authenticate with a bearer token (`stockpile token create`) instead of a client
    /// certificate. Sent only over TLS.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(Token(token.into()));
        self
    }

    /// Send every mutation as its own RPC.
    pub fn no_coalescing(mut self) -> Self {
        self.coalesce.enabled = false;
        self
    }

    fn headers(&self) -> Result<crate::transport::Headers, Error> {
        let identity =
            tonic::metadata::MetadataValue::try_from(self.identity.as_str()).map_err(|_| {
                Error::Config {
                    message: format!("identity {:?} is not printable ASCII", self.identity),
                }
            })?;
        let authorization = match (&self.token, &self.tls) {
            (None, _) => None,
            (Some(_), None) => {
                return Err(Error::Config {
                    message: "a bearer token is sent only over TLS: give the CA too".into(),
                });
            }
            (Some(t), Some(_)) => Some(
                tonic::metadata::MetadataValue::try_from(format!("Bearer {}", t.0)).map_err(
                    |_| Error::Config {
                        message: "the token is not printable ASCII".into(),
                    },
                )?,
            ),
        };
        Ok(crate::transport::Headers {
            identity,
            authorization,
        })
    }

    /// Connects to the seeds and fetches the shard map.
    pub async fn build(self) -> Result<Client, Error> {
        if self.seeds.is_empty() {
            return Err(Error::Config {
                message: "no seed addresses given".into(),
            });
        }
        for s in &self.seeds {
            if s.parse::<std::net::SocketAddr>().is_err() && !s.contains(':') {
                return Err(Error::Config {
                    message: format!("seed {s:?} is not a host:port address"),
                });
            }
        }
        let headers = self.headers()?;
        let client = Client {
            inner: Arc::new(Inner {
                headers,
                tls: self.tls.as_ref().map(TlsOptions::config),
                cfg: self,
                routing: Mutex::new(routing::Routing::default()),
                channels: Mutex::new(HashMap::new()),
                rpcs: AtomicU64::new(0),
                coalescers: coalesce::Coalescers::default(),
            }),
        };
        client
            .refresh_map(Instant::now() + client.inner.cfg.request_timeout)
            .await?;
        Ok(client)
    }
}
