//! `GET /`, `GET /api/health`, `GET /api/portfolio`, and the probes `GET /livez` and
//! `GET /readyz` with Kubernetes' meaning (`/api/health` keeps the original's: 503 whenever the
//! database is down, even while listings are served from the table copy).

use std::{borrow::Cow, sync::Arc};

use bytes::Bytes;
use poem_openapi::{ApiResponse, Object, OpenApi, payload::Json};

use super::{ApiTags, RawJson};
use crate::{
    db::Ping, http::state::AppState, read::listing::Assets, storage::monitored::StorageState,
};

pub struct MetaApi {
    pub state: Arc<AppState>,
}

#[derive(Debug, Object)]
pub struct Message {
    pub message: String,
}

/// Same shape whether the database answers or not.
#[derive(Debug, Object)]
pub struct Health {
    /// Always `server active`.
    pub message: String,
    /// `connected` or `connection failed`.
    pub database: String,
    /// Why the database is not connected, when it is not.
    #[oai(skip_serializing_if_is_none)]
    pub reason: Option<String>,
    /// Present (true) when the database is connected but every connection is busy: requests
    /// queue, and pages served before are answered from their last good copy.
    #[oai(skip_serializing_if_is_none)]
    pub busy: Option<bool>,
    /// Object storage: `ok`, `refused` (credentials or bucket), `unreachable`, `failing` (local
    /// I/O) or `unchecked`. Informational: it never changes the status code.
    pub storage: String,
    /// Why storage is not `ok`, when it is not.
    #[oai(skip_serializing_if_is_none)]
    pub storage_reason: Option<String>,
    /// `public` (URLs are the objects' own), or `private` (every URL handed out is signed and
    /// expires: `storage.private`).
    pub storage_mode: String,
    /// Private mode, but anyone can read the bucket's objects without a signature (checked at
    /// start-up): private mode protects nothing until the bucket is made private.
    #[oai(skip_serializing_if_is_none)]
    pub storage_warning: Option<String>,
}

/// `GET /livez`.
#[derive(Debug, Object)]
pub struct Live {
    /// Always `alive`.
    pub status: String,
}

/// `GET /readyz`.
#[derive(Debug, Object)]
pub struct Ready {
    /// Whether a load balancer should send this server requests.
    pub ready: bool,
    /// Where listings come from: `database`, `table copy` or `embedded photographs`.
    #[oai(skip_serializing_if_is_none)]
    pub serving: Option<String>,
    /// Why not ready: `shutting down`, or `database unreachable and no saved copy of the table`.
    #[oai(skip_serializing_if_is_none)]
    pub reason: Option<String>,
}

#[derive(ApiResponse)]
pub enum ReadyResponse {
    /// Listings can be served: from the database, the saved table copy, or the embedded data
    /// when no database is configured.
    #[oai(status = 200)]
    Ready(Json<Ready>, #[oai(header = "Cache-Control")] String),
    /// Stopping (from SIGINT/SIGTERM on), or nothing of the owner's to serve yet.
    #[oai(status = 503)]
    NotReady(Json<Ready>, #[oai(header = "Cache-Control")] String),
}

#[derive(ApiResponse)]
pub enum LiveResponse {
    /// The process answers.
    #[oai(status = 200)]
    Alive(Json<Live>, #[oai(header = "Cache-Control")] String),
}

/// A storage state this old that is not `ok` is checked again (in the background) when health
/// is asked, so a fixed bucket or a store that came back shows without a restart.
const STORAGE_RECHECK: std::time::Duration = std::time::Duration::from_secs(15);

#[derive(ApiResponse)]
pub enum HealthResponse {
    /// The database answers (possibly busy).
    #[oai(status = 200)]
    Ok(Json<Health>),
    /// The database does not answer (or none is configured); reads are served from fallback data.
    #[oai(status = 503)]
    Unavailable(Json<Health>),
}

#[OpenApi(tag = "ApiTags::Meta")]
impl MetaApi {
    /// Identify the service
    #[oai(path = "/", method = "get")]
    async fn root(&self) -> Json<Message> {
        Json(Message {
            message: "Portfolio Backend API Gateway".into(),
        })
    }

    /// Service and database status
    #[oai(path = "/api/health", method = "get")]
    async fn health(&self) -> HealthResponse {
        let (state, age) = self.state.store.state();
        if state != StorageState::Ok && age > STORAGE_RECHECK {
            self.state.store.recheck_in_background();
        }
        let (word, why) = state.word_and_reason();
        let private = self.state.settings.storage.private;
        let mode = if private { "private" } else { "public" };
        let warning = (private && self.state.store.readable_anonymously() == Some(true)).then_some(
            "anyone can read this bucket's objects without a signature: private mode protects \
             nothing until the bucket is made private",
        );
        let health = |database: &str, reason: Option<String>, busy: Option<bool>| {
            Json(Health {
                message: "server active".into(),
                database: database.into(),
                reason,
                busy,
                storage: word.into(),
                storage_reason: why.map(str::to_string),
                storage_mode: mode.into(),
                storage_warning: warning.map(str::to_string),
            })
        };
        let Some(db) = &self.state.db else {
            return HealthResponse::Unavailable(health(
                "connection failed",
                Some("no database configured (set DATABASE_URL)".into()),
                None,
            ));
        };
        match db.ping().await {
            Ping::Up => HealthResponse::Ok(health("connected", None, None)),
            Ping::Busy => HealthResponse::Ok(health("connected", None, Some(true))),
            Ping::Down => HealthResponse::Unavailable(health(
                "connection failed",
                Some(format!("cannot reach {}", db.target())),
                None,
            )),
        }
    }

    /// Liveness probe
    ///
    /// 200 while the process can answer at all. It never looks at the database or storage, so
    /// an outage never gets a replica restarted.
    #[oai(path = "/livez", method = "get")]
    async fn livez(&self) -> LiveResponse {
        LiveResponse::Alive(
            Json(Live {
                status: "alive".into(),
            }),
            "no-store".into(),
        )
    }

    /// Readiness probe
    ///
    /// 200 while this server can serve the owner's listings: the database answers, or its saved
    /// copy of the table is there (an outage), or no database is configured. 503 before either
    /// exists at start-up, and from the moment SIGINT/SIGTERM arrives (requests are still served
    /// for `server.drain_delay_secs`, so the load balancer takes this server out first).
    #[oai(path = "/readyz", method = "get")]
    async fn readyz(&self) -> ReadyResponse {
        let now = self.state.readiness();
        let word = Some(now.word().to_string());
        if now.is_ready() {
            let body = Ready {
                ready: true,
                serving: word,
                reason: None,
            };
            ReadyResponse::Ready(Json(body), "no-store".into())
        } else {
            let body = Ready {
                ready: false,
                serving: None,
                reason: word,
            };
            ReadyResponse::NotReady(Json(body), "no-store".into())
        }
    }

    /// Portfolio data: about, skills, projects
    ///
    /// Served from data built into the server.
    #[oai(path = "/api/portfolio", method = "get")]
    async fn portfolio(&self) -> RawJson<serde_json::Value> {
        let file = Assets::get("portfolio.json").expect("assets/portfolio.json is embedded");
        RawJson::new(match file.data {
            Cow::Borrowed(b) => Bytes::from_static(b),
            Cow::Owned(v) => Bytes::from(v),
        })
    }
}
