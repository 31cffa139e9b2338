//! Certificates and tokens for a cluster (docs/SECURITY.md): one CA, a certificate per
//! node (subject OU=nodes, CN=node-<id>; SANs: the node's host, 127.0.0.1, localhost),
//! a certificate per client (OU=clients, CN=<name>), and the access file's grants and
//! bearer tokens (stored as SHA-256 hashes). `stockpile certs` and the test clusters
//! use it, so a newcomer's cluster and CI's are secured the same way.
//!
//! Files in a certificate directory: `ca.pem`, `ca.key`, `node-<id>.pem|.key`,
//! `client-<name>.pem|.key`. Keys are written with mode 0600, every file atomically.

use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};

/// The subject OU of node certificates: the store treats `CN=node-<id>` under it as
/// that node (Raft traffic), and nothing else.
pub const NODE_UNIT: &str = "nodes";
/// The subject OU of client certificates: the CN names a grant in the access file.
pub const CLIENT_UNIT: &str = "clients";
/// How long a CA certificate is valid.
pub const CA_VALIDITY_DAYS: i64 = 3650;
/// How long node and client certificates are valid unless told otherwise.
pub const LEAF_VALIDITY_DAYS_DEFAULT: i64 = 365;
/// Certificates are valid from this long before they are made (clock skew).
const BACKDATE_MINUTES: i64 = 60;

