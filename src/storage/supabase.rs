//! The Supabase Storage backend, over its REST API.

use std::time::Duration;

use super::{
    IMMUTABLE, MAX_OBJECT_BYTES, ObjectInfo, ObjectStore, Put, StorageError, encode_key, probe_key,
};
use crate::config::Secret;

/// Supabase Storage over its REST API.
///
/// Supabase reports nearly every error as HTTP 400 with the real status as a *string*
/// `statusCode` in the JSON body (`../shared/notes/supabase-storage.md`), so outcomes are read
/// from the body, not the HTTP status.
pub struct SupabaseStore {
    base: String,
    key: Secret,
    bucket: String,
    agent: ureq::Agent,
    timeout: Duration,
}

impl SupabaseStore {
    pub fn new(url: &str, key: Secret, bucket: &str, timeout: Duration) -> SupabaseStore {
        let agent = ureq::Agent::config_builder()
            .timeout_connect(Some(Duration::from_secs(5).min(timeout)))
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .build()
            .into();
        SupabaseStore {
            base: url.trim_end_matches('/').to_string(),
            key,
            bucket: bucket.to_string(),
            agent,
            timeout,
        }
    }

    /// `{base}/storage/v1/object/{area}{bucket}/{key}`; `area` is "" or "public/".
    fn object_url(&self, area: &str, key: &str) -> String {
        format!(
            "{}/storage/v1/object/{area}{}/{}",
            self.base,
            encode_key(&self.bucket),
            encode_key(key)
        )
    }

    fn bearer(&self) -> String {
        format!("Bearer {}", self.key.expose())
    }
}

/// Supabase's two credential headers on a request (storage reads the bearer token; the
/// gateway in front of it may want `apikey`).
trait Authed: Sized {
    fn authed(self, store: &SupabaseStore) -> Self;
}

impl<B> Authed for ureq::RequestBuilder<B> {
    fn authed(self, store: &SupabaseStore) -> Self {
        self.header("Authorization", &store.bearer())
            .header("apikey", store.key.expose())
    }
}

fn transport(e: ureq::Error) -> StorageError {
    StorageError::Unavailable(e.to_string())
}

/// The status Supabase meant: the body's `statusCode` (a string, sometimes a number) if present,
/// else the HTTP status; and its message.
fn reported(http_status: u16, body: &str) -> (u16, String) {
    let json: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    let status = match &json["statusCode"] {
        serde_json::Value::String(s) => s.parse().ok(),
        serde_json::Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
        _ => None,
    }
    .unwrap_or(http_status);
    let message = json["message"]
        .as_str()
        .or(json["error"].as_str())
        .map(str::to_string)
        .unwrap_or_else(|| {
            let t = body.trim();
            if t.is_empty() {
                format!("HTTP {http_status}")
            } else {
                t.chars().take(300).collect()
            }
        });
    (status, message)
}

/// Whether real Supabase Storage takes `key` (v1.70.6, `src/storage/limits.ts`; recorded in
/// `shared/notes/supabase-storage.md`): not empty, only `A-Z a-z 0-9 _ / ! . * ' ( ) space & $
/// = @ ; : + , ? -`, and no `..` path segment. Anything else is refused with 400 InvalidKey.
pub fn supabase_accepts(key: &str) -> bool {
    !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_/!.*'() &$=@;:+,?-".contains(&b))
        && !key.split('/').any(|segment| segment == "..")
}

impl SupabaseStore {
    /// Refuses, without a request, a key the server would refuse.
    fn valid(&self, key: &str) -> Result<(), StorageError> {
        if supabase_accepts(key) {
            return Ok(());
        }
        Err(StorageError::ObjectRefused {
            status: 400,
            message: format!(
                "Invalid key: {key} (Supabase Storage accepts only letters, digits, spaces and \
                 _/!.*'()&$=@;:+,?- in object keys)"
            ),
        })
    }
}

/// The `signedURL` of each answer of the sign endpoint, in order; None for an item it could
/// not sign (its `error` says why).
fn signed_answers(body: &str) -> Result<Vec<Option<String>>, StorageError> {
    let items: Vec<serde_json::Value> = serde_json::from_str(body).map_err(|e| {
        StorageError::Unreadable(format!(
            "the sign endpoint's answer is not a JSON array: {e}"
        ))
    })?;
    Ok(items
        .iter()
        .map(|item| {
            let signed = item["signedURL"].as_str().filter(|p| p.starts_with('/'));
            if signed.is_none() {
                tracing::warn!(
                    path = %item["path"],
                    error = %item["error"],
                    "storage could not sign a URL"
                );
            }
            signed.map(str::to_string)
        })
        .collect())
}

