//! The `dakota-server` binary's command line: what an operator sees before anything runs.
//! (Also what makes cargo build the binary for the workspace's end-to-end tests.)
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::process::Command;

fn server(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_dakota-server"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn help_documents_the_flags_and_their_environment_variables() {
    let output = server(&["--help"]);
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for flag in [
        "--grpc-addr",
        "--admin-addr",
        "--kb-dir",
        "--llm-structured-output",
        "--admin-header-timeout",
        "OPENAI_API_KEY",
        "DAKOTA_GRPC_ADDR",
    ] {
        assert!(help.contains(flag), "{flag} in --help");
    }
}

#[test]
fn a_bad_value_is_refused_with_the_flag_named() {
    let output = server(&["--llm-structured-output", "xml"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--llm-structured-output"), "{stderr}");
    assert!(
        stderr.contains("json-schema"),
        "the valid values are listed: {stderr}"
    );
}
