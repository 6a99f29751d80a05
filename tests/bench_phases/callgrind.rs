//! Envoy under `valgrind --tool=callgrind`, one listener per scenario, and the instructions it
//! executes while serving a scenario's requests (callgrind's counter, zeroed before and dumped
//! after them).

use super::common::{self, EnvoyOptions};
use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The listeners of a rendered bootstrap (the lines under `  listeners:`), renamed `name`.
pub fn listener_block(config: &str, name: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in config.lines() {
        if line == "  listeners:" {
            inside = true;
            continue;
        }
        if inside && !line.starts_with("    ") {
            break;
        }
        if inside {
            let line = line
                .replace("- name: llm_ingress", &format!("- name: {name}"))
                .replace("stat_prefix: llm_ingress", &format!("stat_prefix: {name}"));
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}

/// One bootstrap with a listener for each of `listeners`, and the clusters of all of them
/// (the extra clusters, one per line, merged: the pool variants' aggregate clusters have
/// names of their own, their targets are the same).
pub fn bootstrap(listeners: &[&EnvoyOptions], ports: &[u16], admin_port: u16) -> String {
    let mut with_all_clusters = (*listeners.first().expect("a listener")).clone();
    let mut extra: Vec<&str> = Vec::new();
    for o in listeners {
        for line in o.extra_clusters_yaml.as_deref().unwrap_or_default().lines() {
            if !extra.contains(&line) {
                extra.push(line);
            }
        }
    }
    with_all_clusters.extra_clusters_yaml = Some(extra.join("\n") + "\n");
    let base = common::render_config(&with_all_clusters, ports[0], admin_port);
    let mut rendered = String::from("  listeners:\n");
    for (i, (o, port)) in listeners.iter().zip(ports).enumerate() {
        rendered.push_str(&listener_block(
            &common::render_config(o, *port, admin_port),
            &format!("bench_{i}"),
        ));
    }
    let start = base.find("  listeners:\n").expect("listeners");
    let end = base.find("\n  clusters:").expect("clusters") + 1;
    format!("{}{}{}", &base[..start], rendered, &base[end..])
}

/// Valgrind is ~50-100x slower than native: Envoy's start and the first requests take long.
pub const START_TIMEOUT: Duration = Duration::from_secs(600);

/// Envoy under callgrind, instrumentation off until every scenario is warm.
pub struct Callgrind {
    child: Child,
    dir: PathBuf,
    log: PathBuf,
    dumps: u32,
}

impl Callgrind {
    pub fn start(config: &str) -> Callgrind {
        let dir = std::env::temp_dir().join(format!("azure-llm-callgrind-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let config_path = dir.join("envoy.yaml");
        fs::write(&config_path, config).unwrap();
        let log = dir.join("envoy.log");
        let out = fs::File::create(&log).unwrap();
        let mut cmd = Command::new("valgrind");
        cmd.args([
            "--tool=callgrind",
            // V8 writes the machine code it runs: valgrind must see every change to it.
            "--smc-check=all",
            "--instr-atstart=no",
        ])
        .arg(format!("--callgrind-out-file={}/cg.out", dir.display()))
        .arg(common::envoy_binary())
        .arg("-c")
        .arg(&config_path)
        .args([
            "--concurrency",
            "1",
            "-l",
            "warning",
            "--disable-hot-restart",
        ])
        .current_dir(common::workspace_root())
        .stdin(Stdio::null())
        .stdout(Stdio::from(out.try_clone().unwrap()))
        .stderr(Stdio::from(out));
        let child = common::spawn_child(cmd).expect("run valgrind (make bench installs it)");
        Callgrind {
            child,
            dir,
            log,
            dumps: 0,
        }
    }

    pub fn control(&self, args: &[&str]) {
        let out = Command::new("callgrind_control")
            .args(args)
            .arg(self.child.id().to_string())
            .output()
            .expect("run callgrind_control");
        assert!(
            out.status.success(),
            "callgrind_control {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Instructions counted since the last zeroing.
    pub fn dump(&mut self) -> u64 {
        self.control(&["--dump"]);
        self.dumps += 1;
        let file = self.dir.join(format!("cg.out.{}", self.dumps));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(total) = fs::read_to_string(&file).ok().and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("totals:"))
                    .and_then(|v| v.trim().parse().ok())
            }) {
                return total;
            }
            assert!(
                Instant::now() < deadline,
                "no callgrind dump {}",
                file.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// How Envoy ended, if it did.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn logs(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Callgrind {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `n` requests one after another on one connection; each must answer 200.
pub async fn send(http: &reqwest::Client, url: &str, token: &str, body: &str, n: usize) {
    for _ in 0..n {
        let resp = http
            .post(url)
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        assert_eq!(resp.status(), 200, "{url}");
        let _ = resp.bytes().await;
    }
}

/// Polls until the scenario's listener answers 200 (JWKS and Entra token fetched).
pub async fn wait_serving(
    cg: &mut Callgrind,
    http: &reqwest::Client,
    url: &str,
    token: &str,
    body: &str,
) {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let status = http
            .post(url)
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0);
        if status == 200 {
            return;
        }
        if let Some(exited) = cg.exited() {
            panic!("Envoy under valgrind exited ({exited})\n{}", cg.logs());
        }
        assert!(
            Instant::now() < deadline,
            "{url} not serving under valgrind (last status {status})\n{}",
            cg.logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub fn valgrind_present() -> bool {
    Command::new("valgrind")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}
