//! The shipped deployment files (envoy/*.yaml) run as operators run them, retargeted at local
//! stand-ins (issue 22), and what it takes to show their TLS works: a test CA made at test
//! time, and a TLS front standing in for the Internet between Envoy and Entra / Azure.
//!
//! Retargeting changes only what an operator adapts: the listener and admin ports, each
//! cluster endpoint's address (the shipped host name becomes 127.0.0.1 and a port), the CA
//! bundle's path (the test CA instead of the system bundle), the Wasm file's path and the
//! identifiers a test names (`ids`: tenant ids). SNI, SAN matchers, timeouts, routes, filters
//! and every default Envoy applies to what the files leave out stay as shipped.
//!
//! The front is a plain Envoy (no filter) with one TLS listener per kind of peer ([`Peer`]):
//! each presents its certificate and passes the decrypted bytes to a port (`tcp_proxy`), so a
//! stand-in behind it sees exactly what the Envoy under test sent, and the front's access log
//! records the SNI and the bytes of every connection.

#![allow(dead_code)]

use super::common::{self, Envoy, EnvoyOptions, ADMIN_PORT, LISTENER_PORT};
use serde_json::json;
use serde_yaml::Value as Yaml;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The CA bundle the shipped files name.
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// How the shipped files name the filter (relative to the repository root).
const REL_WASM: &str = "target/wasm32-wasip1/release/azure_llm_filter.wasm";

/// The names Entra's and Azure's certificates carry (Azure's as wildcards).
pub const AZURE_SANS: [&str; 4] = [
    "login.microsoftonline.com",
    "*.openai.azure.com",
    "*.services.ai.azure.com",
    "*.cognitiveservices.azure.com",
];

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (Debian package openssl, `make tools`) on PATH");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A certificate and its key.
#[derive(Clone, Debug)]
pub struct Cert {
    pub crt: PathBuf,
    pub key: PathBuf,
}

/// A test CA (made at test time, valid two days) and certificates.
pub struct Pki {
    dir: PathBuf,
}

const EC_KEY: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
];

