//! `stockpile`: the command-line client of Stockpile, on the client library.
//!
//! Exit status: 0 success; 1 refused by the store (insufficient stock, not found,
//! ...); 2 bad usage or invalid input; 3 unavailable or timed out (the outcome of a
//! mutation may be unknown: the error names its request id, and `--request-id`
//! retries it safely).
//!
//! Modules: `args` (clap), `commands` (one function per command group), `certs`
//! (certificates and tokens, offline), `output`
//! (tables and JSON), `bench` (the load generator), `svg` (its plot).

mod args;
mod bench;
mod certs;
mod commands;
mod elastic;
mod output;
mod svg;

use std::process::ExitCode;

use clap::Parser;
use serde_json::json;
use stockpile_client::{Client, ClientBuilder, Error, LOCAL_CLUSTER, TlsOptions, request_id_hex};

use args::{Cli, Command};
use output::print_json;

fn exit_code(e: &Error) -> u8 {
    match e {
        e if e.is_refusal() => 1,
        Error::NodeNotFound { .. }
        | Error::ShardNotFound { .. }
        | Error::Unauthenticated { .. }
        | Error::PermissionDenied { .. } => 1,
        Error::InvalidArgument { .. }
        | Error::RequestIdReused { .. }
        | Error::CrossShard { .. }
        | Error::RequestTooLarge { .. }
        | Error::Config { .. } => 2,
        _ => 3,
    }
}

/// A client builder from the global flags: seeds, region, deadline, credentials.
fn builder(cli: &Cli) -> Result<ClientBuilder, Error> {
    let endpoints: Vec<String> = if cli.endpoints.is_empty() {
        LOCAL_CLUSTER.iter().map(|s| s.to_string()).collect()
    } else {
        cli.endpoints.clone()
    };
    let mut builder = Client::builder()
        .seeds(endpoints)
        .request_timeout(cli.timeout);
    if let Some(r) = &cli.region {
        builder = builder.region(r.clone());
    }
    if cli.no_coalescing {
        builder = builder.no_coalescing();
    }
    let c = &cli.credentials;
    if let Some(ca) = &c.ca {
        let pair = c.cert.as_deref().zip(c.key.as_deref());
        builder = builder.tls(TlsOptions::from_files(ca, pair)?);
    }
    if let Some(t) = &c.token {
        builder = builder.token(t.clone());
    }
    Ok(builder)
}

async fn run(cli: Cli) -> Result<(), Error> {
    match cli.command {
        Command::Certs(cmd) => return certs::certs(cmd, cli.json),
        Command::Token(cmd) => return certs::token(cmd, cli.json),
        _ => {}
    }
    let builder = builder(&cli)?;
    if let Command::Bench(args) = cli.command {
        let ok = bench::run(builder, args, cli.json).await?;
        return if ok {
            Ok(())
        } else {
            Err(Error::Internal {
                message: "the drain check failed".into(),
            })
        };
    }
    let client = builder.build().await?;
    commands::run(&client, cli.command, cli.json).await
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.json;
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if json {
                let mut v = json!({ "error": e.reason(), "message": e.to_string(), "definite": e.is_definite() });
                if let Error::OutcomeUnknown { request_id, .. } = &e {
                    v["request_id"] = json!(request_id_hex(request_id));
                }
                print_json(&v);
            }
            eprintln!("stockpile: {e}");
            ExitCode::from(exit_code(&e))
        }
    }
}
