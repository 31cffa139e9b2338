//! Who calls, and what they may do (docs/SECURITY.md).
//!
//! With `security.tls` on, every connection is TLS (`tls`): nodes present certificates
//! of the cluster's CA naming them (`OU=nodes, CN=node-<id>`); clients present a
//! certificate (`OU=clients, CN=<name>`) or a bearer token, and the access file
//! (`access`) gives each a role and optional SKU prefixes. Every RPC is authorized at
//! the API edge, every operation of a batch too; denials and admin calls are audited.
//! Certificates, CA bundle and access file are reloaded on SIGHUP (`reload`), for new
//! connections; existing ones are not cut.
//!
//! Without TLS (loopback, or `--insecure`), every caller may do everything and is
//! named by the `x-stockpile-client` header, as before.

pub mod access;
pub mod tls;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use crate::admission::Admission;
use crate::clock::Clock;
use crate::config::SecurityConfig;
use crate::error::Error;
use crate::telemetry::names;
pub use access::{Access, Grant, Role, token_hash};
use tls::{TlsFiles, TlsMaterial};

/// The subject OU of node certificates and of client certificates.
pub const NODE_UNIT: &str = "nodes";
pub const CLIENT_UNIT: &str = "clients";

/// What an RPC needs of its caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Reads of stock and reservations.
    Read,
    /// Mutations and batches.
    Write,
    /// Cluster and node status, the shard map, digests: readers and nodes.
    Status,
    /// Leadership, rebuild and other operator calls: admins.
    Operator,
    /// The internal Raft service: nodes of this cluster only.
    Raft,
    /// Replica moves and their steps (creating and dropping a replica) and leadership
    /// transfers: nodes and admins (the meta leader drives a silent recorded move
    /// again, repairs, and balances).
    Replica,
}

/// Who is calling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// A node of this cluster (its certificate names it).
    Node(u64),
    /// A client with a grant from the access file.
    Client(Grant),
    /// No authentication configured (plaintext): everything is allowed.
    Open,
}

/// The authenticated caller of one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The identity name: rate limits and logs key on it.
    pub name: String,
    pub principal: Principal,
}

struct Loaded {
    tls: Option<TlsMaterial>,
    access: Access,
}

/// A node's security: the mode, and the material, reloadable.
pub struct Security {
    files: Option<(TlsFiles, PathBuf)>,
    loaded: RwLock<Arc<Loaded>>,
    clock: Clock,
    subjects: SubjectCache,
}

/// Certificates' subjects (OU, CN) by their DER bytes. A connection presents the same
/// certificate on every request, and parsing it for each one was ~2% of a loaded
/// leader's CPU (`x509_parser`, docs/PERFORMANCE.md). A subject depends only on the
/// bytes, so an entry never goes stale; grants are still looked up per request, so a
/// reloaded access file applies at once.
#[derive(Default)]
struct SubjectCache {
    by_der: Mutex<HashMap<Box<[u8]>, Subject>>,
}

/// A certificate subject's OU and CN.
type Subject = (String, String);

impl SubjectCache {
    /// Certificates remembered at most: a cluster's nodes and client identities are
    /// far fewer; a flood of distinct certificates clears the cache instead of
    /// growing it.
    const ENTRIES_MAX: usize = 1_024;

    fn get_or_parse(
        &self,
        der: &[u8],
        parse: impl FnOnce(&[u8]) -> Result<Subject, String>,
    ) -> Result<Subject, String> {
        let lock = || self.by_der.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(found) = lock().get(der) {
            return Ok(found.clone());
        }
        let parsed = parse(der)?;
        let mut map = lock();
        if map.len() >= Self::ENTRIES_MAX {
            map.clear();
        }
        map.insert(der.into(), parsed.clone());
        Ok(parsed)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_der.lock().map(|m| m.len()).unwrap_or(0)
    }
}

fn for_node(template: &str, node_id: u64) -> PathBuf {
    PathBuf::from(template.replace("{id}", &node_id.to_string()))
}