/// The error a Supabase error answer means: the refusal of one object (a key it does not
/// take, too large) or of the request as a whole.
fn refusal(http_status: u16, body: &str) -> StorageError {
    let (status, message) = reported(http_status, body);
    let code = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|j| j["code"].as_str().map(str::to_string));
    match code.as_deref() {
        Some("InvalidKey" | "EntityTooLarge") => StorageError::ObjectRefused { status, message },
        _ if status == 413 => StorageError::ObjectRefused { status, message },
        _ => StorageError::Rejected { status, message },
    }
}

impl ObjectStore for SupabaseStore {
    fn put_new(&self, key: &str, bytes: &[u8]) -> Result<Put, StorageError> {
        self.valid(key)?;
        let mut resp = self
            .agent
            .post(&self.object_url("", key))
            .authed(self)
            .header("x-upsert", "false")
            .header("cache-control", IMMUTABLE)
            .content_type("image/jpeg")
            .send(bytes)
            .map_err(transport)?;
        let http = resp.status().as_u16();
        if (200..300).contains(&http) {
            return Ok(Put::Created);
        }
        let body = resp.body_mut().read_to_string().unwrap_or_default();
        if reported(http, &body).0 == 409 || http == 409 {
            return Ok(Put::AlreadyExists);
        }
        Err(refusal(http, &body))
    }

    /// A key Supabase refuses cannot name an object: deleting it is done already.
    fn delete(&self, key: &str) -> Result<(), StorageError> {
        if !supabase_accepts(key) {
            return Ok(());
        }
        let url = format!(
            "{}/storage/v1/object/{}",
            self.base,
            encode_key(&self.bucket)
        );
        let mut resp = self
            .agent
            .delete(&url)
            .authed(self)
            .force_send_body()
            .send_json(serde_json::json!({ "prefixes": [key] }))
            .map_err(transport)?;
        let http = resp.status().as_u16();
        if (200..300).contains(&http) {
            return Ok(());
        }
        let body = resp.body_mut().read_to_string().unwrap_or_default();
        match reported(http, &body) {
            (404, _) => Ok(()),
            _ => Err(refusal(http, &body)),
        }
    }

    fn exists(&self, key: &str) -> Result<bool, StorageError> {
        if !supabase_accepts(key) {
            return Ok(false);
        }
        let mut resp = self
            .agent
            .head(&self.object_url("", key))
            .authed(self)
            .call()
            .map_err(transport)?;
        let http = resp.status().as_u16();
        if (200..300).contains(&http) {
            return Ok(true);
        }
        let body = resp.body_mut().read_to_string().unwrap_or_default();
        match reported(http, &body) {
            (404, _) => Ok(false),
            (400, _) if body.is_empty() => Ok(false), // HEAD errors carry no body
            _ => Err(refusal(http, &body)),
        }
    }

