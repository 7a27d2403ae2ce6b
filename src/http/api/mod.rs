//! HTTP API: one `#[OpenApi]` struct per resource, combined in [`service`]. Handlers convert
//! HTTP into the use cases' types, call them, and render the result; every error goes through
//! [`error::ApiError`]. No business rule lives here.

pub mod auth;
pub mod error;
mod images;
mod links;
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
    types::{
        ParseError, ParseFromJSON, ParseFromMultipartField, ParseFromParameter, ParseResult,
        ToJSON, Type,
    },
};

use crate::{http::state::AppState, model::Category};

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
    /// Why, where `detail` is a fixed text (`POST /api/photos`: `Photo upload failed`).
    #[oai(skip_serializing_if_is_none)]
    pub reason: Option<String>,
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
        links::LinksApi,
        upload::UploadApi,
        photos::PhotosApi,
        meta::MetaApi,
    ),
    (),
>;

/// The OpenAPI document as served: poem-openapi's, with what it cannot say added. A schema of
/// a body read with `deny_unknown_fields` gets `"additionalProperties": false` (poem-openapi
/// refuses the fields but does not document it), so schema-driven clients never send them.
pub fn spec_json(service: &Service) -> String {
    let mut spec: serde_json::Value =
        serde_json::from_str(&service.spec()).expect("poem-openapi writes JSON");
    for closed in [photos::PhotoChange::name()] {
        if let Some(schema) = spec["components"]["schemas"].get_mut(closed.as_ref()) {
            schema["additionalProperties"] = serde_json::Value::Bool(false);
        }
    }
    serde_json::to_string(&spec).expect("a JSON value serialises")
}

/// The OpenAPI service holding every operation.
pub fn service(state: Arc<AppState>) -> Service {
    OpenApiService::new(
        (
            images::ImagesApi {
                state: state.clone(),
            },
            links::LinksApi {
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

/// A category as a client sends it, documented with the rule [`Category::parse`] applies (at
/// most 50 characters, [`Category::PATTERN`]), which stays the one check. As JSON it is a
/// string only: poem-openapi's `String` also takes numbers and booleans, so `{"category": 5}`
/// was stored as `5`.
#[derive(Debug, Clone)]
pub struct CategoryText(pub String);

impl Type for CategoryText {
    const IS_REQUIRED: bool = true;
    type RawValueType = String;
    type RawElementValueType = String;

    fn name() -> std::borrow::Cow<'static, str> {
        "string(category)".into()
    }

    fn schema_ref() -> MetaSchemaRef {
        MetaSchemaRef::Inline(Box::new(poem_openapi::registry::MetaSchema {
            max_length: Some(Category::MAX_CHARS),
            pattern: Some(Category::PATTERN.into()),
            ..poem_openapi::registry::MetaSchema::new("string")
        }))
    }

    fn as_raw_value(&self) -> Option<&String> {
        Some(&self.0)
    }

    fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a String> + 'a> {
        Box::new(std::iter::once(&self.0))
    }
}

impl ParseFromJSON for CategoryText {
    fn parse_from_json(value: Option<serde_json::Value>) -> ParseResult<Self> {
        match value {
            Some(serde_json::Value::String(s)) => Ok(CategoryText(s)),
            other => Err(ParseError::expected_type(other.unwrap_or_default())),
        }
    }
}

impl ToJSON for CategoryText {
    fn to_json(&self) -> Option<serde_json::Value> {
        Some(serde_json::Value::String(self.0.clone()))
    }
}

impl ParseFromParameter for CategoryText {
    fn parse_from_parameter(value: &str) -> ParseResult<Self> {
        Ok(CategoryText(value.to_string()))
    }
}

impl ParseFromMultipartField for CategoryText {
    async fn parse_from_multipart(field: Option<poem::web::Field>) -> ParseResult<Self> {
        String::parse_from_multipart(field)
            .await
            .map(CategoryText)
            .map_err(ParseError::propagate)
    }
}