impl Security {
    pub fn from_config(cfg: &SecurityConfig, node_id: u64, clock: Clock) -> Result<Self, String> {
        let files = match (cfg.tls, &cfg.ca, &cfg.cert, &cfg.key, &cfg.access) {
            (false, ..) => None,
            (true, Some(ca), Some(cert), Some(key), Some(access)) => Some((
                TlsFiles {
                    ca: ca.clone(),
                    cert: for_node(cert, node_id),
                    key: for_node(key, node_id),
                },
                access.clone(),
            )),
            (true, ..) => return Err("security.tls needs ca, cert, key and access".into()),
        };
        let loaded = Self::load(files.as_ref())?;
        Ok(Security {
            files,
            loaded: RwLock::new(Arc::new(loaded)),
            clock,
            subjects: SubjectCache::default(),
        })
    }

    fn load(files: Option<&(TlsFiles, PathBuf)>) -> Result<Loaded, String> {
        Ok(match files {
            None => Loaded {
                tls: None,
                access: Access::default(),
            },
            Some((tls, access)) => Loaded {
                tls: Some(TlsMaterial::load(tls)?),
                access: Access::load(access)?,
            },
        })
    }

    fn current(&self) -> Arc<Loaded> {
        self.loaded
            .read()
            .map(|l| l.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    pub fn tls_on(&self) -> bool {
        self.files.is_some()
    }

    /// The server TLS configuration new connections are accepted with.
    pub fn server_config(&self) -> Option<Arc<rustls::ServerConfig>> {
        self.current().tls.as_ref().map(|t| t.server.clone())
    }

    /// The TLS configuration the node dials its peers with.
    pub fn peer_tls(&self) -> Option<tonic::transport::ClientTlsConfig> {
        self.current().tls.as_ref().map(|t| t.peer.clone())
    }

    /// Reads every file again; on success new connections use the new material. On
    /// failure the old material stays in use.
    pub fn reload(&self) -> Result<(), String> {
        let fresh = Self::load(self.files.as_ref())?;
        match self.loaded.write() {
            Ok(mut l) => *l = Arc::new(fresh),
            Err(p) => *p.into_inner() = Arc::new(fresh),
        }
        Ok(())
    }

    /// Authenticates the caller of `request`.
    pub fn caller<T>(&self, request: &tonic::Request<T>) -> Result<Caller, Error> {
        if !self.tls_on() {
            return Ok(Caller {
                name: Admission::identity(request.metadata()),
                principal: Principal::Open,
            });
        }
        if let Some(certs) = request.peer_certs()
            && let Some(leaf) = certs.first()
        {
            return self.certificate_caller(leaf);
        }
        match bearer(request.metadata()) {
            Some(token) => self.token_caller(token),
            None => Err(Error::Unauthenticated {
                reason: "no client certificate and no bearer token".into(),
            }),
        }
    }

    fn certificate_caller(&self, der: &[u8]) -> Result<Caller, Error> {
        let (unit, name) = self
            .subjects
            .get_or_parse(der, subject)
            .map_err(|reason| Error::Unauthenticated { reason })?;
        if unit == NODE_UNIT
            && let Some(id) = name.strip_prefix("node-").and_then(|n| n.parse().ok())
        {
            return Ok(Caller {
                name,
                principal: Principal::Node(id),
            });
        }
        match self.current().access.identity(&name) {
            Some(grant) if unit == CLIENT_UNIT => Ok(Caller {
                principal: Principal::Client(grant.clone()),
                name,
            }),
            _ => Err(Error::PermissionDenied {
                identity: name,
                call: "any".into(),
                reason: "this certificate identity has no grant in the access file".into(),
            }),
        }
    }

    fn token_caller(&self, token: &str) -> Result<Caller, Error> {
        let loaded = self.current();
        let Some(t) = loaded.access.token(token) else {
            return Err(Error::Unauthenticated {
                reason: "unknown bearer token".into(),
            });
        };
        if t.expires_at_ms <= self.clock.now_ms() {
            return Err(Error::Unauthenticated {
                reason: format!("token {:?} expired at {} ms", t.name, t.expires_at_ms),
            });
        }
        Ok(Caller {
            name: t.name.clone(),
            principal: Principal::Client(t.grant.clone()),
        })
    }
}

/// The bearer token of `authorization: Bearer <token>`, if any.
fn bearer(metadata: &tonic::metadata::MetadataMap) -> Option<&str> {
    let value = metadata.get("authorization")?.to_str().ok()?;
    value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
}

/// A certificate's subject OU and CN.
fn subject(der: &[u8]) -> Result<Subject, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("unreadable client certificate: {e}"))?;
    let subject = cert.subject();
    let unit = first_str(subject.iter_organizational_unit());
    let name = first_str(subject.iter_common_name());
    if name.is_empty() {
        return Err("the client certificate's subject has no CN".into());
    }
    Ok((unit, name))
}

