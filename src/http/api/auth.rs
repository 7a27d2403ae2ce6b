//! The admin key: `X-API-Key` on every write, compared in constant time, wrong keys throttled
//! per client address ([`crate::http::throttle`]).

use std::sync::Arc;

use poem::{Endpoint, EndpointExt, Request};
use poem_openapi::{SecurityScheme, auth::ApiKey};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use crate::http::state::AppState;

/// The admin key, sent as `X-API-Key`.
#[derive(SecurityScheme)]
#[oai(
    ty = "api_key",
    key_name = "X-API-Key",
    key_in = "header",
    checker = "check_api_key"
)]
pub struct AdminKey(#[allow(dead_code)] ApiKey);

/// Compares SHA-256 digests in constant time: neither the key's bytes nor its length leak
/// through timing. An address that sent too many wrong keys is answered 429 before its key is
/// compared ([`crate::http::throttle`]); a wrong key is counted against its address.
async fn check_api_key(req: &Request, key: ApiKey) -> poem::Result<ApiKey> {
    let state = req
        .data::<Arc<AppState>>()
        .ok_or_else(ApiError::<()>::unauthorized)?;
    let expected = state
        .settings
        .auth
        .admin_api_key
        .as_ref()
        .ok_or_else(ApiError::<()>::unauthorized)?;
    let throttle = &state.key_throttle;
    let peer = match req.remote_addr().as_socket_addr() {
        Some(a) => a.ip(),
        // Not a TCP peer (poem's test client): one address for all.
        None => std::net::Ipv4Addr::UNSPECIFIED.into(),
    };
    let forwarded = forwarded_for(req);
    let client = throttle.client(peer, forwarded.as_deref());
    let now = std::time::Instant::now();
    let refused = |reason| {
        state
            .metrics
            .key_refusals
            .with_label_values(&[reason])
            .inc()
    };
    if let Some(wait) = throttle.wait(client, now) {
        refused("throttled");
        return Err(
            ApiError::<()>::throttled(crate::http::throttle::retry_after_secs(wait)).into(),
        );
    }
    let given = Sha256::digest(key.key.as_bytes());
    let wanted = Sha256::digest(expected.expose().as_bytes());
    if bool::from(given.ct_eq(&wanted)) {
        Ok(key)
    } else {
        throttle.wrong_key(client, now);
        refused("wrong");
        Err(ApiError::<()>::unauthorized().into())
    }
}

/// Every `X-Forwarded-For` header of a request, joined by commas in order (RFC 9110: several
/// field lines of one name are one comma-separated list).
fn forwarded_for(req: &Request) -> Option<String> {
    let mut values = req.headers().get_all("x-forwarded-for").iter();
    let first = values.next()?.to_str().ok()?.to_string();
    values.try_fold(first, |mut all, v| {
        all.push(',');
        all.push_str(v.to_str().ok()?);
        Some(all)
    })
}

/// Uploads need a configured admin key; without one they are refused up front with 503 and a
/// message saying what to set, before the key or the body is looked at.
pub fn require_admin_key(ep: impl Endpoint) -> impl Endpoint {
    ep.before(|req: Request| async move {
        let configured = req
            .data::<Arc<AppState>>()
            .is_some_and(|s| s.settings.auth.admin_api_key.is_some());
        if configured {
            Ok(req)
        } else {
            Err(ApiError::<()>::uploads_disabled().into())
        }
    })
}
