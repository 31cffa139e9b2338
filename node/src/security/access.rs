//! The access file: who may do what. Certificate identities (named by their
//! certificate's subject CN) and bearer tokens (stored as SHA-256 hashes, never in
//! plain text, each with an expiry), each with a role and optional SKU prefixes.
//!
//! ```toml
//! [[identities]]
//! name = "checkout"          # a client certificate's CN
//! role = "writer"            # reader < writer < admin
//! prefixes = ["eu-"]         # optional: only SKUs starting with one of these
//!
//! [[tokens]]
//! name = "reporting"
//! sha256 = "…64 hex digits…" # of the token; `stockpile token create` writes these
//! role = "reader"
//! expires_at_ms = 1800000000000
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// What an identity may do: each role includes the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Get, List, GetReservation, status.
    Reader,
    /// Plus every mutation and batch.
    Writer,
    /// Plus leadership, rebuild and other operator calls.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Writer => "writer",
            Role::Admin => "admin",
        }
    }
}

/// A grant: a role, optionally limited to SKUs with one of `prefixes`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub role: Role,
    pub prefixes: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IdentityEntry {
    name: String,
    role: Role,
    #[serde(default)]
    prefixes: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    name: String,
    sha256: String,
    role: Role,
    #[serde(default)]
    prefixes: Vec<String>,
    expires_at_ms: u64,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct AccessFile {
    #[serde(default)]
    identities: Vec<IdentityEntry>,
    #[serde(default)]
    tokens: Vec<TokenEntry>,
}

/// A token's entry: whose it is, what it grants, until when.
#[derive(Clone, Debug)]
pub struct TokenGrant {
    pub name: String,
    pub grant: Grant,
    pub expires_at_ms: u64,
}

/// The loaded access file.
#[derive(Clone, Debug, Default)]
pub struct Access {
    identities: BTreeMap<String, Grant>,
    /// By the token's SHA-256, hex.
    tokens: BTreeMap<String, TokenGrant>,
}

/// A token's stored form: SHA-256, lowercase hex.
pub fn token_hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Access {
    pub fn load(path: &Path) -> Result<Access, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Access, String> {
        let file: AccessFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut access = Access::default();
        for i in file.identities {
            let grant = Grant {
                role: i.role,
                prefixes: i.prefixes,
            };
            if access.identities.insert(i.name.clone(), grant).is_some() {
                return Err(format!("identity {:?} appears twice", i.name));
            }
        }
        for t in file.tokens {
            let hash = t.sha256.to_ascii_lowercase();
            if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("token {:?}: sha256 must be 64 hex digits", t.name));
            }
            let grant = TokenGrant {
                name: t.name,
                grant: Grant {
                    role: t.role,
                    prefixes: t.prefixes,
                },
                expires_at_ms: t.expires_at_ms,
            };
            access.tokens.insert(hash, grant);
        }
        Ok(access)
    }

    /// The grant of a certificate identity, if the file names it.
    pub fn identity(&self, name: &str) -> Option<&Grant> {
        self.identities.get(name)
    }

    /// The entry of a presented token, if its hash is known.
    pub fn token(&self, token: &str) -> Option<&TokenGrant> {
        self.tokens.get(&token_hash(token))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_and_hashed_tokens_are_read() {
        let hash = token_hash("spk_secret");
        let text = format!(
            r#"
[[identities]]
name = "checkout"
role = "writer"
prefixes = ["eu-"]

[[tokens]]
name = "reporting"
sha256 = "{hash}"
role = "reader"
expires_at_ms = 42
"#
        );
        let a = Access::parse(&text).unwrap();
        let g = a.identity("checkout").unwrap();
        assert_eq!(
            (g.role, g.prefixes.clone()),
            (Role::Writer, vec!["eu-".into()])
        );
        let t = a.token("spk_secret").unwrap();
        assert_eq!(
            (t.name.as_str(), t.grant.role, t.expires_at_ms),
            ("reporting", Role::Reader, 42)
        );
        assert!(a.token("spk_other").is_none());
        assert!(!text.contains("spk_secret"), "the file holds only the hash");
        assert!(Role::Reader < Role::Writer && Role::Writer < Role::Admin);
    }

    #[test]
    fn a_bad_file_says_what_is_wrong() {
        let e = Access::parse(
            "[[tokens]]\nname = \"x\"\nsha256 = \"zz\"\nrole = \"reader\"\nexpires_at_ms = 1\n",
        )
        .unwrap_err();
        assert!(e.contains("64 hex digits"), "{e}");
        let e = Access::parse("[[identities]]\nname = \"x\"\nrole = \"root\"\n").unwrap_err();
        assert!(e.contains("root"), "{e}");
    }
}
