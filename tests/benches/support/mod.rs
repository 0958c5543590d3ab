//! What the benchmarks share: the knowledge base, the workspace's binaries, a spawned
//! server's addresses, a metric off its scrape.
#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command},
};

pub use dakota_tests::kb_dir;

/// A workspace binary of this profile, built first (a bench builds only its own package).
pub fn binary(name: &str) -> PathBuf {
    static BUILT: std::sync::Once = std::sync::Once::new();
    let dir = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    BUILT.call_once(|| {
        let mut build = Command::new(env!("CARGO"));
        build.args(["build", "--bins", "--workspace"]);
        // What cargo sets for the bench it runs (not the user's CARGO_HOME, CARGO_TARGET_DIR,
        // ...): a build script that tracks one (ring's tracks CARGO_MANIFEST_DIR) would see
        // it changed and rebuild the whole tree twice per run.
        let set_by_cargo = |n: &str| {
            n.starts_with("CARGO_PKG_")
                || [
                    "CARGO_MANIFEST_DIR",
                    "CARGO_MANIFEST_PATH",
                    "CARGO_CRATE_NAME",
                    "CARGO_BIN_NAME",
                    "CARGO_PRIMARY_PACKAGE",
                    "CARGO_TARGET_TMPDIR",
                    "CARGO_RUSTC_CURRENT_DIR",
                ]
                .contains(&n)
        };
        for (name, _) in std::env::vars_os() {
            if name.to_str().is_some_and(set_by_cargo) {
                build.env_remove(name);
            }
        }
        if dir.ends_with("release") {
            build.arg("--release");
        }
        assert!(
            build.status().unwrap().success(),
            "cargo build of the binaries"
        );
    });
    dir.join(name)
}

/// Reads a server's JSON log (its stderr, piped) up to `SERVING`: its gRPC and admin
/// addresses. The rest of the log is drained by a thread, so the server never blocks on a
/// full pipe.
pub fn addresses(child: &mut Child) -> (String, String) {
    let (addr, admin, _) = startup_log(child);
    (addr, admin)
}

/// [`addresses`], and every log line up to `SERVING`.
pub fn startup_log(child: &mut Child) -> (String, String, Vec<serde_json::Value>) {
    let (mut addr, mut admin, mut log) = (None, None, Vec::new());
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    for line in lines.by_ref() {
        let value: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
        log.push(value.clone());
        if let Some(a) = value["grpc_addr"].as_str() {
            addr = Some(a.to_string());
        }
        if let Some(a) = value["admin_addr"].as_str() {
            admin = Some(a.to_string());
        }
        if value["message"] == "SERVING" {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    (addr.unwrap(), admin.unwrap(), log)
}

/// The sum of the samples of `series` (a name, or a name and the start of its labels) in the
/// server's `/metrics`.
pub async fn metric(admin: &str, series: &str) -> f64 {
    let scrape = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    scrape
        .lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// (VmRSS, VmHWM) in KiB, and CPU seconds (user + system) of a process.
pub fn usage(pid: u32) -> (u64, u64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime is the 14th field overall.
    let after = stat.rsplit_once(") ").map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields.get(11).and_then(|t| t.parse().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|t| t.parse().ok()).unwrap_or(0.0);
    (field("VmRSS:"), field("VmHWM:"), ticks / 100.0)
}

/// The typed client on a plain connection to `addr`.
pub async fn connect(
    addr: &str,
) -> dakota::api::content_service_client::ContentServiceClient<tonic::transport::Channel> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    dakota::api::content_service_client::ContentServiceClient::new(channel)
}
