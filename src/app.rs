//! Start-up: routes, the front layer, the listener and graceful shutdown. Tests use the same
//! path ([`AppState::new`] + [`routes`], or [`App::build`] on port 0).

use std::{
    future::Future,
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use poem::{Endpoint, EndpointExt, Response, Route, middleware::Compression};

use crate::{
    config::{Settings, StorageBackend},
    db::DbError,
    http::api::media,
    http::front::{CorsPolicy, Front},
    http::server,
    http::state::AppState,
    storage::{local::LocalStore, signing::UrlKey},
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
    let api = crate::http::api::service(state.clone());
    let docs = api.swagger_ui();
    let spec = bytes::Bytes::from(crate::http::api::spec_json(&api));
    let spec = poem::endpoint::make_sync(move |_| {
        Response::builder()
            .content_type("application/json; charset=utf-8")
            .body(spec.clone())
    });
    let mut route = Route::new()
        .nest("/", api)
        // Read-only pages: any other method is 405 (poem answers HEAD as GET).
        .nest("/docs", poem::get(docs.with(Compression::new())))
        .at("/openapi.json", poem::get(spec.with(Compression::new())));
    let admin = Arc::new(crate::http::admin::Admin::new(state));
    route = route
        .at(
            "/admin",
            poem::get(crate::http::admin::index).data(admin.clone()),
        )
        .at(
            "/admin/:file",
            poem::get(crate::http::admin::asset).data(admin),
        );
    if state.settings.server.metrics {
        route = route.at("/metrics", poem::get(metrics));
    }
    let storage = &state.settings.storage;
    if storage.backend() == StorageBackend::Local {
        let store = LocalStore::new(&storage.local_dir, &storage.public_base_url);
        // Private: the key the store signs with (made by the store's opening, so the same).
        let url_key = storage
            .private
            .then(|| UrlKey::from_settings(storage))
            .transpose()
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "cannot read the key for signing /media URLs");
                // Nothing signed can be checked, so nothing is served: a key no one has.
                Some(UrlKey::unknown())
            });
        route = route.nest(
            "/media",
            Route::new()
                .at("/:filename", poem::get(media::media))
                .data(Arc::new(media::Media(store, url_key))),
        );
    }
    route
}

/// `GET /metrics`, in the Prometheus text format (version 0.0.4).
#[poem::handler]
async fn metrics(state: poem::web::Data<&Arc<AppState>>) -> Response {
    Response::builder()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .header(poem::http::header::CACHE_CONTROL, "no-store")
        .body(state.render_metrics().await)
}

/// A bound server, ready to run.
pub struct App {
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    addr: SocketAddr,
    limits: server::Limits,
}

impl App {
    /// Builds the state and binds the listener (port 0 picks a free port).
    pub async fn build(settings: Settings) -> Result<App, StartError> {
        let addr = format!("{}:{}", settings.server.host, settings.server.port);
        let bind_error = |source| StartError::Bind {
            addr: addr.clone(),
            source,
        };
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(bind_error)?;
        let local = listener.local_addr().map_err(bind_error)?;
        let open_files = server::raise_open_files_limit();
        let limits = server::Limits {
            max_connections: match settings.server.max_connections {
                0 => server::Limits::connections_allowed_by(open_files),
                n => n,
            },
            header_read_timeout: Duration::from_secs(settings.server.header_read_timeout_secs),
            keep_alive_timeout: Duration::from_secs(settings.server.keep_alive_timeout_secs),
            send_stall_timeout: Duration::from_secs(settings.server.send_stall_timeout_secs),
        };
        tracing::info!(
            max_connections = limits.max_connections,
            open_files_limit = open_files,
            header_read_timeout_secs = settings.server.header_read_timeout_secs,
            keep_alive_timeout_secs = settings.server.keep_alive_timeout_secs,
            send_stall_timeout_secs = settings.server.send_stall_timeout_secs,
            "connections"
        );
        let state = AppState::new(settings).await?;
        tracing::info!(
            policy = %CorsPolicy::from_settings(&state.settings.server).describe(),
            "CORS"
        );
        Ok(App {
            listener,
            state,
            addr: local,
            limits,
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
        let delay = Duration::from_secs(self.state.settings.server.drain_delay_secs);
        tracing::info!(address = %self.addr, "listening");
        let state = self.state.clone();
        // The signal first fails readiness; requests go on being accepted for the drain delay,
        // then the listener closes and in-flight requests get the grace period.
        let shutdown = {
            let state = state.clone();
            async move {
                shutdown.await;
                state.draining.store(true, Ordering::Release);
                if !delay.is_zero() {
                    tracing::info!(
                        drain_delay_secs = delay.as_secs(),
                        "not ready (/readyz 503); serving on while load balancers take this \
                         server out"
                    );
                    tokio::time::sleep(delay).await;
                }
                tracing::info!("no longer accepting; finishing in-flight requests");
            }
        };
        let endpoint = routes(self.state);
        let served = server::serve(self.listener, endpoint, self.limits, shutdown, grace).await;
        state.listing.flush_copy().await;
        served
    }
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM. The handlers are installed when this is called,
/// not when the future is first polled: a SIGTERM that arrives between start-up and the first
/// poll (the accept loop may take a connection before it) is caught and drained like any
/// other, instead of killing the process with the default action. Seen in CI: a SIGTERM sent
/// right after the first answer was lost that way, once.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        let wait = |s: std::io::Result<tokio::signal::unix::Signal>| async move {
            match s {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = wait(int) => {}
            _ = wait(term) => {}
        }
        tracing::info!("shutdown requested");
    }
}
