//! `stockpile certs` and `stockpile token`: offline commands that make a cluster's
//! certificates, grants and bearer tokens (docs/SECURITY.md). They touch files only,
//! never a node; nodes pick changes up on SIGHUP.

use std::path::Path;

use serde::Deserialize;
use serde_json::json;
use stockpile_client::Error;
use stockpile_client::certs::{self, Authority, CertError, Grant};

use crate::args::{CertsCmd, TokenCmd};
use crate::output::print_json;

fn config_error(e: CertError) -> Error {
    Error::Config {
        message: e.to_string(),
    }
}

/// The part of a cluster file `certs init` needs: its name and node addresses.
#[derive(Deserialize)]
struct ClusterFile {
    cluster_name: String,
    nodes: Vec<NodeEntry>,
}

#[derive(Deserialize)]
struct NodeEntry {
    id: u64,
    addr: String,
}

fn read_cluster(path: &Path) -> Result<ClusterFile, Error> {
    let bad = |problem: String| Error::Config {
        message: format!("{}: {problem}", path.display()),
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    toml::from_str(&text).map_err(|e| bad(e.to_string()))
}

/// The host part of `host:port` (IPv6 brackets removed).
fn host_of(addr: &str) -> String {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .to_string()
}

pub fn certs(cmd: CertsCmd, json_out: bool) -> Result<(), Error> {
    match cmd {
        CertsCmd::Init { dir, config, days } => init(&dir, &config, days, json_out),
        CertsCmd::Node {
            dir,
            node,
            hosts,
            days,
        } => {
            let ca = Authority::open(&dir).map_err(config_error)?;
            let issued = ca.issue_node(node, &hosts, days).map_err(config_error)?;
            report(json_out, "node", &issued);
            Ok(())
        }
        CertsCmd::Client {
            dir,
            name,
            grant,
            days,
        } => {
            let ca = Authority::open(&dir).map_err(config_error)?;
            let issued = ca.issue_client(&name, days).map_err(config_error)?;
            certs::grant_identity(&grant.access, &grant.grant(&name)).map_err(config_error)?;
            report(json_out, "client", &issued);
            Ok(())
        }
    }
}

fn report(json_out: bool, what: &str, issued: &certs::Issued) {
    if json_out {
        print_json(&json!({ "cert": issued.cert, "key": issued.key }));
    } else {
        println!(
            "{what} certificate {} (key {})",
            issued.cert.display(),
            issued.key.display()
        );
    }
}

fn init(dir: &Path, config: &Path, days: i64, json_out: bool) -> Result<(), Error> {
    let cluster = read_cluster(config)?;
    let ca = Authority::create(dir, &cluster.cluster_name).map_err(config_error)?;
    for n in &cluster.nodes {
        ca.issue_node(n.id, &[host_of(&n.addr)], days)
            .map_err(config_error)?;
    }
    let admin = ca.issue_client("admin", days).map_err(config_error)?;
    let access = dir.join("access.toml");
    let grant = Grant {
        name: "admin".into(),
        role: "admin".into(),
        prefixes: Vec::new(),
    };
    certs::grant_identity(&access, &grant).map_err(config_error)?;
    let env = dir.join("env.sh");
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let text = format!(
        "# Source this to use the CLI as `admin`: . {}\nexport STOCKPILE_CA={:?}\nexport STOCKPILE_CERT={:?}\nexport STOCKPILE_KEY={:?}\n",
        env.display(),
        abs(&ca.ca_path()),
        abs(&admin.cert),
        abs(&admin.key),
    );
    std::fs::write(&env, text).map_err(|e| Error::Config {
        message: format!("{}: {e}", env.display()),
    })?;
    if json_out {
        print_json(
            &json!({ "dir": dir, "nodes": cluster.nodes.len(), "access": access, "env": env }),
        );
    } else {
        println!(
            "CA, {} node certificate(s) and the admin client in {}; access file {}; `. {}` sets the CLI's credentials",
            cluster.nodes.len(),
            dir.display(),
            access.display(),
            env.display()
        );
    }
    Ok(())
}

pub fn token(cmd: TokenCmd, json_out: bool) -> Result<(), Error> {
    let TokenCmd::Create { name, grant, ttl } = cmd;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let expires_at_ms = now_ms.saturating_add(ttl.as_millis() as u64);
    let token = certs::create_token(&grant.access, &grant.grant(&name), expires_at_ms)
        .map_err(config_error)?;
    if json_out {
        print_json(&json!({ "name": name, "token": token, "expires_at_ms": expires_at_ms }));
    } else {
        println!("{token}");
        eprintln!(
            "token for {name}, valid until {expires_at_ms} ms since the epoch; shown once, stored only as a hash in {} (nodes apply it on SIGHUP)",
            grant.access.display()
        );
    }
    Ok(())
}
