//! `check-config`: validates azure-llm-filter plugin configurations offline, with the filter's
//! own parser, and prints the message the filter would log in Envoy.
//!
//! ```text
//! cargo run --features schema --bin check-config -- [--check-env] FILE...
//! cargo run --features schema --bin check-config -- --print-schema
//! make check-config CONFIG=envoy/envoy.yaml
//! ```
//!
//! A FILE is a plugin configuration (the JSON of the Wasm filter's `configuration`, or the same
//! object written as YAML), an Envoy bootstrap or Istio EnvoyFilter (every Wasm filter whose
//! name, root_id, vm_id or code names azure_llm_filter / azure-llm-filter is checked), or an
//! Istio WasmPlugin (its `pluginConfig`, serialised to JSON the way istiod does). `-` is stdin.
//!
//! One line per plugin configuration: `<where>: OK` or `<where>: invalid plugin configuration:
//! <field>: <reason>`; then, for failover pools, `<where>: invalid failover pool: ...` when a
//! pool's upstream filter has other credentials, backends or models than the listener filter
//! of the same file (and a `note:` line when it is not in the file). Then the production lints
//! of every Envoy bootstrap and Istio object in the file (`azure_llm_filter::lint`): one
//! `<file>: hazard: <resource>: <problem>; fix: <fix>` line per finding. Exit status 0 when
//! every configuration is valid and nothing is hazardous (`--warn-only`: hazards are printed
//! but do not fail), 1 otherwise, 2 for a bad command line.
//!
//! Native only: this binary needs the `schema` feature (`required-features`), so the wasm build
//! of the package builds the filter alone.

use azure_llm_filter::config::{resolve_secrets, Config, ConfigError};
use azure_llm_filter::entra::credential::CredentialKind;
use azure_llm_filter::entra::workload_identity::{ENV_CLIENT_ID, ENV_TENANT_ID};
use base64::Engine as _;
use serde::Deserialize as _;
use serde_json::Value as Json;
use serde_yaml::Value as Yaml;
use std::collections::BTreeMap;
use std::io::Read;
use std::process::ExitCode;

const USAGE: &str = "\
usage: check-config [--check-env] FILE...
       check-config --print-schema

Validates azure-llm-filter plugin configurations with the filter's own parser and prints
`<where>: OK` or the message the filter logs when Envoy loads it
(`invalid plugin configuration: <field>: <reason>`).