/// The first attribute's text, or "" (a missing or non-UTF-8 attribute matches nothing).
fn first_str<'a, 'b: 'a>(
    mut it: impl Iterator<Item = &'a x509_parser::x509::AttributeTypeAndValue<'b>>,
) -> String {
    it.next()
        .and_then(|a| a.as_str().ok())
        .unwrap_or_default()
        .to_string()
}

impl Caller {
    /// The role this caller has for client calls (None for nodes).
    fn grant(&self) -> Option<&Grant> {
        match &self.principal {
            Principal::Client(g) => Some(g),
            _ => None,
        }
    }

    /// Allows `call` if the caller has what it `needs`; else PERMISSION_DENIED, audited.
    pub fn authorize(&self, call: &'static str, needs: Need) -> Result<(), Error> {
        let allowed = match (&self.principal, needs) {
            (Principal::Open, _) => true,
            (Principal::Node(_), Need::Raft | Need::Status | Need::Replica) => true,
            (Principal::Node(_), _) => false,
            (Principal::Client(_), Need::Raft) => false,
            (Principal::Client(g), Need::Read | Need::Status) => g.role >= Role::Reader,
            (Principal::Client(g), Need::Write) => g.role >= Role::Writer,
            (Principal::Client(g), Need::Operator | Need::Replica) => g.role >= Role::Admin,
        };
        if allowed {
            return Ok(());
        }
        let reason = match (&self.principal, needs) {
            (Principal::Client(_), Need::Raft) => {
                "only nodes of this cluster may call the Raft service".to_string()
            }
            (Principal::Node(_), _) => {
                "a node certificate may only call the Raft service, status and replica steps"
                    .to_string()
            }
            (_, needs) => format!(
                "needs the {} role, this identity is {}",
                match needs {
                    Need::Write => "writer",
                    Need::Operator | Need::Replica => "admin",
                    _ => "reader",
                },
                self.grant().map_or("none", |g| g.role.as_str())
            ),
        };
        Err(self.denied(call, reason))
    }

    /// Allows `call` on `skus` if the caller's grant has no prefixes or every SKU
    /// starts with one of them.
    pub fn check_skus<'a>(
        &self,
        call: &'static str,
        skus: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), Error> {
        let Some(g) = self.grant().filter(|g| !g.prefixes.is_empty()) else {
            return Ok(());
        };
        match skus
            .into_iter()
            .find(|s| !g.prefixes.iter().any(|p| s.starts_with(p.as_str())))
        {
            None => Ok(()),
            Some(sku) => Err(self.denied(
                call,
                format!(
                    "SKU {sku:?} is outside this identity's prefixes {:?}",
                    g.prefixes
                ),
            )),
        }
    }

    /// Whether the caller is limited to SKU prefixes.
    pub fn scoped(&self) -> bool {
        self.grant().is_some_and(|g| !g.prefixes.is_empty())
    }

    /// PERMISSION_DENIED for `call`, audited and counted.
    pub fn denied(&self, call: &'static str, reason: String) -> Error {
        let e = Error::PermissionDenied {
            identity: self.name.clone(),
            call: call.into(),
            reason,
        };
        audit_denied(&self.name, call, &e);
        e
    }

    /// Allows a Raft message claiming to come from node `from` only if the caller's
    /// certificate names that node (with security off, anyone is anyone).
    pub fn check_sender(&self, call: &'static str, from: u64) -> Result<(), Error> {
        match self.principal {
            Principal::Node(id) if id != from => Err(self.denied(
                call,
                format!("node {id}'s certificate cannot send for node {from}"),
            )),
            _ => Ok(()),
        }
    }

    /// The node id of a node caller.
    pub fn node_id(&self) -> Option<u64> {
        match self.principal {
            Principal::Node(id) => Some(id),
            _ => None,
        }
    }
}

