//! The one reconnect loop of the dispatcher's broker components (the
//! relay, the result consumer, the RPC API): connect within a bound, obey
//! shutdown while connecting, back off with jitter after a failure, and
//! count reconnects. Each component calls [`Reconnect::connect`] at the top
//! of its loop and runs its session on what it returns until the
//! connection is lost.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::BrokerError;
use crate::backoff::Backoff;

/// The most a component waits to (re)connect: declare the topology and
/// open its channel. Past it, it backs off and tries again: after a forced
/// close, a declare or a channel open on a connection the broker dropped
/// has been seen never to return.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// The connection state of one component.
pub struct Reconnect {
    /// The metric label and log name (`relay`, `replies`, `rpc`).
    component: &'static str,
    backoff: Backoff,
    connected_before: bool,
}

impl Reconnect {
    /// A component that has not connected yet.
    pub fn new(component: &'static str) -> Self {
        Self {
            component,
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(10)),
            connected_before: false,
        }
    }

    /// Connects with `connect`, again and again with backoff until it
    /// succeeds; `None` once `shutdown` fires. A reconnect after a loss is
    /// counted in `bora_broker_reconnects_total{component}`.
    pub async fn connect<C, F>(
        &mut self,
        shutdown: &CancellationToken,
        mut connect: impl FnMut() -> F,
    ) -> Option<C>
    where
        F: Future<Output = Result<C, BrokerError>>,
    {
        loop {
            if shutdown.is_cancelled() {
                return None;
            }
            let bounded = async {
                tokio::time::timeout(CONNECT_TIMEOUT, connect())
                    .await
                    .unwrap_or(Err(BrokerError::Timeout(CONNECT_TIMEOUT)))
            };
            // A broker that accepts the TCP connection and then says nothing
            // holds the connect for its bound: obey shutdown meanwhile.
            let connected = tokio::select! {
                _ = shutdown.cancelled() => return None,
                c = bounded => c,
            };
            match connected {
                Ok(c) => {
                    info!(component = self.component, "connected to the broker");
                    if std::mem::replace(&mut self.connected_before, true) {
                        metrics::counter!("bora_broker_reconnects_total", "component" => self.component)
                            .increment(1);
                    }
                    self.backoff.reset();
                    return Some(c);
                }
                Err(e) => {
                    warn!(component = self.component, error = %e, "cannot reach the broker; retrying");
                    if !self.pause(shutdown).await {
                        return None;
                    }
                }
            }
        }
    }

    /// Waits the next backoff delay; `false` if `shutdown` fired meanwhile.
    /// For a session's own retries (a store that refused a batch).
    pub async fn pause(&mut self, shutdown: &CancellationToken) -> bool {
        tokio::select! {
            _ = shutdown.cancelled() => false,
            _ = tokio::time::sleep(self.backoff.next_delay()) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    /// A connect that fails `failures` times, then succeeds with the try's number.
    fn flaky(
        failures: u32,
        tries: Arc<AtomicU32>,
    ) -> impl FnMut() -> std::future::Ready<Result<u32, BrokerError>> {
        move || {
            let n = tries.fetch_add(1, Ordering::SeqCst) + 1;
            std::future::ready(if n <= failures {
                Err(BrokerError::Timeout(Duration::ZERO))
            } else {
                Ok(n)
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_with_growing_backoff_until_it_connects() {
        let tries = Arc::new(AtomicU32::new(0));
        let shutdown = CancellationToken::new();
        let mut link = Reconnect::new("test");
        let started = tokio::time::Instant::now();
        let connected = link.connect(&shutdown, flaky(5, tries.clone())).await;
        assert_eq!(connected, Some(6));
        // Five pauses of 50-100, 100-200, 200-400, 400-800, 800-1600 ms.
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(1550) && waited <= Duration::from_millis(3100),
            "{waited:?}"
        );
        // After a success the next loss starts from the shortest pause again.
        let started = tokio::time::Instant::now();
        let again = link.connect(&shutdown, flaky(7, tries.clone())).await;
        assert_eq!(again, Some(8));
        assert!(
            started.elapsed() <= Duration::from_millis(100),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_the_retries() {
        let tries = Arc::new(AtomicU32::new(0));
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            stop.cancel();
        });
        let mut link = Reconnect::new("test");
        let connected = link
            .connect(&shutdown, flaky(u32::MAX, tries.clone()))
            .await;
        assert_eq!(connected, None);
        // Backoff capped at 10 s: a handful of tries in 30 s, not thousands.
        let n = tries.load(Ordering::SeqCst);
        assert!((4..=12).contains(&n), "{n} tries");
    }

    #[tokio::test(start_paused = true)]
    async fn a_connect_that_hangs_is_cut_at_the_bound() {
        let shutdown = CancellationToken::new();
        let mut link = Reconnect::new("test");
        let mut calls = 0;
        let started = tokio::time::Instant::now();
        let connected = link
            .connect(&shutdown, || {
                calls += 1;
                let first = calls == 1;
                async move {
                    if first {
                        std::future::pending::<()>().await;
                    }
                    Ok::<u32, BrokerError>(calls)
                }
            })
            .await;
        assert_eq!(connected, Some(2));
        assert!(
            started.elapsed() >= CONNECT_TIMEOUT,
            "{:?}",
            started.elapsed()
        );
    }
}