impl Pki {
    pub fn new() -> Pki {
        let dir = common::workspace_root().join(format!(
            "target/e2e/pki/{}-{}",
            std::process::id(),
            common::free_port()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut a = vec![
            "req",
            "-x509",
            "-days",
            "2",
            "-subj",
            "/CN=azure-llm-filter test CA",
        ];
        a.extend(EC_KEY);
        a.extend(["-keyout", "ca.key", "-out", "ca.crt"]);
        a.extend(["-addext", "basicConstraints=critical,CA:TRUE"]);
        a.extend(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
        openssl(&dir, &a);
        Pki { dir }
    }

    /// The test CA's certificate: the trusted bundle of the Envoy under test.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    fn make(&self, name: &str, sans: &[&str], signed_by_ca: bool) -> Cert {
        let (key, crt) = (format!("{name}.key"), format!("{name}.crt"));
        let san = format!(
            "subjectAltName={}",
            sans.iter()
                .map(|s| format!("DNS:{s}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        let subj = format!("/CN={}", sans.first().copied().unwrap_or(name));
        let mut a = vec!["req", "-x509", "-days", "2"];
        if signed_by_ca {
            a.extend(["-CA", "ca.crt", "-CAkey", "ca.key"]);
        }
        a.extend(EC_KEY);
        a.extend(["-subj", &subj, "-keyout", &key, "-out", &crt]);
        a.extend(["-addext", &san, "-addext", "basicConstraints=CA:FALSE"]);
        openssl(&self.dir, &a);
        Cert {
            crt: self.dir.join(crt),
            key: self.dir.join(key),
        }
    }

    /// A server certificate of the test CA for `sans`.
    pub fn issue(&self, name: &str, sans: &[&str]) -> Cert {
        self.make(name, sans, true)
    }

    /// A self-signed certificate for `sans`: what an impostor on the path presents.
    pub fn self_signed(&self, name: &str, sans: &[&str]) -> Cert {
        self.make(name, sans, false)
    }
}

/// Who answers on a front listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Peer {
    /// A certificate of the test CA for Entra's and Azure's names: the real service.
    Trusted,
    /// A self-signed certificate for the same names: an impostor (DNS hijack, a proxy).
    SelfSigned,
    /// A certificate of the test CA for another name: a real certificate, someone else's.
    WrongName,
}

impl Peer {
    pub fn name(self) -> &'static str {
        match self {
            Peer::Trusted => "trusted",
            Peer::SelfSigned => "self_signed",
            Peer::WrongName => "wrong_name",
        }
    }
}

/// One access-log line of the front: a connection was made (`ended` false) or ended, with the
/// SNI it was asked for and the bytes it received from the Envoy under test (decrypted; at the
/// end, all of them).
#[derive(Debug, Clone)]
pub struct FrontConnection {
    pub peer: String,
    pub sni: String,
    pub bytes_received: u64,
    pub ended: bool,
}

/// The TLS front: one listener per peer kind, each passing its bytes to an upstream port.
pub struct TlsFront {
    envoy: Envoy,
    ports: Vec<(Peer, u16)>,
}

impl TlsFront {
    /// `upstreams`: per peer kind, the (plain HTTP) port its decrypted bytes go to.
    pub async fn start(pki: &Pki, upstreams: &[(Peer, u16)]) -> TlsFront {
        let trusted = pki.issue("azure", &AZURE_SANS);
        let impostor = pki.self_signed("impostor", &AZURE_SANS);
        let other = pki.issue("other", &["llm.example.com", "*.example.com"]);
        let mut listeners = String::new();
        let mut clusters = String::new();
        let mut ports = Vec::new();
        for (i, (peer, upstream)) in upstreams.iter().enumerate() {
            let cert = match peer {
                Peer::Trusted => &trusted,
                Peer::SelfSigned => &impostor,
                Peer::WrongName => &other,
            };
            // The first listener's port is the harness's (it waits until it accepts).
            let port = if i == 0 {
                LISTENER_PORT.to_string()
            } else {
                common::free_port().to_string()
            };
            listeners.push_str(&front_listener(peer.name(), &port, cert));
            clusters.push_str(&format!(
                "    - name: to_{name}\n      type: STATIC\n      connect_timeout: 1s\n      load_assignment:\n        cluster_name: to_{name}\n        endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {upstream} }} }} }} }}] }}]\n",
                name = peer.name()
            ));
            ports.push((*peer, port));
        }
        let raw = format!(
            "admin: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {ADMIN_PORT} }} }} }}\nstatic_resources:\n  listeners:\n{listeners}  clusters:\n{clusters}"
        );
        let mut o = EnvoyOptions::new(json!({}));
        o.raw_bootstrap = Some(raw);
        let envoy = Envoy::start(o).await;
        let ports = ports
            .into_iter()
            .map(|(peer, p)| {
                let p = if p == LISTENER_PORT {
                    envoy.listener_port
                } else {
                    p.parse().unwrap()
                };
                (peer, p)
            })
            .collect();
        TlsFront { envoy, ports }
    }

    /// The port of the listener of `peer`.
    pub fn port(&self, peer: Peer) -> u16 {
        self.ports
            .iter()
            .find(|(p, _)| *p == peer)
            .map(|(_, port)| *port)
            .unwrap_or_else(|| panic!("no {peer:?} listener"))
    }

    /// The front's access-log lines so far.
    pub fn connections(&self) -> Vec<FrontConnection> {
        self.envoy
            .logs()
            .lines()
            .filter_map(|l| {
                let rest = l.strip_prefix("front=")?;
                let mut f = rest.split(' ');
                let peer = f.next()?.to_string();
                let sni = f.next()?.strip_prefix("sni=")?.to_string();
                let bytes_received = f.next()?.strip_prefix("bytes=")?.parse().ok()?;
                let ended = f.next()?.strip_prefix("type=")? == "TcpConnectionEnd";
                Some(FrontConnection {
                    peer,
                    sni,
                    bytes_received,
                    ended,
                })
            })
            .collect()
    }

    /// Waits until a connection on `peer`'s listener has ended; the lines of that listener.
    pub async fn wait_for_connection(&self, peer: Peer) -> Vec<FrontConnection> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let seen: Vec<FrontConnection> = self
                .connections()
                .into_iter()
                .filter(|c| c.peer == peer.name())
                .collect();
            if seen.iter().any(|c| c.ended) {
                return seen;
            }
            assert!(
                Instant::now() < deadline,
                "no connection on the {peer:?} front listener: {}",
                self.envoy.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl TlsFront {
    /// The SNI names the front has seen, sorted, once they include every one of `expected`
    /// (the log lags the connections a little); panics after 10 s.
    pub async fn snis_once_seen(&self, expected: &[&str]) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut seen: Vec<String> = self.connections().into_iter().map(|c| c.sni).collect();
            seen.sort();
            seen.dedup();
            if expected.iter().all(|e| seen.iter().any(|s| s == e)) || Instant::now() > deadline {
                return seen;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn front_listener(name: &str, port: &str, cert: &Cert) -> String {
    format!(
        r#"    - name: {name}
      address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
      listener_filters:
        - name: envoy.filters.listener.tls_inspector
          typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector }}
      filter_chains:
        - transport_socket:
            name: envoy.transport_sockets.tls
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
              common_tls_context:
                tls_certificates:
                  - certificate_chain: {{ filename: {crt} }}
                    private_key: {{ filename: {key} }}
          filters:
            - name: envoy.filters.network.tcp_proxy
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
                stat_prefix: {name}
                cluster: to_{name}
                # A line when the connection is made (its SNI) and one when it ends (its bytes).
                access_log_options: {{ flush_access_log_on_connected: true }}
                access_log:
                  - name: envoy.access_loggers.stdout
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog
                      log_format: {{ text_format_source: {{ inline_string: "front={name} sni=%REQUESTED_SERVER_NAME% bytes=%BYTES_RECEIVED% type=%ACCESS_LOG_TYPE%\n" }} }}
"#,
        crt = cert.crt.display(),
        key = cert.key.display()
    )
}

/// A shipped bootstrap retargeted: `hosts` maps each cluster endpoint's shipped address to the
/// local port that plays it (every endpoint must be named); `ca` replaces the system bundle;
/// `ids` are text replacements in the file (identifiers such as tenant ids). Returns a raw
/// bootstrap for [`EnvoyOptions::raw_bootstrap`].
pub fn retarget(rel: &str, hosts: &[(&str, u16)], ca: &Path, ids: &[(&str, &str)]) -> String {
    let mut text = std::fs::read_to_string(common::workspace_root().join(rel)).unwrap();
    for (from, to) in ids {
        assert!(text.contains(from), "{rel} does not contain {from}");
        text = text.replace(from, to);
    }
    let mut doc: Yaml = serde_yaml::from_str(&text).unwrap();
    doc["admin"]["address"]["socket_address"]["port_value"] = Yaml::from(ADMIN_PORT);
    let listeners = doc["static_resources"]["listeners"]
        .as_sequence_mut()
        .unwrap();
    let public = listeners
        .iter_mut()
        .find(|l| l.get("address").is_some())
        .expect("a listener with an address");
    public["address"]["socket_address"] = serde_yaml::from_str(&format!(
        "{{ address: 127.0.0.1, port_value: {LISTENER_PORT} }}"
    ))
    .unwrap();
    let mut unnamed = Vec::new();
    for cluster in doc["static_resources"]["clusters"]
        .as_sequence_mut()
        .unwrap()
    {
        let name = cluster["name"].as_str().unwrap_or("?").to_string();
        let Some(groups) = cluster
            .get_mut("load_assignment")
            .and_then(|a| a.get_mut("endpoints"))
            .and_then(Yaml::as_sequence_mut)
        else {
            continue;
        };
        for lb in groups
            .iter_mut()
            .flat_map(|g| g["lb_endpoints"].as_sequence_mut().unwrap().iter_mut())
        {
            let Some(socket) = lb
                .get_mut("endpoint")
                .and_then(|e| e.get_mut("address"))
                .and_then(|a| a.get_mut("socket_address"))
            else {
                continue;
            };
            let address = socket["address"].as_str().unwrap().to_string();
            match hosts.iter().find(|(h, _)| *h == address) {
                Some((_, port)) => {
                    socket["address"] = Yaml::from("127.0.0.1");
                    socket["port_value"] = Yaml::from(*port);
                }
                None => unnamed.push(format!("{name}: {address}")),
            }
        }
    }
    assert!(
        unnamed.is_empty(),
        "{rel}: endpoints not retargeted: {unnamed:?}"
    );
    replace_strings(&mut doc, SYSTEM_CA_BUNDLE, &ca.to_string_lossy());
    replace_strings(&mut doc, REL_WASM, &common::wasm_path().to_string_lossy());
    serde_yaml::to_string(&doc).unwrap()
}

fn replace_strings(v: &mut Yaml, from: &str, to: &str) {
    match v {
        Yaml::String(s) if s == from => *s = to.to_string(),
        Yaml::Mapping(m) => m.iter_mut().for_each(|(_, c)| replace_strings(c, from, to)),
        Yaml::Sequence(s) => s.iter_mut().for_each(|c| replace_strings(c, from, to)),
        _ => {}
    }
}

/// Starts Envoy with a retargeted bootstrap (`host_env`: Envoy's environment).
pub async fn start(raw: String, host_env: Vec<(String, String)>, concurrency: u32) -> Envoy {
    let mut o = EnvoyOptions::new(json!({}));
    o.raw_bootstrap = Some(raw);
    o.host_env = host_env;
    o.concurrency = concurrency;
    Envoy::start(o).await
}
