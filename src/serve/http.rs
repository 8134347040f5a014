//! The REST API's HTTP server: an accept loop serving each connection with
//! hyper's HTTP/1 server, under two limits `axum::serve` lacks.
//!
//! - A header-read timeout (`api.header_read_timeout_s`), counted from
//!   when a connection opens or its previous response ended: a client that
//!   trickles a request's headers, sends nothing, or keeps an idle
//!   connection open is closed after it.
//! - A connection limit (`api.max_connections`): a permit per connection,
//!   taken before the next accept, so connections beyond the limit wait in
//!   the listen backlog, unserved, until one closes (refusing them would
//!   turn a burst of honest clients away too).
//!
//! At shutdown it stops accepting and waits for the open connections to
//! finish their requests: idle ones are closed at once, one still waiting
//! for its first request at the header-read timeout at the latest, and
//! event streams end on the same shutdown token. It knows nothing of
//! routes.

use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// The limits of [`serve`].
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    /// How long a client has to send a request's headers.
    pub header_read_timeout: Duration,
    /// The most connections served at once.
    pub max_connections: usize,
}

/// Serves `router` on `listener` until `shutdown`, then drains.
pub(super) async fn serve(
    listener: TcpListener,
    router: axum::Router,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    loop {
        // A slot first: until one is free, new connections stay queued in
        // the kernel's backlog, not accepted.
        let slot = tokio::select! {
            () = shutdown.cancelled() => break,
            s = slots.clone().acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => break, // never closed
            },
        };
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    drop(slot);
                    if !is_connection_error(&e) {
                        // Out of file descriptors, say: accepting again at
                        // once would spin.
                        warn!(error = %e, "cannot accept an API connection; pausing");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                // A header-read timeout, a client gone: the client's business.
                debug!(%peer, error = %e, "API connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// An error of one incoming connection (not of the listener): accept the
/// next at once.
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        e.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    )
}
