//! The controller's metrics and Events, read back the way users read them: a real
//! Prometheus (Debian's package, installed by scripts/test.sh) scrapes the controller while
//! it runs against the simulated cluster, and the test asks Prometheus's HTTP query API
//! for the counters and the last-success timestamp; the Events are read from the cluster.

use crate::kube_e2e::{config, small_files, Cluster, NS, PATIENCE};
use cairn_kube_sim::SnapshotBehaviour;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `name` on PATH, or a failure saying how to install it (never a silent skip).
fn installed(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("{name} not found on PATH: run scripts/test.sh, which installs Debian's prometheus package")
        })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free local port")
}

/// A Prometheus server on 127.0.0.1 scraping `target` every second, with its own
/// configuration and storage in a temporary directory.
struct Prometheus {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: &str) -> Prometheus {
        let binary = installed("prometheus");
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: cairn\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting prometheus");
        Prometheus { child, port, dir }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// GET `path_and_query` on the server: (status line, JSON body), None when it is not
    /// answering yet.
    fn get(&self, path_and_query: &str) -> Option<Value> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .ok()?;
        write!(
            stream,
            "GET {path_and_query} HTTP/1.0\r\nHost: 127.0.0.1\r\nAccept: application/json\r\n\r\n"
        )
        .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let (_, body) = response.split_once("\r\n\r\n")?;
        serde_json::from_str(body).ok()
    }

    /// The instant vector `query` evaluates to now.
    fn query(&self, query: &str) -> Vec<Value> {
        let encoded: String = query
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let reply = self.get(&format!("/api/v1/query?query={encoded}"));
        match reply {
            Some(r) if r["status"] == "success" => {
                r["data"]["result"].as_array().cloned().unwrap_or_default()
            }
            _ => Vec::new(),
        }
    }

    /// Waits until `query` has exactly one series whose value satisfies `ok`; returns it.
    fn wait_value(&self, query: &str, ok: impl Fn(f64) -> bool) -> f64 {
        let start = Instant::now();
        let mut last = Vec::new();
        while start.elapsed() < PATIENCE {
            last = self.query(query);
            let value = match last.as_slice() {
                [one] => one["value"][1].as_str().and_then(|v| v.parse::<f64>().ok()),
                _ => None,
            };
            if let Some(v) = value.filter(|v| ok(*v)) {
                return v;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        panic!(
            "{query} never had the expected value; last result {last:?}\ntargets: {:?}\nprometheus log:\n{}",
            self.get("/api/v1/targets"),
            self.log()
        );
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn timestamp(v: &Value) -> f64 {
    let t: jiff::Timestamp = v.as_str().expect("a timestamp").parse().unwrap();
    t.as_millisecond() as f64 / 1000.0
}

#[test]
fn prometheus_reads_the_counters_and_last_success_and_the_cluster_holds_the_events() {
    let metrics_port = free_port();
    let address = format!("127.0.0.1:{metrics_port}");
    let prometheus = Prometheus::start(&address);
    let c = Cluster::start_with_args(
        "e2e-metrics",
        config(&[]),
        json!({"suspend": true}),
        &["--metrics-address", &address],
    );
    c.volume("data", &small_files());
    c.sim.set_snapshot_behaviour(
        "broken-snapshot",
        SnapshotBehaviour::FailAfter(Duration::from_millis(200), "disk on fire".into()),
    );
    c.backup("nightly", "data", json!({}));
    c.backup("broken", "data", json!({}));
    let done = c.wait_phase("VolumeBackup", "nightly", &["Completed"]);
    c.wait_phase("VolumeBackup", "broken", &["Failed"]);

    let series = format!(r#"namespace="{NS}",source="data",repository="{NS}/main""#);
    prometheus.wait_value(&format!("cairn_backup_started_total{{{series}}}"), |v| {
        v == 2.0
    });
    prometheus.wait_value(&format!("cairn_backup_succeeded_total{{{series}}}"), |v| {
        v == 1.0
    });
    prometheus.wait_value(
        &format!(r#"cairn_backup_failed_total{{{series},class="snapshot"}}"#),
        |v| v == 1.0,
    );
    let read = done["status"]["progress"]["bytesDone"].as_f64().unwrap();
    assert!(read > 0.0, "{done}");
    prometheus.wait_value(&format!("cairn_backup_read_bytes_total{{{series}}}"), |v| {
        v == read
    });
    // A first backup adds everything it read (compressed) to the empty repository.
    let added = done["status"]["bytesAdded"].as_f64().unwrap_or(0.0);
    assert!(added > 0.0, "no bytesAdded on a first backup: {done}");
    prometheus.wait_value(
        &format!("cairn_backup_added_bytes_total{{{series}}}"),
        |v| v == added,
    );
    prometheus.wait_value(
        &format!(r#"cairn_backup_duration_seconds_count{{{series},result="succeeded"}}"#),
        |v| v == 1.0,
    );
    let completed = timestamp(&done["status"]["completionTime"]);
    prometheus.wait_value(
        &format!("cairn_backup_last_success_timestamp_seconds{{{series}}}"),
        |v| (v - completed).abs() < 0.001,
    );
    prometheus.wait_value(r#"cairn_job_limit{kind="backup"}"#, |v| v >= 1.0);

    // The story `kubectl describe` tells.
    let events = c.sim.list("v1", "Event", Some(NS));
    let about = |name: &str| -> Vec<&Value> {
        events
            .iter()
            .filter(|e| e["involvedObject"]["kind"] == "VolumeBackup")
            .filter(|e| e["involvedObject"]["name"] == name)
            .collect()
    };
    let nightly = about("nightly");
    assert!(
        nightly
            .iter()
            .any(|e| e["type"] == "Normal" && e["reason"] == "Completed"),
        "{nightly:#?}"
    );
    assert!(nightly
        .iter()
        .all(|e| e["reportingComponent"] == "cairn-controller"
            && e["involvedObject"]["uid"].is_string()));
    let broken = about("broken");
    let warning = broken
        .iter()
        .find(|e| e["type"] == "Warning" && e["reason"] == "Failed")
        .unwrap_or_else(|| panic!("no Warning for the failed backup: {broken:#?}"));
    assert!(
        warning["message"]
            .as_str()
            .is_some_and(|m| m.contains("disk on fire")),
        "{warning}"
    );
}
