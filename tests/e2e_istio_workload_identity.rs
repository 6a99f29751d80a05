//! The Istio manifests of AKS workload identity (envoy/istio/aks-workload-identity/): static
//! checks, no cluster. The token route (internal listener + Lua + cluster) is exactly the one of
//! envoy/aks-workload-identity.yaml that tests/e2e_workload_identity.rs runs in a real Envoy; the
//! Wasm EnvoyFilter differs from envoy/istio/envoyfilter.yaml only in the credential and the
//! VM's environment; the gateway pod and its ServiceAccount carry what the AKS webhook needs; no
//! route leads to the token route; check-config accepts the file.

use serde::Deserialize;
use serde_json::Value as Json;
use serde_yaml::Value as Yaml;
use std::path::{Path, PathBuf};
use std::process::Command;
const TOKEN_ROUTE: &str = "workload_identity_token";
const WEBHOOK_VARIABLES: [&str; 4] = [
    "AZURE_CLIENT_ID",
    "AZURE_TENANT_ID",
    "AZURE_AUTHORITY_HOST",
    "AZURE_FEDERATED_TOKEN_FILE",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn wi_file() -> PathBuf {
    root().join("envoy/istio/aks-workload-identity/envoyfilter.yaml")
}

fn load(path: &Path) -> Vec<Yaml> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| Yaml::deserialize(d).unwrap())
        .filter(|d| !d.is_null())
        .collect()
}

fn named<'a>(docs: &'a [Yaml], kind: &str, name: &str) -> &'a Yaml {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind) && d["metadata"]["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

/// The entry named `name` of a list of the plain-Envoy bootstrap.
fn bootstrap_entry(list: &str, name: &str) -> Yaml {
    let boot: Yaml = serde_yaml::from_str(
        &std::fs::read_to_string(root().join("envoy/aks-workload-identity.yaml")).unwrap(),
    )
    .unwrap();
    boot["static_resources"][list]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|e| e["name"].as_str() == Some(name))
        .cloned()
        .unwrap()
}

fn wasm_config(ef: &Yaml) -> &Yaml {
    &ef["spec"]["configPatches"][0]["patch"]["value"]["typed_config"]["config"]
}

fn plugin_config(ef: &Yaml) -> Json {
    serde_json::from_str(wasm_config(ef)["configuration"]["value"].as_str().unwrap()).unwrap()
}

#[test]
fn token_route_is_the_one_tested_in_a_real_envoy() {
    let docs = load(&wi_file());
    let ef = named(&docs, "EnvoyFilter", "azure-llm-filter-token-route");
    assert_eq!(
        ef["spec"]["workloadSelector"]["labels"]["istio"].as_str(),
        Some("llm-gateway")
    );
    let patches = ef["spec"]["configPatches"].as_sequence().unwrap();
    assert_eq!(patches.len(), 2);
    for (patch, list) in patches.iter().zip(["listeners", "clusters"]) {
        assert_eq!(patch["match"]["context"].as_str(), Some("GATEWAY"));
        assert_eq!(patch["patch"]["operation"].as_str(), Some("ADD"));
        assert_eq!(
            patch["patch"]["value"],
            bootstrap_entry(list, TOKEN_ROUTE),
            "the {list} entry differs from envoy/aks-workload-identity.yaml"
        );
    }
    assert_eq!(patches[0]["applyTo"].as_str(), Some("LISTENER"));
    assert_eq!(patches[1]["applyTo"].as_str(), Some("CLUSTER"));
    let listener = &patches[0]["patch"]["value"];
    assert!(
        listener["internal_listener"].is_mapping(),
        "an internal listener"
    );
    assert!(
        listener["address"].is_null(),
        "no address callers could reach"
    );
}

/// The Wasm filter configs of an EnvoyFilter (`patch.value.typed_config.config` of every
/// Wasm extension config), in order.
fn wasm_configs(ef: &Yaml) -> Vec<&Yaml> {
    ef["spec"]["configPatches"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| &p["patch"]["value"]["typed_config"])
        .filter(|tc| {
            tc["@type"].as_str()
                == Some("type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm")
        })
        .map(|tc| &tc["config"])
        .collect()
}

fn json_of(wasm: &Yaml) -> Json {
    serde_json::from_str(wasm["configuration"]["value"].as_str().unwrap()).unwrap()
}

