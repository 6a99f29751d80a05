//! `azure-rls`: the test rate limit service as a program (for the demo and manual runs).
//!
//! ```text
//! azure-rls [--listen 127.0.0.1:8081] --limits limits.json [--flavor limitador|envoy-ratelimit]
//!           [--redis redis://127.0.0.1:6379]   (counters in Redis: several instances share them)
//! ```
//!
//! `limits.json`: a JSON array of limits in limitador-server's fields:
//! `[{"namespace": "azure-llm", "max_value": 100000, "seconds": 60,
//!    "conditions": [], "variables": ["descriptors[0].workload"]}]`

use azure_rls::{Flavor, LimitSpec, RlsOptions, RlsServer};
use std::process::ExitCode;

fn usage() -> ExitCode {
    eprintln!(
        "usage: azure-rls [--listen ADDR] --limits FILE [--flavor limitador|envoy-ratelimit] [--redis URL]"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut opts = RlsOptions::new(Vec::new());
    opts.addr = ([127, 0, 0, 1], 8081).into();
    let mut limits_file = None;
    while let Some(arg) = args.next() {
        let Some(value) = args.next() else {
            return usage();
        };
        match arg.as_str() {
            "--listen" => match value.parse() {
                Ok(a) => opts.addr = a,
                Err(e) => {
                    eprintln!("azure-rls: --listen {value}: {e}");
                    return ExitCode::from(2);
                }
            },
            "--limits" => limits_file = Some(value),
            "--flavor" => {
                opts.flavor = match value.as_str() {
                    "limitador" => Flavor::Limitador,
                    "envoy-ratelimit" => Flavor::EnvoyRatelimit,
                    _ => return usage(),
                }
            }
            "--redis" => opts.storage = azure_rls::Storage::Redis(value),
            _ => return usage(),
        }
    }
    let Some(limits_file) = limits_file else {
        return usage();
    };
    let limits: Vec<LimitSpec> = match std::fs::read_to_string(&limits_file)
        .map_err(|e| e.to_string())
        .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
    {
        Ok(l) => l,
        Err(e) => {
            eprintln!("azure-rls: {limits_file}: {e}");
            return ExitCode::FAILURE;
        }
    };
    opts.limits = limits;
    let server = match RlsServer::start_blocking(opts) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("azure-rls: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "azure-rls: listening on {} (gRPC, plaintext HTTP/2)",
        server.addr()
    );
    loop {
        std::thread::park();
    }
}