/// An audit event: an admin call and its outcome (target `stockpile::audit`).
pub fn audit_call(identity: &str, call: &'static str, outcome: &Result<(), &Error>) {
    match outcome {
        Ok(()) => {
            tracing::info!(target: "stockpile::audit", identity, call, outcome = "ok", "admin call")
        }
        Err(e) => {
            tracing::info!(target: "stockpile::audit", identity, call, outcome = "error", error = %e, "admin call")
        }
    }
}

/// An audit event for a denied call, and its count.
pub fn audit_denied(identity: &str, call: &'static str, e: &Error) {
    let reason = crate::api::status::reason_name(e);
    tracing::warn!(target: "stockpile::audit", identity, call, outcome = "denied", reason, error = %e, "call denied");
    metrics::counter!(names::AUTH_DENIED_TOTAL, "call" => call, "reason" => reason).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_is_parsed_once_and_the_subject_cache_stays_bounded() {
        let cache = SubjectCache::default();
        let parses = std::cell::Cell::new(0);
        let parse = |der: &[u8]| {
            parses.set(parses.get() + 1);
            Ok((CLIENT_UNIT.to_string(), format!("c{}", der.len())))
        };
        for _ in 0..3 {
            let got = cache.get_or_parse(b"abc", parse).unwrap();
            assert_eq!(got, (CLIENT_UNIT.to_string(), "c3".to_string()));
        }
        assert_eq!(parses.get(), 1, "parsed once, then answered from the cache");
        let refused = cache.get_or_parse(b"bad", |_| Err("unreadable".to_string()));
        assert_eq!(refused, Err("unreadable".to_string()));
        assert_eq!(cache.len(), 1, "a refusal is not remembered");
        for i in 0..SubjectCache::ENTRIES_MAX as u32 {
            cache.get_or_parse(&i.to_be_bytes(), parse).unwrap();
        }
        assert!(cache.len() <= SubjectCache::ENTRIES_MAX);
    }

    fn client(role: Role, prefixes: &[&str]) -> Caller {
        Caller {
            name: "c".into(),
            principal: Principal::Client(Grant {
                role,
                prefixes: prefixes.iter().map(|p| p.to_string()).collect(),
            }),
        }
    }

    #[test]
    fn roles_include_the_ones_before_them() {
        let reader = client(Role::Reader, &[]);
        assert!(reader.authorize("get", Need::Read).is_ok());
        assert!(reader.authorize("status", Need::Status).is_ok());
        assert!(reader.authorize("decrement", Need::Write).is_err());
        let writer = client(Role::Writer, &[]);
        assert!(writer.authorize("decrement", Need::Write).is_ok());
        let e = writer
            .authorize("transfer_leader", Need::Operator)
            .unwrap_err();
        assert!(matches!(e, Error::PermissionDenied { .. }), "{e}");
        assert!(
            client(Role::Admin, &[])
                .authorize("allow_rebuild", Need::Operator)
                .is_ok()
        );
        assert!(
            client(Role::Admin, &[])
                .authorize("vote", Need::Raft)
                .is_err()
        );
        let node = Caller {
            name: "node-2".into(),
            principal: Principal::Node(2),
        };
        assert!(node.authorize("vote", Need::Raft).is_ok());
        assert!(node.authorize("node_status", Need::Status).is_ok());
        assert!(node.authorize("decrement", Need::Write).is_err());
    }

    #[test]
    fn prefixes_scope_every_sku() {
        let scoped = client(Role::Writer, &["eu-", "uk-"]);
        assert!(scoped.check_skus("batch", ["eu-1", "uk-2"]).is_ok());
        let e = scoped.check_skus("batch", ["eu-1", "us-3"]).unwrap_err();
        assert!(e.to_string().contains("us-3"), "{e}");
        assert!(
            client(Role::Writer, &[])
                .check_skus("batch", ["anything"])
                .is_ok()
        );
    }
}
