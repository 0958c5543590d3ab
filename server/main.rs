//! `dakota-server`: configuration, logging, serve until SIGTERM/SIGINT, drain, exit.
use std::process::ExitCode;

use dakota_server::{app::Server, config::Config, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::load();
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
    // Listening from now on, once: a second signal is never lost between two listeners.
    let mut signals = Signals::new();
    tokio::spawn(async move {
        signals.next().await;
        tracing::info!("shutdown signal received; draining (a second signal exits at once)");
        stop.cancel();
        signals.next().await;
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

/// SIGINT and SIGTERM, listened to for the life of the process.
struct Signals {
    #[cfg(unix)]
    streams: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Signals {
    fn new() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let streams = signal(SignalKind::interrupt())
                .and_then(|i| Ok((i, signal(SignalKind::terminate())?)))
                .ok();
            Self { streams }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// The next SIGINT or SIGTERM.
    async fn next(&mut self) {
        #[cfg(unix)]
        if let Some((interrupt, terminate)) = &mut self.streams {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}