FILE: a plugin configuration (JSON, or the same object in YAML), an Envoy bootstrap or Istio
EnvoyFilter YAML (every azure-llm-filter Wasm filter in it), or an Istio WasmPlugin (its
pluginConfig, as istiod serialises it). `-` reads standard input.

  --check-env     also resolve the secrets named by environment variable (`*_env` fields), as
                  the filter does when it starts: from the Wasm VM's environment as the file
                  defines it (vm_config.environment_variables key_values, and host_env_keys /
                  WasmPlugin `valueFrom: HOST` read from this process's environment), or from
                  this process's environment for a bare plugin configuration
  --warn-only     print production hazards of Envoy bootstraps and Istio manifests (upstream
                  TLS that does not verify, ...) without failing on them
  --print-schema  print the JSON Schema of the plugin configuration
                  (schema/plugin-config.schema.json)

Envoy bootstraps and Istio manifests are also linted for production hazards: one line
`<file>: hazard: <resource>: <problem>; fix: <fix>` each.

Exit status: 0 all valid and no hazard, 1 something invalid or hazardous (hazards do not count
with --warn-only) or nothing to check, 2 bad usage.";

fn main() -> ExitCode {
    let mut check_env = false;
    let mut warn_only = false;
    let mut print_schema = false;
    let mut files = Vec::new();
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--check-env" => check_env = true,
            "--warn-only" => warn_only = true,
            "--print-schema" => print_schema = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            a if a.starts_with("--") => {
                eprintln!("check-config: unknown option {a}\n\n{USAGE}");
                return ExitCode::from(2);
            }
            _ => files.push(arg),
        }
    }
    if print_schema {
        if !files.is_empty() || check_env || warn_only {
            eprintln!("check-config: --print-schema takes no other argument");
            return ExitCode::from(2);
        }
        let schema = azure_llm_filter::config::json_schema();
        match serde_json::to_string_pretty(&schema) {
            Ok(text) => {
                println!("{text}");
                return ExitCode::SUCCESS;
            }
            Err(e) => {
                eprintln!("check-config: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    if files.is_empty() {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    }

    let mut checked = 0usize;
    let mut failed = false;
    for file in &files {
        let bytes = match read_input(file) {
            Ok(b) => b,
            Err(e) => {
                println!("{file}: cannot read: {e}");
                failed = true;
                continue;
            }
        };
        let found = match find_configs(&bytes) {
            Ok(found) => found,
            Err(e) => {
                println!("{file}: {e}");
                failed = true;
                continue;
            }
        };
        let hazards = lint_file(&bytes);
        if let Some(findings) = &hazards {
            checked += 1;
            for f in findings {
                println!("{file}: hazard: {f}");
            }
            if findings.is_empty() {
                println!("{file}: no production hazard");
            }
            failed |= !warn_only && !findings.is_empty();
        }
        if found.is_empty() {
            if hazards.is_none() {
                println!("{file}: no azure-llm-filter plugin configuration in this file (skipped)");
            }
            continue;
        }
        let mut valid = Vec::new();
        for f in found {
            checked += 1;
            let place = if f.location.is_empty() {
                file.clone()
            } else {
                format!("{file}: {}", f.location)
            };
            match check(&f, check_env) {
                Ok(config) => {
                    println!("{place}: OK");
                    valid.push((place, config, !f.location.is_empty()));
                }
                Err(message) => {
                    println!("{place}: {message}");
                    failed = true;
                }
            }
        }
        for line in check_pools(file, &valid) {
            println!("{line}");
            failed |= !line.contains(": note: ");
        }
    }
    if checked == 0 && !failed {
        println!("check-config: nothing checked");
        failed = true;
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// The production lints of every Envoy bootstrap and Istio object in a YAML (or JSON) file;
/// None when it holds neither (a bare plugin configuration, text that is not YAML).
fn lint_file(bytes: &[u8]) -> Option<Vec<azure_llm_filter::lint::Finding>> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut linted = None;
    for doc in serde_yaml::Deserializer::from_str(text) {
        let doc = Json::deserialize(doc).ok()?;
        if let Some(found) = azure_llm_filter::lint::document(&doc) {
            linted.get_or_insert_with(Vec::new).extend(found);
        }
    }
    linted
}

fn read_input(file: &str) -> std::io::Result<Vec<u8>> {
    if file == "-" {
        let mut buf = Vec::new();
        std::io::stdin().read_to_end(&mut buf)?;
        Ok(buf)
    } else {
        std::fs::read(file)
    }
}

/// One plugin configuration found in a file, as the filter would receive it.
struct Found {
    /// Where it is in the file (empty: the whole file).
    location: String,
    /// The bytes the filter gets from `get_plugin_configuration`, or why there are none.
    bytes: Result<Vec<u8>, String>,
    /// The Wasm VM's environment, as far as the file defines it.
    env: VmEnv,
}

/// Where `*_env` secrets are looked up with `--check-env`.
enum VmEnv {
    /// A bare plugin configuration: this process's environment.
    Process,
    /// An Envoy `vm_config.environment_variables` / a WasmPlugin `vmConfig.env`: inline values,
    /// and names passed through from the proxy's (here: this process's) environment.
    Vm {
        key_values: BTreeMap<String, String>,
        host_keys: Vec<String>,
    },
}

impl VmEnv {
    /// Whether the file gives the VM this variable at all (a bare configuration: unknown, yes).
    fn passes(&self, name: &str) -> bool {
        match self {
            VmEnv::Process => true,
            VmEnv::Vm {
                key_values,
                host_keys,
            } => key_values.contains_key(name) || host_keys.iter().any(|k| k == name),
        }
    }

    fn lookup(&self, name: &str) -> Option<String> {
        match self {
            VmEnv::Process => std::env::var(name).ok(),
            VmEnv::Vm {
                key_values,
                host_keys,
            } => key_values.get(name).cloned().or_else(|| {
                host_keys
                    .iter()
                    .any(|k| k == name)
                    .then(|| std::env::var(name).ok())
                    .flatten()
            }),
        }
    }
}

/// Runs what the filter runs when Envoy configures it: `Config::parse`, then (with
/// `--check-env`) `resolve_secrets`. The error is the line the filter logs.
fn check(found: &Found, check_env: bool) -> Result<Config, String> {
    let bytes = found.bytes.as_ref().map_err(Clone::clone)?;
    let config = Config::parse(bytes).map_err(|e: ConfigError| e.to_string())?;
    workload_identity_env(&config, &found.env, check_env)?;
    if check_env {
        resolve_secrets(&config, |name| found.env.lookup(name)).map_err(|e| e.to_string())?;
        if let Some(g) = &config.guardrails {
            if config.role == azure_llm_filter::failover::Role::Downstream {
                g.resolve_key(|name| found.env.lookup(name))
                    .map_err(|e| e.to_string())?;
            }
        }
    }
    Ok(config)
}

/// Failover pools across the configurations of one file: a pool's upstream filter (`"role":
/// "upstream"`) must have the listener filter's credentials, backends and models (it rewrites
/// each attempt from them); a pool whose upstream filter is not in the file gets a note (it may
/// be configured elsewhere, e.g. by CDS). `valid`: (where, config, found inside an Envoy or
/// Istio document). Lines with `: note: ` do not fail the check.
fn check_pools(file: &str, valid: &[(String, Config, bool)]) -> Vec<String> {
    use azure_llm_filter::failover::Role;
    let same = |a: &Config, b: &Config| {
        a.credentials == b.credentials && a.backends == b.backends && a.models == b.models
    };
    let (upstream, downstream): (Vec<_>, Vec<_>) =
        valid.iter().partition(|(_, c, _)| c.role == Role::Upstream);
    let mut lines = Vec::new();
    for (place, up, _) in &upstream {
        if !downstream.is_empty() && !downstream.iter().any(|(_, d, _)| same(d, up)) {
            lines.push(format!(
                "{place}: invalid failover pool: this upstream filter's credentials, backends or \
                 models differ from the listener filter's in this file; they must be the same"
            ));
        }
    }
    for (place, d, embedded) in &downstream {
        let mut pools: Vec<&str> = d
            .models
            .values()
            .filter(|m| m.is_pool())
            .map(|m| m.name.as_str())
            .collect();
        pools.sort_unstable();
        pools.dedup();
        if let Some(model) = pools.first() {
            if *embedded && !upstream.iter().any(|(_, u, _)| same(d, u)) {
                lines.push(format!(
                    "{file}: note: model `{model}` ({place}) is a failover pool; its aggregate \
                     cluster needs this filter as upstream filter (\"role\": \"upstream\"), which is \
                     not in this file"
                ));
            }
        }
    }
    lines
}

/// A `workload_identity` credential leaves tenant and client id to the AKS webhook's
/// variables; the filter accepts the configuration without them but answers every request 503.
/// Here that is an error: a variable the file does not pass to the VM (`host_env_keys`,
/// `key_values`), or with `--check-env` one that is not set.
fn workload_identity_env(config: &Config, env: &VmEnv, check_env: bool) -> Result<(), String> {
    for c in &config.credentials {
        let CredentialKind::WorkloadIdentity(wi) = &c.kind else {
            continue;
        };
        let needed = [
            ("tenant_id", wi.tenant_id.is_none(), ENV_TENANT_ID),
            ("client_id", wi.client_id.is_none(), ENV_CLIENT_ID),
        ];
        for (field, from_env, var) in needed {
            if !from_env {
                continue;
            }
            let problem = if !env.passes(var) {
                Some(format!(
                    "not given, and {var} is not passed to the Wasm VM (list it in \
                     vm_config.environment_variables.host_env_keys)"
                ))
            } else if check_env && env.lookup(var).is_none_or(|v| v.trim().is_empty()) {
                Some(format!("not given, and {var} is not set"))
            } else {
                None
            };
            if let Some(p) = problem {
                return Err(format!(
                    "credentials.{}.{field}: {p}: the filter would answer every request 503 \
                     backend_token_unavailable",
                    c.name
                ));
            }
        }
    }
    Ok(())
}

/// Top-level keys of a plugin configuration (at least one is required in any valid one).
const PLUGIN_KEYS: [&str; 3] = ["credentials", "backends", "models"];

fn find_configs(bytes: &[u8]) -> Result<Vec<Found>, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_string())?;
    if text.trim_start().starts_with('{') {
        // JSON: a plugin configuration, given to the filter byte for byte, unless it is an
        // Envoy bootstrap or a Kubernetes object in JSON form.
        let is_container = serde_json::from_str::<Json>(text).is_ok_and(|v| {
            v.as_object().is_some_and(|o| {
                !PLUGIN_KEYS.iter().any(|k| o.contains_key(*k))
                    && (o.contains_key("static_resources")
                        || o.contains_key("dynamic_resources")
                        || o.contains_key("apiVersion"))
            })
        });
        if !is_container {
            return Ok(vec![Found {
                location: String::new(),
                bytes: Ok(bytes.to_vec()),
                env: VmEnv::Process,
            }]);
        }
    }
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value = Yaml::deserialize(doc).map_err(|e| format!("not valid YAML: {e}"))?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    let multi = docs.len() > 1;
    let mut found = Vec::new();
    for (i, doc) in docs.iter().enumerate() {
        let label = doc_label(doc, i, multi);
        let plugin_like = doc
            .as_mapping()
            .is_some_and(|m| PLUGIN_KEYS.iter().any(|k| m.contains_key(*k)));
        if plugin_like {
            // The plugin configuration itself, written as YAML.
            found.push(Found {
                location: label,
                bytes: serde_json::to_vec(doc).map_err(|e| e.to_string()),
                env: VmEnv::Process,
            });
        } else if doc.get("kind").and_then(Yaml::as_str) == Some("WasmPlugin") {
            if let Some(f) = wasm_plugin(doc, &label) {
                found.push(f);
            }
        } else {
            walk(doc, String::new(), &label, &mut found);
        }
    }
    Ok(found)
}

/// `document N (Kind namespace/name)` for Kubernetes objects, `document N` in a multi-document
/// file, nothing otherwise.
fn doc_label(doc: &Yaml, index: usize, multi: bool) -> String {
    let kind = doc.get("kind").and_then(Yaml::as_str);
    let meta = doc.get("metadata");
    let name = meta.and_then(|m| m.get("name")).and_then(Yaml::as_str);
    let ns = meta.and_then(|m| m.get("namespace")).and_then(Yaml::as_str);
    let object = match (kind, name) {
        (Some(k), Some(n)) => Some(match ns {
            Some(ns) => format!("{k} {ns}/{n}"),
            None => format!("{k} {n}"),
        }),
        (Some(k), None) => Some(k.to_string()),
        _ => None,
    };
    match (multi, object) {
        (true, Some(o)) => format!("document {} ({o})", index + 1),
        (true, None) => format!("document {}", index + 1),
        (false, Some(o)) => o,
        (false, None) => String::new(),
    }
}

fn join(label: &str, path: &str) -> String {
    match (label.is_empty(), path.is_empty()) {
        (true, _) => path.to_string(),
        (false, true) => label.to_string(),
        (false, false) => format!("{label}: {path}"),
    }
}

/// Finds every Envoy Wasm `PluginConfig` (a mapping with `vm_config`) of this filter.
fn walk(v: &Yaml, path: String, label: &str, out: &mut Vec<Found>) {
    match v {
        Yaml::Mapping(m) => {
            if m.contains_key("vm_config") {
                if is_ours(v) {
                    out.push(envoy_plugin_config(v, join(label, &path)));
                }
                return;
            }
            for (k, child) in m {
                let key = match k {
                    Yaml::String(s) => s.clone(),
                    other => serde_yaml::to_string(other)
                        .map(|s| s.trim().to_string())
                        .unwrap_or_default(),
                };
                let p = if path.is_empty() {
                    key
                } else {
                    format!("{path}.{key}")
                };
                walk(child, p, label, out);
            }
        }
        Yaml::Sequence(items) => {
            for (i, child) in items.iter().enumerate() {
                walk(child, format!("{path}[{i}]"), label, out);
            }
        }
        Yaml::Tagged(t) => walk(&t.value, path, label, out),
        _ => {}
    }
}

fn names_this_filter(s: &str) -> bool {
    s.contains("azure_llm_filter") || s.contains("azure-llm-filter")
}

/// Whether an Envoy Wasm PluginConfig is this filter's: by name, root_id, vm_id or code.
fn is_ours(plugin: &Yaml) -> bool {
    let at = |path: &[&str]| -> Option<&str> {
        let mut v = plugin;
        for key in path {
            v = v.get(*key)?;
        }
        v.as_str()
    };
    [
        at(&["name"]),
        at(&["root_id"]),
        at(&["vm_config", "vm_id"]),
        at(&["vm_config", "code", "local", "filename"]),
        at(&["vm_config", "code", "remote", "http_uri", "uri"]),
    ]
    .into_iter()
    .flatten()
    .any(names_this_filter)
}

const STRING_VALUE: &str = "type.googleapis.com/google.protobuf.StringValue";
const BYTES_VALUE: &str = "type.googleapis.com/google.protobuf.BytesValue";

/// The bytes Envoy hands the filter for a PluginConfig's `configuration` (an Any): the value of
/// a StringValue or BytesValue; nothing when it is absent.
fn envoy_plugin_config(plugin: &Yaml, location: String) -> Found {
    let location = format!("{location}.configuration")
        .trim_start_matches('.')
        .to_string();
    let bytes = match plugin.get("configuration") {
        None | Some(Yaml::Null) => Ok(Vec::new()),
        Some(any) => match any.get("@type").and_then(Yaml::as_str) {
            Some(STRING_VALUE) => match any.get("value") {
                None | Some(Yaml::Null) => Ok(Vec::new()),
                Some(Yaml::String(s)) => Ok(s.clone().into_bytes()),
                Some(_) => Err("configuration.value: must be a string holding the plugin \
                                configuration JSON"
                    .to_string()),
            },
            Some(BYTES_VALUE) => match any.get("value") {
                None | Some(Yaml::Null) => Ok(Vec::new()),
                Some(Yaml::String(s)) => base64::engine::general_purpose::STANDARD
                    .decode(s.trim())
                    .map_err(|_| "configuration.value: a BytesValue holds base64".to_string()),
                Some(_) => Err("configuration.value: a BytesValue holds base64".to_string()),
            },
            other => Err(format!(
                "configuration: must be a {STRING_VALUE} holding the plugin configuration \
                 JSON (got {}); other types do not reach the filter as JSON",
                other.unwrap_or("no @type")
            )),
        },
    };
    let env_vars = plugin
        .get("vm_config")
        .and_then(|vm| vm.get("environment_variables"));
    let key_values = env_vars
        .and_then(|e| e.get("key_values"))
        .and_then(Yaml::as_mapping)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.as_str()?.to_string(), scalar_string(v)?)))
                .collect()
        })
        .unwrap_or_default();
    let host_keys = env_vars
        .and_then(|e| e.get("host_env_keys"))
        .and_then(Yaml::as_sequence)
        .map(|s| {
            s.iter()
                .filter_map(|k| k.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    Found {
        location,
        bytes,
        env: VmEnv::Vm {
            key_values,
            host_keys,
        },
    }
}

fn scalar_string(v: &Yaml) -> Option<String> {
    match v {
        Yaml::String(s) => Some(s.clone()),
        Yaml::Number(n) => Some(n.to_string()),
        Yaml::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// An Istio WasmPlugin of this filter (by `spec.url`, `spec.pluginName` or `metadata.name`).
fn wasm_plugin(doc: &Yaml, label: &str) -> Option<Found> {
    let spec = doc.get("spec")?;
    let s = |v: Option<&Yaml>| v.and_then(Yaml::as_str).unwrap_or_default().to_string();
    let ours = [
        s(spec.get("url")),
        s(spec.get("pluginName")),
        s(doc.get("metadata").and_then(|m| m.get("name"))),
    ]
    .iter()
    .any(|v| names_this_filter(v));
    if !ours {
        return None;
    }
    let mut key_values = BTreeMap::new();
    let mut host_keys = Vec::new();
    if let Some(env) = spec
        .get("vmConfig")
        .and_then(|vm| vm.get("env"))
        .and_then(Yaml::as_sequence)
    {
        for e in env {
            let Some(name) = e.get("name").and_then(Yaml::as_str) else {
                continue;
            };
            match e.get("valueFrom").and_then(Yaml::as_str) {
                Some("HOST") => host_keys.push(name.to_string()),
                _ => {
                    let value = e.get("value").and_then(scalar_string).unwrap_or_default();
                    key_values.insert(name.to_string(), value);
                }
            }
        }
    }
    let bytes = match spec.get("pluginConfig") {
        None | Some(Yaml::Null) => Ok(Vec::new()),
        Some(config) => istio_struct_json(config)
            .and_then(|json| serde_json::to_vec(&json).map_err(|e| e.to_string())),
    };
    Some(Found {
        location: join(label, "spec.pluginConfig"),
        bytes,
        env: VmEnv::Vm {
            key_values,
            host_keys,
        },
    })
}

/// What istiod hands the filter for a WasmPlugin's `pluginConfig`: the object as a
/// `google.protobuf.Struct` (numbers are doubles), serialised to JSON into a StringValue
/// (`protomarshal.ToJSON`, which prints integral numbers without a fraction).
fn istio_struct_json(v: &Yaml) -> Result<Json, String> {
    Ok(match v {
        Yaml::Null => Json::Null,
        Yaml::Bool(b) => Json::Bool(*b),
        Yaml::Number(n) => {
            let f = n
                .as_f64()
                .ok_or_else(|| format!("pluginConfig: {n} is not a number"))?;
            go_json_number(f).ok_or_else(|| format!("pluginConfig: {n} is not a finite number"))?
        }
        Yaml::String(s) => Json::String(s.clone()),
        Yaml::Sequence(items) => Json::Array(
            items
                .iter()
                .map(istio_struct_json)
                .collect::<Result<_, _>>()?,
        ),
        Yaml::Mapping(m) => {
            let mut obj = serde_json::Map::new();
            for (k, v) in m {
                let key = match k {
                    Yaml::String(s) => s.clone(),
                    other => scalar_string(other)
                        .ok_or_else(|| "pluginConfig: map keys must be strings".to_string())?,
                };
                obj.insert(key, istio_struct_json(v)?);
            }
            Json::Object(obj)
        }
        Yaml::Tagged(t) => istio_struct_json(&t.value)?,
    })
}

/// A double as Go's JSON encoders print it: integral values below 1e21 without a fraction.
fn go_json_number(f: f64) -> Option<Json> {
    if !f.is_finite() {
        return None;
    }
    if f.fract() == 0.0 && f.abs() < 1e21 {
        if f >= 0.0 && f <= u64::MAX as f64 {
            let u = f as u64;
            if u as f64 == f {
                return Some(Json::from(u));
            }
        } else if f < 0.0 && f >= i64::MIN as f64 {
            return Some(Json::from(f as i64));
        }
    }
    serde_json::Number::from_f64(f).map(Json::Number)
}
