//! The HTTP server: a node's router on hyper's HTTP/1, as `axum::serve` runs it (connect info,
//! upgrades, a graceful stop), plus what `axum::serve` lacks: a bound on how long a client may
//! take to send a request's head. Without one, a client that opens connections and trickles
//! headers (or sends nothing) holds a task and a file descriptor each, for ever.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::serve::Listener;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;

/// Serves `router` on `listener` until `shutdown`, then stops accepting, lets each connection
/// finish the request it is in, and returns once every connection is done (an upgraded
/// connection, a WebSocket, is its service's to close). A request's head, and on a kept-alive
/// connection the next one, must arrive within `head_timeout`, else the connection is closed.
pub async fn serve<L>(
    mut listener: L,
    router: Router,
    head_timeout: Duration,
    shutdown: CancellationToken,
) where
    L: Listener<Addr = SocketAddr>,
{
    let mut make = router.into_make_service_with_connect_info::<SocketAddr>();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(head_timeout);
    let connections = TaskTracker::new();
    loop {
        let (io, remote) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => break,
        };
        let service: Result<_, Infallible> = make.call(remote).await;
        let Ok(service) = service;
        let connection = http
            .serve_connection(TokioIo::new(io), TowerToHyperService::new(service))
            .with_upgrades();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                served = connection.as_mut() => return finished(served),
                () = shutdown.cancelled() => connection.as_mut().graceful_shutdown(),
            }
            finished(connection.await);
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// A connection's end: a client that went away, or was too slow, is no news.
fn finished(served: hyper::Result<()>) {
    if let Err(e) = served {
        tracing::debug!(error = %e, "connection ended");
    }
}
