//! Start-up: state, routes, middleware, the listener and graceful shutdown. Tests use the same
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
    cache::PageCache,
    config::{Settings, StorageBackend},
    db::{Db, DbError},
    front::CorsPolicy,
    front::Front,
    listing::Listing,
    storage::{self, Monitored, ObjectStore, StorageState},
    upload::Uploader,
};

/// What every handler can reach.
pub struct AppState {
    pub settings: Settings,
    /// None when no database is configured.
    pub db: Option<Db>,
    pub listing: Listing,
    pub uploader: Arc<Uploader>,
    /// The object store every upload goes through, recording its last known state for health.
    pub store: Arc<Monitored>,
    /// `Cache-Control` value for listing responses, built once.
    pub cache_control: String,
}

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

impl AppState {
    /// Builds the state. With a database configured this makes one attempt to reach it (and
    /// migrate it), bounded by the checkout timeout, and starts the background re-probe; the
    /// server starts whatever the outcome.
    pub async fn new(settings: Settings) -> Result<Arc<AppState>, StartError> {
        let store = storage::from_settings(&settings.storage);
        Self::with_store(settings, Arc::from(store)).await
    }

    /// As [`AppState::new`], with the object store given (tests wrap the real ones).
    pub async fn with_store(
        settings: Settings,
        store: Arc<dyn ObjectStore>,
    ) -> Result<Arc<AppState>, StartError> {
        let db = match &settings.database.url {
            None => {
                tracing::warn!(
                    "no database configured (DATABASE_URL is not set): serving the {} photographs \
                     built into the binary",
                    crate::listing::Fallback::load().len()
                );
                None
            }
            Some(url) => {
                let db = Db::new(url.expose(), &settings.database)?;
                tracing::info!(database = %db.target(), "connecting to the database");
                if !db.probe().await {
                    tracing::warn!(
                        database = %db.target(),
                        "database not reachable at start-up; serving embedded data and retrying \
                         every {} ms",
                        settings.database.reprobe_interval_ms
                    );
                }
                db.spawn_monitor();
                Some(db)
            }
        };
        let store = Arc::new(Monitored::new(store));
        check_storage(&settings, &store).await;
        if settings.auth.admin_api_key.is_none() {
            tracing::warn!("ADMIN_API_KEY is not set: uploads will be refused");
        } else {
            tracing::info!("uploads enabled for requests presenting ADMIN_API_KEY as X-API-Key");
        }
        tracing::info!(
            policy = %CorsPolicy::from_settings(&settings.server).describe(),
            "CORS"
        );
        let c = &settings.cache;
        tracing::info!(
            page_cache_bytes = c.max_bytes,
            stale_copy_bytes = c.stale_max_bytes,
            ttl_secs = c.ttl_secs,
            "page cache"
        );
        let listing = Listing::new(db.clone(), PageCache::new(&settings.cache));
        let uploader = Uploader::new(db.clone(), store.clone(), settings.upload.clone());
        let cache_control = format!("public, max-age={}", settings.cache.http_max_age_secs);
        Ok(Arc::new(AppState {
            settings,
            db,
            listing,
            uploader,
            store,
            cache_control,
        }))
    }
}

/// Logs where photos go, then checks the store with one cheap request and says plainly if it
/// refuses us: a wrong Supabase key should show at start-up, not as a 502 at the first upload.
async fn check_storage(settings: &Settings, store: &Arc<Monitored>) {
    tracing::info!(
        backend = %settings.storage.backend(),
        store = %store.describe(),
        url_prefix = %store.public_url(""),
        "storage"
    );
    let s = store.clone();
    let _ = tokio::task::spawn_blocking(move || s.check()).await;
    match store.state().0 {
        StorageState::Ok => tracing::info!("storage check passed"),
        StorageState::Refused(why) => tracing::error!(
            reason = %why,
            "storage REFUSED our credentials or bucket: uploads will fail until the storage \
             settings (SUPABASE_KEY, SUPABASE_BUCKET) are fixed"
        ),
        StorageState::Unreachable(why) | StorageState::Failing(why) => tracing::warn!(
            reason = %why,
            "storage check failed: uploads will fail while this lasts"
        ),
        StorageState::Unchecked => {}
    }
}

/// Every route, behind [`Front`] (CORS, errors, logging, the listing fast path). Compression
/// applies where it pays: the large docs page and spec. Listing pages carry their own gzip copy,
/// made once per cached page.
pub fn routes(state: Arc<AppState>) -> impl Endpoint<Output = Response> {
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
    Front::new(route, state)
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
        Ok(App {
            acceptor,
            state,
            addr: local,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
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
