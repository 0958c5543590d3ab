//! `dakota-server`: configuration, logging, serve until SIGTERM/SIGINT, drain, exit.
use std::process::ExitCode;

use clap::Parser;
use dakota_server::{app::Server, config::Config, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    let telemetry = telemetry::Telemetry::init(config.log_format);
    let server = match Server::start(config).await {
        Ok(server) => server,
        Err(error) => {
            tracing::error!(%error, "could not start");
            telemetry.shutdown().await;
            return ExitCode::FAILURE;
        }
    };
    let stop = server.shutdown_handle();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutdown signal received; draining (a second signal exits at once)");
        stop.cancel();
        shutdown_signal().await;
        tracing::warn!("second shutdown signal: exiting without waiting for running jobs");
        std::process::exit(1);
    });
    let result = server.wait().await;
    telemetry.shutdown().await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "server failed");
            ExitCode::FAILURE
        }
    }
}

/// SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
