//! The `dakota` binary's command line, without a server. (Also what makes cargo build the
//! binary for the workspace's end-to-end tests.)
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::process::Command;

fn dakota(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_dakota"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn help_lists_the_commands() {
    let output = dakota(&["--help"]);
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for command in ["generate", "watch", "get", "cancel", "search", "health"] {
        assert!(help.contains(command), "{command} in --help");
    }
}

#[test]
fn an_unreachable_server_is_reported_with_the_fix() {
    // Port 9 (discard) is closed on test machines: the connection is refused at once.
    let output = dakota(&["--server", "http://127.0.0.1:9", "health"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot reach the Dakota server"),
        "{stderr}"
    );
    assert!(stderr.contains("DAKOTA_SERVER"), "{stderr}");
    let output = dakota(&["--connect-timeout", "soon", "health"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--connect-timeout"));
}
