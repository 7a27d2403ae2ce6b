//! Start-up: routes, the front layer, the listener and graceful shutdown. Tests use the same
//! path ([`AppState::new`] + [`routes`], or [`App::build`] on port 0).

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use poem::{
    Endpoint, EndpointExt, Response, Route, Server,
    endpoint::StaticFilesEndpoint,
    http::header,
    listener::{Acceptor, Listener, TcpAcceptor, TcpListener},
    middleware::{Compression, SetHeader},
};

use crate::{
    config::{Settings, StorageBackend},
    db::DbError,
    front::{CorsPolicy, Front},
    state::AppState,
};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
}

/// Every route, behind [`Front`] (CORS, errors, logging, the listing fast path). Compression
/// applies where it pays: the large docs page and spec. Listing pages carry their own gzip copy,
/// made once per cached page.
pub fn routes(state: Arc<AppState>) -> impl Endpoint<Output = Response> {
    Front::new(router(&state), state)
}

/// [`routes`] with every listing request answered by the documented operation: tests compare
/// the two to prove the fast path answers exactly as the operation does.
pub fn routes_without_fast_path(state: Arc<AppState>) -> impl Endpoint<Output = Response> {
    Front::new(router(&state), state).without_fast_path()
}

fn router(state: &Arc<AppState>) -> Route {
    let api = crate::api::service(state.clone());
    let (docs, spec) = (api.swagger_ui(), api.spec_endpoint());
    let mut route = Route::new()
        .nest("/", api)
        .nest("/docs", docs.with(Compression::new()))
        .at("/openapi.json", spec.with(Compression::new()));
    let storage = &state.settings.storage;
    if storage.backend() == StorageBackend::Local {
        // Object keys never change content (no overwrite), so copies may be kept for a year.
        route = route.nest(
            "/media",
            StaticFilesEndpoint::new(&storage.local_dir).with(
                SetHeader::new()
                    .overriding(header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
            ),
        );
    }
    route
}

/// A bound server, ready to run.
pub struct App {
    acceptor: TcpAcceptor,
    state: Arc<AppState>,
    addr: SocketAddr,
}

impl App {
    /// Builds the state and binds the listener (port 0 picks a free port).
    pub async fn build(settings: Settings) -> Result<App, StartError> {
        let addr = format!("{}:{}", settings.server.host, settings.server.port);
        let acceptor = TcpListener::bind(addr.clone())
            .into_acceptor()
            .await
            .map_err(|source| StartError::Bind {
                addr: addr.clone(),
                source,
            })?;
        let local = acceptor
            .local_addr()
            .first()
            .and_then(|a| a.as_socket_addr().copied())
            .ok_or_else(|| StartError::Bind {
                addr,
                source: std::io::Error::other("no local address"),
            })?;
        let state = AppState::new(settings).await?;
        tracing::info!(
            policy = %CorsPolicy::from_settings(&state.settings.server).describe(),
            "CORS"
        );
        Ok(App {
            acceptor,
            state,
            addr: local,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn state(&self) -> Arc<AppState> {
        self.state.clone()
    }

    /// Serves until `shutdown` completes, then lets in-flight requests finish (up to
    /// `server.shutdown_grace_secs`).
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let grace = Duration::from_secs(self.state.settings.server.shutdown_grace_secs);
        tracing::info!(address = %self.addr, "listening");
        let endpoint = routes(self.state);
        Server::new_with_acceptor(self.acceptor)
            .run_with_graceful_shutdown(endpoint, shutdown, Some(grace))
            .await
    }
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
    tracing::info!("shutdown requested; finishing in-flight requests");
}
