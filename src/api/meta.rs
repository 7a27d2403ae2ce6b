//! `GET /`, `GET /api/health`, `GET /api/portfolio`.

use std::{borrow::Cow, sync::Arc};

use bytes::Bytes;
use poem_openapi::{ApiResponse, Object, OpenApi, payload::Json};

use super::{ApiTags, RawJson};
use crate::{app::AppState, listing::Assets};

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
}

#[derive(ApiResponse)]
pub enum HealthResponse {
    /// The database answers.
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
        let health = |database: &str, reason: Option<String>| {
            Json(Health {
                message: "server active".into(),
                database: database.into(),
                reason,
            })
        };
        match &self.state.db {
            None => HealthResponse::Unavailable(health(
                "connection failed",
                Some("no database configured (set DATABASE_URL)".into()),
            )),
            Some(db) if db.ping().await => HealthResponse::Ok(health("connected", None)),
            Some(db) => HealthResponse::Unavailable(health(
                "connection failed",
                Some(format!("cannot reach {}", db.target())),
            )),
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
