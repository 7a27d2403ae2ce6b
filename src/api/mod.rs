//! HTTP API: one `#[OpenApi]` struct per resource, combined in [`service`]. Handlers convert
//! HTTP into the use cases' types, call them, and render the result; every error goes through
//! [`error::ApiError`]. No business rule lives here.

pub mod error;
mod images;
pub mod media;
mod meta;
mod photos;
mod upload;

pub use images::{fast_listing, ready_listing};

use std::{marker::PhantomData, sync::Arc};

use bytes::Bytes;
use poem::{IntoResponse, Response};
use poem_openapi::{
    ApiResponse, Object, OpenApiService, Tags,
    payload::Payload,
    registry::{MetaMediaType, MetaResponse, MetaResponses, MetaSchemaRef, Registry},
    types::Type,
};

use crate::state::AppState;

#[derive(Tags)]
pub enum ApiTags {
    /// The photo listing the front end reads.
    Images,
    /// Admin uploads (`X-API-Key`).
    Uploads,
    /// Managing photos (`X-API-Key`) and their categories.
    Photos,
    /// Service status and static portfolio data.
    Meta,
}

/// Every error body: FastAPI's shape, `{"detail": "..."}`.
#[derive(Debug, Object)]
pub struct ErrorBody {
    /// What went wrong, for a person.
    pub detail: String,
}

/// A JSON body that is already serialised (a cached page, an embedded file), documented in the
/// OpenAPI spec with `T`'s schema.
pub struct RawJson<T>(pub Bytes, PhantomData<fn() -> T>);

impl<T> RawJson<T> {
    pub fn new(bytes: Bytes) -> Self {
        RawJson(bytes, PhantomData)
    }
}

impl<T: Type> Payload for RawJson<T> {
    const CONTENT_TYPE: &'static str = "application/json; charset=utf-8";

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

impl<T: Type> IntoResponse for RawJson<T> {
    fn into_response(self) -> Response {
        Response::builder()
            .content_type(Self::CONTENT_TYPE)
            .body(self.0)
    }
}

impl<T: Type> ApiResponse for RawJson<T> {
    fn meta() -> MetaResponses {
        MetaResponses {
            responses: vec![MetaResponse {
                description: "",
                status: Some(200),
                status_range: None,
                content: vec![MetaMediaType {
                    content_type: Self::CONTENT_TYPE,
                    schema: Self::schema_ref(),
                }],
                headers: vec![],
            }],
        }
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

pub type Service = OpenApiService<
    (
        images::ImagesApi,
        upload::UploadApi,
        photos::PhotosApi,
        meta::MetaApi,
    ),
    (),
>;

/// The OpenAPI service holding every operation.
pub fn service(state: Arc<AppState>) -> Service {
    OpenApiService::new(
        (
            images::ImagesApi {
                state: state.clone(),
            },
            upload::UploadApi {
                state: state.clone(),
            },
            photos::PhotosApi {
                state: state.clone(),
            },
            meta::MetaApi { state },
        ),
        "Portfolio API",
        env!("CARGO_PKG_VERSION"),
    )
    .description(
        "Photographs for the portfolio front end. Errors are always JSON `{\"detail\": \"...\"}`.",
    )
}