/// Why a certificate or token could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// rcgen refused (a bad CA file, an unusable name).
    #[error("cannot make the certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// An argument broke a rule.
    #[error("{what}: {problem}")]
    Invalid {
        /// The argument.
        what: String,
        /// The rule it broke.
        problem: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CertError + '_ {
    move |source| CertError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` to `path` atomically (a temporary file renamed over it); `secret`
/// files are readable by their owner only.
fn write_file(path: &Path, bytes: &[u8], secret: bool) -> Result<(), CertError> {
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::minutes(BACKDATE_MINUTES);
    params.not_after = now + Duration::days(days);
}

/// A certificate authority on disk: `ca.pem` and `ca.key` in `dir`.
pub struct Authority {
    dir: PathBuf,
    cert_pem: String,
    key: KeyPair,
}

/// A certificate and its key, as files.
#[derive(Clone, Debug)]
pub struct Issued {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM, mode 0600).
    pub key: PathBuf,
}

impl Authority {
    /// Makes a new CA in `dir` (refusing to overwrite one: every certificate it issued
    /// would stop verifying).
    pub fn create(dir: &Path, cluster_name: &str) -> Result<Authority, CertError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let cert_path = dir.join("ca.pem");
        if cert_path.exists() {
            return Err(CertError::Invalid {
                what: cert_path.display().to_string(),
                problem: "a CA exists already; remove the directory to start over".into(),
            });
        }
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("stockpile CA {cluster_name}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        validity(&mut params, CA_VALIDITY_DAYS);
        let cert = params.self_signed(&key)?;
        write_file(&dir.join("ca.key"), key.serialize_pem().as_bytes(), true)?;
        write_file(&cert_path, cert.pem().as_bytes(), false)?;
        Ok(Authority {
            dir: dir.to_path_buf(),
            cert_pem: cert.pem(),
            key,
        })
    }

    /// The CA in `dir`.
    pub fn open(dir: &Path) -> Result<Authority, CertError> {
        let cert_path = dir.join("ca.pem");
        let key_path = dir.join("ca.key");
        let cert_pem = std::fs::read_to_string(&cert_path).map_err(io(&cert_path))?;
        let key_pem = std::fs::read_to_string(&key_path).map_err(io(&key_path))?;
        Ok(Authority {
            dir: dir.to_path_buf(),
            cert_pem,
            key: KeyPair::from_pem(&key_pem)?,
        })
    }

    /// The CA certificate's path.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A certificate for node `node_id`, valid for the hosts it is dialled at.
    pub fn issue_node(
        &self,
        node_id: u64,
        hosts: &[String],
        days: i64,
    ) -> Result<Issued, CertError> {
        let mut names = vec!["127.0.0.1".to_string(), "localhost".to_string()];
        for h in hosts {
            if !names.contains(h) {
                names.push(h.clone());
            }
        }
        let mut params = CertificateParams::new(names)?;
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.issue(params, NODE_UNIT, &format!("node-{node_id}"), days)
    }

    /// A certificate for the client identity `name` (the access file grants it a role).
    pub fn issue_client(&self, name: &str, days: i64) -> Result<Issued, CertError> {
        check_name(name)?;
        let mut params = CertificateParams::default();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params, CLIENT_UNIT, name, days)
    }

    fn issue(
        &self,
        mut params: CertificateParams,
        unit: &str,
        name: &str,
        days: i64,
    ) -> Result<Issued, CertError> {
        if days < 1 {
            return Err(CertError::Invalid {
                what: "days".into(),
                problem: format!("must be at least 1, got {days}"),
            });
        }
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, unit);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, days);
        let key = KeyPair::generate()?;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, &self.key)?;
        let cert = params.signed_by(&key, &issuer)?;
        let stem = if unit == NODE_UNIT {
            name.to_string()
        } else {
            format!("client-{name}")
        };
        let issued = Issued {
            cert: self.dir.join(format!("{stem}.pem")),
            key: self.dir.join(format!("{stem}.key")),
        };
        write_file(&issued.key, key.serialize_pem().as_bytes(), true)?;
        write_file(&issued.cert, cert.pem().as_bytes(), false)?;
        Ok(issued)
    }
}

/// Identity names: what a certificate CN and a file name can both hold.
fn check_name(name: &str) -> Result<(), CertError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok && !name.starts_with("node-") {
        return Ok(());
    }
    Err(CertError::Invalid {
        what: "name".into(),
        problem: format!("{name:?} must be 1..=64 of [A-Za-z0-9._-] and not start with \"node-\""),
    })
}

/// A grant written to the access file: who, which role, which SKU prefixes.
#[derive(Clone, Debug)]
pub struct Grant {
    /// The identity: a client certificate's CN, or a token's name.
    pub name: String,
    /// "reader", "writer" or "admin".
    pub role: String,
    /// Empty: every SKU.
    pub prefixes: Vec<String>,
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

impl Grant {
    fn lines(&self) -> String {
        let prefixes: Vec<String> = self.prefixes.iter().map(|p| toml_str(p)).collect();
        format!(
            "name = {}\nrole = {}\nprefixes = [{}]\n",
            toml_str(&self.name),
            toml_str(&self.role),
            prefixes.join(", ")
        )
    }
}

fn append(access: &Path, entry: &str) -> Result<(), CertError> {
    let mut text = match std::fs::read_to_string(access) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            "# Who may do what: docs/SECURITY.md. Reload with SIGHUP.\n".to_string()
        }
        Err(e) => return Err(io(access)(e)),
    };
    text.push('\n');
    text.push_str(entry);
    write_file(access, text.as_bytes(), true)
}

/// Grants the certificate identity `grant.name` its role.
pub fn grant_identity(access: &Path, grant: &Grant) -> Result<(), CertError> {
    check_name(&grant.name)?;
    append(access, &format!("[[identities]]\n{}", grant.lines()))
}

/// Makes a bearer token for `grant`, valid until `expires_at_ms`, records its hash in
/// the access file, and returns the token (shown once, never stored).
pub fn create_token(access: &Path, grant: &Grant, expires_at_ms: u64) -> Result<String, CertError> {
    check_name(&grant.name)?;
    let secret: [u8; 32] = rand::random();
    let token = format!("spk_{}", hex(&secret));
    append(
        access,
        &format!(
            "[[tokens]]\n{}sha256 = {}\nexpires_at_ms = {expires_at_ms}\n",
            grant.lines(),
            toml_str(&token_hash(&token))
        ),
    )?;
    Ok(token)
}

/// A token's stored form: SHA-256, lowercase hex (the node computes the same).
pub fn token_hash(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificates_name_their_holder() {
        let dir = tempdir();
        let ca = Authority::create(&dir, "t").unwrap();
        let node = ca.issue_node(3, &["10.0.0.3".into()], 30).unwrap();
        let client = ca.issue_client("shop", 30).unwrap();
        assert!(
            std::fs::read_to_string(&node.cert)
                .unwrap()
                .contains("BEGIN CERTIFICATE")
        );
        assert_eq!(node.cert, dir.join("node-3.pem"));
        assert_eq!(client.key, dir.join("client-shop.key"));
        let reopened = Authority::open(&dir).unwrap();
        reopened.issue_client("other", 1).unwrap();
        assert!(
            Authority::create(&dir, "t").is_err(),
            "a CA is never overwritten"
        );
    }

    #[test]
    fn names_that_could_pose_as_nodes_are_refused() {
        for bad in ["", "node-1", "a b", "x/y", &"a".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        check_name("checkout-eu.1").unwrap();
    }

    #[test]
    fn tokens_are_stored_hashed() {
        let dir = tempdir();
        let access = dir.join("access.toml");
        let grant = Grant {
            name: "report".into(),
            role: "reader".into(),
            prefixes: vec!["eu-\"x".into()],
        };
        let token = create_token(&access, &grant, 99).unwrap();
        let text = std::fs::read_to_string(&access).unwrap();
        assert!(!text.contains(&token));
        assert!(text.contains(&token_hash(&token)));
        let parsed: toml::Value = toml::from_str(&text).unwrap();
        assert_eq!(parsed["tokens"][0]["prefixes"][0].as_str(), Some("eu-\"x"));
    }

    fn tempdir() -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("stockpile-certs-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