    /// `GET /storage/v1/object/{bucket}/{key}` with the service key (works on private buckets).
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        if !supabase_accepts(key) {
            return Ok(None);
        }
        let mut resp = self
            .agent
            .get(&self.object_url("", key))
            .authed(self)
            .call()
            .map_err(transport)?;
        let http = resp.status().as_u16();
        if (200..300).contains(&http) {
            return resp
                .body_mut()
                .with_config()
                .limit(MAX_OBJECT_BYTES)
                .read_to_vec()
                .map(Some)
                .map_err(transport);
        }
        let body = resp.body_mut().read_to_string().unwrap_or_default();
        match reported(http, &body) {
            (404, _) => Ok(None),
            _ => Err(refusal(http, &body)),
        }
    }

    fn settle_time(&self) -> Duration {
        self.timeout
    }

    fn public_url(&self, key: &str) -> String {
        self.object_url("public/", key)
    }

    fn accepts_key(&self, key: &str) -> bool {
        supabase_accepts(key)
    }

    /// One request for all of them: `POST /storage/v1/object/sign/{bucket}` with
    /// `{"expiresIn", "paths"}`, which answers `[{"error", "path", "signedURL"}]` in order, each
    /// `signedURL` a path under `/storage/v1` (`/object/sign/…?token=…`). A key it cannot sign
    /// (no such object) keeps its public URL, which reads nothing from a private bucket.
    fn signed_urls(&self, keys: &[&str], lifetime: Duration) -> Result<Vec<String>, StorageError> {
        let url = format!(
            "{}/storage/v1/object/sign/{}",
            self.base,
            encode_key(&self.bucket)
        );
        let mut resp = self
            .agent
            .post(&url)
            .authed(self)
            .send_json(serde_json::json!({
                "expiresIn": lifetime.as_secs().max(1),
                "paths": keys,
            }))
            .map_err(transport)?;
        let http = resp.status().as_u16();
        let body = resp.body_mut().read_to_string().map_err(transport)?;
        if !(200..300).contains(&http) {
            return Err(refusal(http, &body));
        }
        let answers = signed_answers(&body)?;
        if answers.len() != keys.len() {
            return Err(StorageError::Unreadable(format!(
                "signing {} URLs gave {} answers",
                keys.len(),
                answers.len()
            )));
        }
        Ok(keys
            .iter()
            .zip(answers)
            .map(|(key, signed)| match signed {
                Some(path) => format!("{}/storage/v1{path}", self.base),
                None => self.public_url(key),
            })
            .collect())
    }

    /// `GET /storage/v1/bucket/{bucket}` (answers only with a valid service key, and only if the
    /// bucket exists; at most 5 s), then a probe object written and deleted.
    fn check(&self) -> Result<(), StorageError> {
        let url = format!(
            "{}/storage/v1/bucket/{}",
            self.base,
            encode_key(&self.bucket)
        );
        let mut resp = self
            .agent
            .get(&url)
            .config()
            .timeout_global(Some(self.timeout.min(Duration::from_secs(5))))
            .build()
            .authed(self)
            .call()
            .map_err(transport)?;
        let http = resp.status().as_u16();
        if !(200..300).contains(&http) {
            let body = resp.body_mut().read_to_string().unwrap_or_default();
            return match reported(http, &body) {
                (404, _) => Err(StorageError::Rejected {
                    status: 404,
                    message: format!("bucket `{}` not found", self.bucket),
                }),
                _ => Err(refusal(http, &body)),
            };
        }
        // Reading the bucket proves the key can read; only a write proves uploads work (a
        // bucket's MIME types or size limit, a key without write rights).
        let probe = probe_key();
        let written = self.put_new(&probe, b"probe");
        let _ = self.delete(&probe);
        match written? {
            Put::Created | Put::AlreadyExists => Ok(()),
        }
    }

    fn describe(&self) -> String {
        format!("Supabase bucket `{}` at {}", self.bucket, self.base)
    }

    /// `POST /storage/v1/object/list/{bucket}`, 1,000 names a page. Entries without an `id`
    /// are folders (this server stores no keys with `/`) and are skipped.
    fn list(&self, progress: &mut dyn FnMut(usize)) -> Result<Vec<ObjectInfo>, StorageError> {
        const PAGE: usize = 1000;
        let url = format!(
            "{}/storage/v1/object/list/{}",
            self.base,
            encode_key(&self.bucket)
        );
        let mut out = Vec::new();
        let mut offset = 0;
        loop {
            let mut resp = self
                .agent
                .post(&url)
                .authed(self)
                .send_json(serde_json::json!({
                    "prefix": "",
                    "limit": PAGE,
                    "offset": offset,
                    "sortBy": {"column": "name", "order": "asc"},
                }))
                .map_err(transport)?;
            let http = resp.status().as_u16();
            let body = resp.body_mut().read_to_string().unwrap_or_default();
            if !(200..300).contains(&http) {
                return Err(refusal(http, &body));
            }
            let items: Vec<serde_json::Value> = serde_json::from_str(&body)
                .map_err(|e| StorageError::Unreadable(format!("a listing page: {e}")))?;
            let n = items.len();
            for item in items {
                let (Some(name), false) = (item["name"].as_str(), item["id"].is_null()) else {
                    continue;
                };
                if name.starts_with('.') {
                    continue; // a probe, never a photo
                }
                let modified = item["updated_at"]
                    .as_str()
                    .or(item["created_at"].as_str())
                    .and_then(|t| humantime::parse_rfc3339_weak(t.trim_end_matches('Z')).ok());
                out.push(ObjectInfo {
                    key: name.to_string(),
                    modified,
                });
            }
            progress(out.len());
            if n < PAGE {
                return Ok(out);
            }
            offset += n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn supabase_refusals_of_one_object_are_told_from_refusals_of_the_store() {
        let object = |body: &str| matches!(refusal(400, body), StorageError::ObjectRefused { .. });
        assert!(object(
            r#"{"statusCode":"400","error":"InvalidKey","message":"Invalid key: a~b","code":"InvalidKey"}"#
        ));
        assert!(object(
            r#"{"statusCode":"413","error":"Payload too large","message":"The object exceeded the maximum allowed size","code":"EntityTooLarge"}"#
        ));
        assert!(object(r#"{"statusCode":"413","message":"too large"}"#));
        assert!(matches!(
            refusal(413, ""),
            StorageError::ObjectRefused { status: 413, .. }
        ));
        for store_wide in [
            r#"{"statusCode":"415","error":"invalid_mime_type","message":"mime type image/jpeg is not supported","code":"InvalidMimeType"}"#,
            r#"{"statusCode":"404","error":"Bucket not found","message":"Bucket not found","code":"NoSuchBucket"}"#,
            r#"{"statusCode":"403","error":"Unauthorized","message":"signature verification failed","code":"AccessDenied"}"#,
            "",
        ] {
            assert!(
                matches!(refusal(400, store_wide), StorageError::Rejected { .. }),
                "{store_wide}"
            );
        }
    }

    #[test]
    fn supabase_keys_are_checked_by_the_real_servers_rule() {
        for good in [
            "a.jpg",
            "thumb--a.jpg",
            "users/42/a.jpg",
            ".probe-1-2",
            "A-Z_0.9!*'() &$=@;:+,?-",
            "a/./b",
            "...",
        ] {
            assert!(supabase_accepts(good), "{good}");
        }
        for bad in [
            "",
            "thumb~a.jpg",
            "{x}.jpg",
            "a#b",
            "a%b",
            "[a]",
            "a^b",
            "a|b",
            "a`b",
            "caf\u{e9}",
            "a\u{1}b",
            "a\\b",
            "a\"b",
            "a<b",
            "..",
            "k/../x.jpg",
            "../x",
            "x/..",
        ] {
            assert!(!supabase_accepts(bad), "{bad}");
        }
    }

    #[test]
    fn supabase_errors_are_read_from_the_body() {
        let dup = r#"{"statusCode":"409","error":"Duplicate","message":"The resource already exists","code":"KeyAlreadyExists"}"#;
        assert_eq!(
            reported(400, dup),
            (409, "The resource already exists".into())
        );
        let auth = r#"{"statusCode":"403","error":"Unauthorized","message":"signature verification failed","code":"AccessDenied"}"#;
        assert_eq!(reported(400, auth).0, 403);
        let route =
            r#"{"message":"Route GET:/nope not found","error":"Not Found","statusCode":404}"#;
        assert_eq!(reported(404, route).0, 404);
        assert_eq!(reported(502, "bad gateway"), (502, "bad gateway".into()));
        assert_eq!(reported(500, ""), (500, "HTTP 500".into()));
    }

    #[test]
    fn a_key_supabase_refuses_is_refused_here_without_a_request() {
        // Nothing listens on port 1: a request would fail as unreachable.
        let store = SupabaseStore::new(
            "http://127.0.0.1:1",
            Secret::new("k"),
            "images",
            Duration::from_secs(2),
        );
        match store.put_new("thumb~a.jpg", b"x") {
            Err(StorageError::ObjectRefused {
                status: 400,
                message,
            }) => {
                assert!(message.starts_with("Invalid key: thumb~a.jpg"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        // A key that cannot name an object is absent, also without a request.
        assert!(!store.exists("a~b.jpg").unwrap());
        assert_eq!(store.get("a~b.jpg").unwrap(), None);
        store.delete("a~b.jpg").unwrap();
        // A key Supabase takes does go out (and finds nobody here).
        assert!(matches!(
            store.put_new("a.jpg", b"x"),
            Err(StorageError::Unavailable(_))
        ));
    }
}
