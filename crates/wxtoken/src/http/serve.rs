//! Serving a listener with connection discipline (issue #14):
//! - at most `max_connections` connections at once: the next one is not accepted until one closes,
//!   so it waits in the kernel's backlog and holds no file descriptor of this process;
//! - a header-read timeout: a connection that has not sent a whole request head within it is
//!   closed, a new one or a keep-alive one idle after its last response (hyper restarts the timer
//!   when the connection goes idle);
//! - graceful shutdown: stop accepting, let each connection finish its request, then close.
//!
//! This is the accept loop `axum::serve` would be: `axum::serve` gives hyper no timer, so hyper's
//! header-read timeout never fires there, and it has no connection cap. hyper does the HTTP.
//!
//! At start, [`connection_caps`] raises the open-file limit to its hard limit and checks that both
//! listeners' caps fit in it with room for the database pool and upstream calls.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;

/// How one listener treats its connections, and how many it has open.
#[derive(Debug, Clone)]
pub struct Discipline {
    max_connections: usize,
    header_read_timeout: Duration,
    permits: Arc<Semaphore>,
    /// Whether requests carry the peer's address (`ConnectInfo`, for the rate limits).
    peer_address: bool,
}

impl Discipline {
    pub fn new(max_connections: usize, header_read_timeout: Duration) -> Self {
        Self {
            max_connections,
            header_read_timeout,
            permits: Arc::new(Semaphore::new(max_connections)),
            peer_address: true,
        }
    }

    /// Requests without the peer's address: for a listener with no rate limit (the gateway),
    /// which then saves a map per request.
    pub fn without_peer_address(mut self) -> Self {
        self.peer_address = false;
        self
    }

    /// Connections accepted and not yet closed.
    pub fn open_connections(&self) -> usize {
        self.max_connections - self.permits.available_permits()
    }
}

/// Default caps when the configuration sets none.
const PUBLIC_DEFAULT: usize = 2048;
const INTERNAL_DEFAULT: usize = 8192;
/// File descriptors kept for everything but client connections: the runtime, the log, the
/// listeners, the database files, the change stream, alert webhooks.
const RESERVED_FDS: u64 = 64;

/// The caps of the public and internal listeners, checked against the open-file limit (raised to
/// its hard limit first). Unset caps are lowered to fit: public gets at most a fifth of the room.
/// `Err` names the keys when configured caps do not fit.
pub fn connection_caps(config: &Config) -> Result<(usize, usize), String> {
    let limit = raise_nofile_limit();
    let others = RESERVED_FDS
        + u64::from(config.storage.max_connections)
        + config.refresh.concurrency as u64;
    let room = limit.saturating_sub(others);
    let s = &config.server;
    let public = s
        .public_max_connections
        .unwrap_or_else(|| PUBLIC_DEFAULT.min((room / 5).max(1) as usize));
    let internal = s.internal_max_connections.unwrap_or_else(|| {
        INTERNAL_DEFAULT.min(room.saturating_sub(public as u64).max(1) as usize)
    });
    let needed = public as u64 + internal as u64 + others;
    if needed > limit {
        return Err(format!(
            "server.public_max_connections ({public}) + server.internal_max_connections \
             ({internal}) + storage.max_connections ({}) + refresh.concurrency ({}) + {RESERVED_FDS} \
             reserved = {needed} open files, more than this process may open ({limit}): lower \
             them, or raise the limit (`LimitNOFILE=` in the systemd unit, `ulimit -n`)",
            config.storage.max_connections, config.refresh.concurrency,
        ));
    }
    Ok((public, internal))
}

/// Raises the soft open-file limit to the hard limit; returns the limit now in force.
fn raise_nofile_limit() -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let current = getrlimit(Resource::Nofile);
    let Some(soft) = current.current else {
        return u64::MAX;
    };
    if current.maximum.is_some_and(|hard| hard > soft) {
        let raised = Rlimit {
            current: current.maximum,
            maximum: current.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            return current.maximum.unwrap_or(soft);
        }
    }
    soft
}

/// Serves `router` on `listener` until `stop`, then finishes the requests in flight.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    discipline: Discipline,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let (timeout, peer_address) = (discipline.header_read_timeout, discipline.peer_address);
    let connections = TaskTracker::new();
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&discipline.permits).acquire_owned() => {
                permit.expect("the semaphore is never closed")
            }
            () = stop.cancelled() => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors or the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = stop.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        // The peer address, for the rate limits (`ConnectInfo`, as axum's own serve provides it).
        let service = TowerToHyperService::new(tower::util::MapRequest::new(
            router.clone(),
            move |mut request: axum::http::Request<hyper::body::Incoming>| {
                if peer_address {
                    request.extensions_mut().insert(ConnectInfo(peer));
                }
                request
            },
        ));
        let stop = stop.clone();
        connections.spawn(async move {
            let _permit = permit;
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new()).header_read_timeout(timeout);
            let connection = http.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            // Errors end the connection (the client went away, sent garbage or timed out): there
            // is nobody to answer.
            tokio::select! {
                _ = connection.as_mut() => return,
                () = stop.cancelled() => connection.as_mut().graceful_shutdown(),
            }
            let _ = connection.await;
        });
    }
    connections.close();
    connections.wait().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_that_do_not_fit_the_open_file_limit_are_refused_naming_their_keys() {
        let mut config = Config::from_sources(crate::config::Sources::default()).expect("defaults");
        config.server.public_max_connections = Some(usize::MAX / 4);
        let err = connection_caps(&config).expect_err("cannot fit");
        assert!(err.contains("server.public_max_connections"), "{err}");
        assert!(err.contains("server.internal_max_connections"), "{err}");
        assert!(err.contains("LimitNOFILE"), "{err}");
    }

    #[test]
    fn unset_caps_are_fitted_inside_the_open_file_limit() {
        let config = Config::from_sources(crate::config::Sources::default()).expect("defaults");
        let (public, internal) = connection_caps(&config).expect("defaults always fit");
        assert!((1..=PUBLIC_DEFAULT).contains(&public));
        assert!((1..=INTERNAL_DEFAULT).contains(&internal));
        let limit = raise_nofile_limit();
        assert!((public + internal) as u64 + RESERVED_FDS <= limit);
    }
}
