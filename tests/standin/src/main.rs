//! `azure-standin [--listen 127.0.0.1:8089] [--token-lifetime SECS]`: the stand-in for Entra ID
//! and an Azure OpenAI / Foundry resource with the default configuration, for the demo.

use azure_standin::{StandIn, StandInConfig};
use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;

const USAGE: &str =
    "usage: azure-standin [--listen 127.0.0.1:8089] [--token-lifetime SECS] [--api-key KEY]...";

fn main() -> ExitCode {
    let mut listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 8089));
    let mut cfg = StandInConfig {
        log_requests: true,
        ..StandInConfig::default()
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = || inline.clone().or_else(|| args.next());
        match name.as_str() {
            "--listen" => match value().and_then(|v| v.parse().ok()) {
                Some(a) => listen = a,
                None => return usage_error("--listen needs an address like 127.0.0.1:8089"),
            },
            "--token-lifetime" => match value().and_then(|v| v.parse().ok()) {
                Some(s) => cfg.token_lifetime_secs = s,
                None => return usage_error("--token-lifetime needs a number of seconds"),
            },
            "--api-key" => match value() {
                Some(k) if !k.is_empty() => cfg.api_keys.push(k),
                _ => return usage_error("--api-key needs a value"),
            },
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => return usage_error(&format!("unknown argument {other}")),
        }
    }
    let tenant = cfg.tenant_id.clone();
    let client = cfg
        .clients
        .first()
        .map(|c| c.client_id.clone())
        .unwrap_or_default();
    let standin = match StandIn::start_blocking(listen, cfg) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("azure-standin: cannot listen on {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "azure-standin listening on {} (tenant {tenant}, client {client})",
        standin.addr()
    );
    let _ = std::io::stdout().flush();
    loop {
        std::thread::park();
    }
}

fn usage_error(msg: &str) -> ExitCode {
    eprintln!("azure-standin: {msg}\n{USAGE}");
    ExitCode::from(2)
}