/// ../envoyfilter.yaml with every credential a `workload_identity` one (same token cluster;
/// tenant and client id as written or left to the webhook's variables) and the VMs' environment
/// the webhook's variables. When envoyfilter.yaml changes, make the same change here.
#[test]
fn wasm_envoy_filter_is_the_secret_one_with_workload_identity_credentials() {
    let wi_docs = load(&wi_file());
    let secret_docs = load(&root().join("envoy/istio/envoyfilter.yaml"));
    let wi = named(&wi_docs, "EnvoyFilter", "azure-llm-filter");
    let secret = named(&secret_docs, "EnvoyFilter", "azure-llm-filter");
    let (wi_wasm, secret_wasm) = (wasm_configs(wi), wasm_configs(secret));
    assert_eq!(
        wi_wasm.len(),
        secret_wasm.len(),
        "one Wasm config per Wasm config"
    );
    for (w, s) in wi_wasm.iter().zip(&secret_wasm) {
        let (mut wp, mut sp) = (json_of(w), json_of(s));
        let (wc, sc) = (wp["credentials"].take(), sp["credentials"].take());
        assert_eq!(wp, sp, "the plugin configuration besides credentials");
        let (wc, sc) = (wc.as_object().unwrap(), sc.as_object().unwrap());
        assert_eq!(
            wc.keys().collect::<Vec<_>>(),
            sc.keys().collect::<Vec<_>>(),
            "the same credential names"
        );
        for (name, c) in wc {
            let original = &sc[name];
            assert_eq!(c["kind"], "workload_identity", "{name}");
            assert_eq!(c["token_cluster"], original["token_cluster"], "{name}");
            for id in ["tenant_id", "client_id"] {
                assert!(c[id].is_null() || c[id] == original[id], "{name}.{id}");
            }
        }
        let keys: Vec<&str> = w["vm_config"]["environment_variables"]["host_env_keys"]
            .as_sequence()
            .unwrap()
            .iter()
            .filter_map(Yaml::as_str)
            .collect();
        assert_eq!(keys, WEBHOOK_VARIABLES);
    }
    // `main` takes everything from the webhook.
    let main = &json_of(wi_wasm[0])["credentials"]["main"];
    assert!(
        main["tenant_id"].is_null() && main["client_id"].is_null(),
        "{main}"
    );

    // Everything else is the same document.
    let strip = |ef: &Yaml| {
        let mut ef = ef.clone();
        for p in ef["spec"]["configPatches"].as_sequence_mut().unwrap() {
            let config = &mut p["patch"]["value"]["typed_config"]["config"];
            if config.get("vm_config").is_some() {
                config["configuration"] = Yaml::Null;
                config["vm_config"]["environment_variables"] = Yaml::Null;
            }
        }
        ef
    };
    assert_eq!(strip(wi), strip(secret));
}

#[test]
fn gateway_pod_and_service_account_carry_what_the_webhook_needs() {
    let docs = load(&root().join("envoy/istio/gateway.yaml"));
    let deployment = named(&docs, "Deployment", "llm-gateway");
    let pod = &deployment["spec"]["template"];
    assert_eq!(
        pod["metadata"]["labels"]["azure.workload.identity/use"],
        Yaml::String("true".into()),
        "the label must be the string \"true\""
    );
    let sa_name = pod["spec"]["serviceAccountName"].as_str().unwrap();
    let sa = named(&docs, "ServiceAccount", sa_name);
    let client_id = sa["metadata"]["annotations"]["azure.workload.identity/client-id"]
        .as_str()
        .expect("client-id annotation");
    assert_eq!(client_id.len(), 36, "a GUID: {client_id}");
    // Without a Kubernetes secret the pod still starts (workload identity needs none).
    let proxy = pod["spec"]["containers"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|c| c["name"].as_str() == Some("istio-proxy"))
        .unwrap();
    for env in proxy["env"].as_sequence().unwrap() {
        if let Some(r) = env["valueFrom"].get("secretKeyRef") {
            assert_eq!(r["optional"].as_bool(), Some(true), "{env:?}");
        }
    }
}

#[test]
fn no_route_leads_to_the_token_route() {
    let docs = load(&root().join("envoy/istio/gateway.yaml"));
    for vs in docs
        .iter()
        .filter(|d| d["kind"].as_str() == Some("VirtualService"))
    {
        let text = serde_yaml::to_string(vs).unwrap();
        assert!(!text.contains(TOKEN_ROUTE), "{text}");
        assert!(!text.contains("workload-identity.internal"), "{text}");
    }
    let wi_docs = load(&wi_file());
    let plugin = plugin_config(named(&wi_docs, "EnvoyFilter", "azure-llm-filter"));
    for (name, _) in plugin["backends"].as_object().unwrap() {
        assert_ne!(name, TOKEN_ROUTE);
    }
}

#[test]
fn the_filter_and_check_config_accept_the_plugin_configuration() {
    let docs = load(&wi_file());
    let wasm = wasm_configs(named(&docs, "EnvoyFilter", "azure-llm-filter"));
    for w in &wasm {
        azure_llm_filter::config::Config::parse(json_of(w).to_string().as_bytes())
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let run = |args: &[&str], file: &Path, env: &[(&str, &str)]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_check-config"));
        cmd.args(args).arg(file);
        for v in WEBHOOK_VARIABLES {
            cmd.env_remove(v);
        }
        cmd.envs(env.iter().copied());
        let out = cmd.output().expect("run check-config");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = run(&[], &wi_file(), &[]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(
        out.lines().filter(|l| l.ends_with(": OK")).count(),
        wasm.len(),
        "{out}"
    );
    // --check-env: the webhook's variables must be there, as the filter needs them.
    let (code, out) = run(&["--check-env"], &wi_file(), &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("credentials.main.tenant_id: not given, and AZURE_TENANT_ID is not set"),
        "{out}"
    );
    let env = [("AZURE_TENANT_ID", "t"), ("AZURE_CLIENT_ID", "c")];
    let (code, out) = run(&["--check-env"], &wi_file(), &env);
    assert_eq!(code, Some(0), "{out}");
    // A manifest that does not pass AZURE_CLIENT_ID to the VM is caught without a cluster.
    let text = std::fs::read_to_string(wi_file()).unwrap();
    let broken = text.replacen("[AZURE_CLIENT_ID, ", "[", 1);
    assert_ne!(broken, text);
    let dir = root().join("target/e2e/rendered");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("wi-envoyfilter-without-client-id.yaml");
    std::fs::write(&path, broken).unwrap();
    let (code, out) = run(&[], &path, &env);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("credentials.main.client_id: not given, and AZURE_CLIENT_ID is not passed to the Wasm VM"),
        "{out}"
    );
}
