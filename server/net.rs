//! Accepting connections so that neither a burst nor a slow client can starve the server:
//! accept loops that back off when the process is out of file descriptors, and an admin
//! HTTP server with a header-read timeout and a connection limit.
use std::{sync::Arc, time::Duration};

use hyper::server::conn::http1;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// First and longest pause after a failed `accept`.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(5), Duration::from_secs(1));

/// Accepts the next connection, with Nagle's algorithm off (events are small writes that
/// Nagle plus delayed ACKs would hold back by tens of milliseconds). A failed `accept`
/// (EMFILE, ENFILE, ENOBUFS or a connection reset before it was taken) is retried after a
/// pause that doubles while failures repeat, instead of spinning on a listener that stays
/// readable; one warning per run of failures.
pub async fn accept(listener: &TcpListener) -> TcpStream {
    let mut pause = ACCEPT_BACKOFF.0;
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                return stream;
            }
            Err(error) => {
                if pause == ACCEPT_BACKOFF.0 {
                    tracing::warn!(%error, "accept failed; backing off");
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(ACCEPT_BACKOFF.1);
            }
        }
    }
}

/// Limits of the admin HTTP server.
#[derive(Debug, Clone, Copy)]
pub struct AdminLimits {
    /// A request's headers must arrive within this; it also closes idle keep-alive connections.
    pub header_timeout: Duration,
    pub max_connections: usize,
}

/// Serves `router` on `listener` over HTTP/1.1 (what probes and scrapers speak) until `stop`
/// is cancelled, then lets open requests finish. HTTP/1 only, so that the header timeout runs
/// from the first byte the server waits for: a connection that sends nothing, or half a
/// request, is closed after it; beyond the connection limit, new ones are closed at once.
pub async fn serve_admin(
    listener: TcpListener,
    router: axum::Router,
    limits: AdminLimits,
    stop: CancellationToken,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let builder = Arc::new(builder);
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let connections = TaskTracker::new();
    loop {
        let stream = tokio::select! {
            stream = accept(&listener) => stream,
            () = stop.cancelled() => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!("admin port at its connection limit; closing a new connection");
            continue; // dropping the stream closes it
        };
        let (builder, router, stop) = (builder.clone(), router.clone(), stop.clone());
        connections.spawn(async move {
            let _slot = slot;
            let service = TowerToHyperService::new(router);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => return,
                () = stop.cancelled() => connection.as_mut().graceful_shutdown(),
            }
            let _ = tokio::time::timeout(limits.header_timeout, connection).await;
        });
    }
    connections.close();
    connections.wait().await;
}
