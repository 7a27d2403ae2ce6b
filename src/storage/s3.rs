//! The S3-compatible backend (`storage.backend = "s3"`): AWS S3, Cloudflare R2, MinIO,
//! SeaweedFS, Backblaze B2.
//!
//! - Requests are signed by `rusty-s3` (AWS Signature V4, as pre-signed URLs whose signed headers
//!   this client then sends) and sent with `ureq`, like the Supabase backend.
//! - Create-only: every write is `PUT` with `If-None-Match: *`, so an existing key is never
//!   overwritten (`412 Precondition Failed` is [`Put::AlreadyExists`]). Some servers ignore
//!   the condition and overwrite (Garage, older MinIO, s3rver). [`ObjectStore::check`] proves
//!   the server honours it, by writing a probe key twice, and uploads are refused until it has.
//! - Objects are written `Cache-Control: public, max-age=31536000, immutable`: a key never
//!   changes content.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};

use crate::{
    config::Secret,
    storage::{IMMUTABLE, MAX_OBJECT_BYTES, ObjectInfo, ObjectStore, Put, StorageError},
};

/// How long a signed URL stays valid: it is used at once.
const SIGNED_FOR: Duration = Duration::from_secs(300);

pub struct S3Store {
    bucket: Bucket,
    credentials: Credentials,
    /// Where objects are read publicly, ending in `/`.
    public_prefix: String,
    agent: ureq::Agent,
    timeout: Duration,
    /// The server was seen refusing a second create of one key.
    conditional_proven: AtomicBool,
}

/// What the settings give the backend.
pub struct S3Config<'a> {
    pub endpoint: &'a str,
    pub path_style: bool,
    pub bucket: &'a str,
    pub region: &'a str,
    pub access_key_id: &'a str,
    pub secret_access_key: &'a Secret,
    pub session_token: Option<&'a Secret>,
    pub public_url: Option<&'a str>,
    pub timeout: Duration,
}

impl S3Store {
    /// Fails only on an endpoint that is not an http(s) URL (checked with the settings).
    pub fn new(c: &S3Config<'_>) -> Result<S3Store, String> {
        let endpoint: url::Url = c
            .endpoint
            .parse()
            .map_err(|e| format!("storage.s3_endpoint is not a URL: {e}"))?;
        let style = if c.path_style {
            UrlStyle::Path
        } else {
            UrlStyle::VirtualHost
        };
        let bucket = Bucket::new(endpoint, style, c.bucket.to_string(), c.region.to_string())
            .map_err(|e| format!("storage.s3_endpoint and storage.s3_bucket: {e}"))?;
        let credentials = match c.session_token {
            Some(token) => Credentials::new_with_token(
                c.access_key_id,
                c.secret_access_key.expose(),
                token.expose(),
            ),
            None => Credentials::new(c.access_key_id, c.secret_access_key.expose()),
        };
        let public_prefix = match c.public_url {
            Some(u) => format!("{}/", u.trim_end_matches('/')),
            None => bucket.base_url().to_string(),
        };
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(c.timeout))
            .build()
            .into();
        Ok(S3Store {
            bucket,
            credentials,
            public_prefix,
            agent,
            timeout: c.timeout,
            conditional_proven: AtomicBool::new(false),
        })
    }

    /// `PUT` with `If-None-Match: *`, the object's type and its cache lifetime.
    fn put_if_absent(&self, key: &str, bytes: &[u8]) -> Result<Put, StorageError> {
        let mut action = self.bucket.put_object(Some(&self.credentials), key);
        let headers = [
            ("if-none-match", "*"),
            ("content-type", "image/jpeg"),
            ("cache-control", IMMUTABLE),
        ];
        for (name, value) in headers {
            action.headers_mut().insert(name, value);
        }
        let url = action.sign(SIGNED_FOR);
        let mut request = self.agent.put(url.as_str());
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let mut resp = request.send(bytes).map_err(transport)?;
        let status = resp.status().as_u16();
        match status {
            200..=299 => Ok(Put::Created),
            // 409: a concurrent conditional write of the same key is under way (AWS). Either
            // way the key is someone else's: never treat it as ours to delete.
            412 | 409 => Ok(Put::AlreadyExists),
            _ => Err(rejected(status, &body_text(&mut resp))),
        }
    }

    /// Proves the server refuses to overwrite: a probe key written twice must be refused the
    /// second time. The probe is deleted either way.
    fn prove_conditional_writes(&self) -> Result<(), StorageError> {
        let key = crate::storage::probe_key();
        let first = self.put_if_absent(&key, b"probe");
        let second = first
            .as_ref()
            .ok()
            .map(|_| self.put_if_absent(&key, b"probe, again"));
        let _ = self.delete(&key);
        match (first?, second.expect("ran after a first write")?) {
            (Put::Created, Put::AlreadyExists) => {
                self.conditional_proven.store(true, Ordering::Release);
                Ok(())
            }
            (Put::Created, Put::Created) => Err(StorageError::Unusable(
                "this S3 server ignores If-None-Match: * and overwrote an existing \
                          object: uploads are refused, since they could replace a photo. Use a \
                          server that honours conditional writes (AWS S3, Cloudflare R2, \
                          MinIO since 2024-11, SeaweedFS)"
                    .into(),
            )),
            (Put::AlreadyExists, _) => Err(StorageError::Rejected {
                status: 412,
                message: "the probe key already existed".into(),
            }),
        }
    }
}

fn transport(e: ureq::Error) -> StorageError {
    StorageError::Unavailable(e.to_string())
}

fn body_text(resp: &mut ureq::http::Response<ureq::Body>) -> String {
    resp.body_mut()
        .with_config()
        .limit(64 * 1024)
        .read_to_string()
        .unwrap_or_default()
}

/// An S3 error answer: its `<Code>` and `<Message>`, or the status alone.
fn rejected(status: u16, body: &str) -> StorageError {
    let tag = |name: &str| {
        let open = format!("<{name}>");
        let start = body.find(&open)? + open.len();
        let end = body[start..].find(&format!("</{name}>"))? + start;
        Some(body[start..end].trim().to_string())
    };
    let message = match (tag("Code"), tag("Message")) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code,
        (None, Some(message)) => message,
        (None, None) => format!("{}, with no S3 error in the answer", reason(status)),
    };
    StorageError::Rejected { status, message }
}

/// The status's standard reason phrase (`Bad Gateway`), or `HTTP <n>` for an unknown one.
fn reason(status: u16) -> String {
    ureq::http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .map_or_else(|| format!("HTTP {status}"), str::to_string)
}

impl ObjectStore for S3Store {
    fn put_new(&self, key: &str, bytes: &[u8]) -> Result<Put, StorageError> {
        if !self.conditional_proven.load(Ordering::Acquire) {
            self.prove_conditional_writes()?;
        }
        self.put_if_absent(key, bytes)
    }

    fn delete(&self, key: &str) -> Result<(), StorageError> {
        let url = self
            .bucket
            .delete_object(Some(&self.credentials), key)
            .sign(SIGNED_FOR);
        let mut resp = self.agent.delete(url.as_str()).call().map_err(transport)?;
        match resp.status().as_u16() {
            200..=299 | 404 => Ok(()),
            status => Err(rejected(status, &body_text(&mut resp))),
        }
    }

    fn exists(&self, key: &str) -> Result<bool, StorageError> {
        let url = self
            .bucket
            .head_object(Some(&self.credentials), key)
            .sign(SIGNED_FOR);
        let resp = self.agent.head(url.as_str()).call().map_err(transport)?;
        match resp.status().as_u16() {
            200..=299 => Ok(true),
            404 => Ok(false),
            // A HEAD answer has no body, so no reason: say what it usually means.
            status @ (401 | 403) => Err(StorageError::Rejected {
                status,
                message: format!(
                    "access denied (HTTP {status}): check storage.s3_access_key_id and \
                     storage.s3_secret_access_key (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) \
                     and the bucket's permissions"
                ),
            }),
            status => Err(StorageError::Rejected {
                status,
                message: format!(
                    "{} to a HEAD request, which carries no reason; a wrong storage.s3_region \
                     (AWS_REGION) or storage.s3_endpoint (AWS_ENDPOINT_URL) often gives one",
                    reason(status)
                ),
            }),
        }
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        let url = self
            .bucket
            .get_object(Some(&self.credentials), key)
            .sign(SIGNED_FOR);
        let mut resp = self.agent.get(url.as_str()).call().map_err(transport)?;
        match resp.status().as_u16() {
            200..=299 => resp
                .body_mut()
                .with_config()
                .limit(MAX_OBJECT_BYTES)
                .read_to_vec()
                .map(Some)
                .map_err(transport),
            404 => Ok(None),
            status => Err(rejected(status, &body_text(&mut resp))),
        }
    }

    fn public_url(&self, key: &str) -> String {
        format!("{}{}", self.public_prefix, crate::storage::encode_key(key))
    }

    /// Pre-signed GETs (SigV4 query signing, by rusty-s3), computed here: no request is made.
    fn signed_urls(&self, keys: &[&str], lifetime: Duration) -> Result<Vec<String>, StorageError> {
        Ok(keys
            .iter()
            .map(|k| {
                self.bucket
                    .get_object(Some(&self.credentials), k)
                    .sign(lifetime)
                    .to_string()
            })
            .collect())
    }

    fn settle_time(&self) -> Duration {
        self.timeout
    }

    /// The credentials and bucket (a one-key listing), then conditional writes (see the module).
    fn check(&self) -> Result<(), StorageError> {
        let mut list = self.bucket.list_objects_v2(Some(&self.credentials));
        list.with_max_keys(1);
        let url = list.sign(SIGNED_FOR);
        let mut resp = self
            .agent
            .get(url.as_str())
            .config()
            .timeout_global(Some(self.timeout.min(Duration::from_secs(5))))
            .build()
            .call()
            .map_err(transport)?;
        let status = resp.status().as_u16();
        if !(200..300).contains(&status) {
            return Err(rejected(status, &body_text(&mut resp)));
        }
        self.prove_conditional_writes()
    }

    fn describe(&self) -> String {
        format!(
            "S3 bucket `{}` at {} (region {})",
            self.bucket.name(),
            self.bucket.base_url(),
            self.bucket.region()
        )
    }

    /// `ListObjectsV2`, 1,000 keys a page. Keys with `/` or starting with `.` are not this
    /// server's (it writes neither) and are left out.
    fn list(&self, progress: &mut dyn FnMut(usize)) -> Result<Vec<ObjectInfo>, StorageError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut list = self.bucket.list_objects_v2(Some(&self.credentials));
            if let Some(t) = &token {
                list.with_continuation_token(t.clone());
            }
            let url = list.sign(SIGNED_FOR);
            let mut resp = self.agent.get(url.as_str()).call().map_err(transport)?;
            let status = resp.status().as_u16();
            let body = body_text_unbounded(&mut resp)?;
            if !(200..300).contains(&status) {
                return Err(rejected(status, &body));
            }
            let page = ListPage::parse(&body)?;
            for item in page.contents {
                if item.key.contains('/') || item.key.starts_with('.') {
                    continue;
                }
                let modified = item.last_modified.as_deref().and_then(humantime_rfc3339);
                out.push(ObjectInfo {
                    key: item.key,
                    modified,
                });
            }
            progress(out.len());
            match page.next_continuation_token {
                Some(t) => token = Some(t),
                None => return Ok(out),
            }
        }
    }
}

/// One page of a `ListObjectsV2` answer, as far as a listing here needs it: keys and times.
/// Every other element is ignored and may be missing (s3s-fs sends no `ETag`, some servers no
/// `Size` or `StorageClass`), so a listing any S3 server sends can be read.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListPage {
    #[serde(default)]
    contents: Vec<ListItem>,
    next_continuation_token: Option<String>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListItem {
    key: String,
    last_modified: Option<String>,
}

impl ListPage {
    fn parse(body: &str) -> Result<ListPage, StorageError> {
        quick_xml::de::from_str(body)
            .map_err(|e| StorageError::Unreadable(format!("a ListObjectsV2 page: {e}")))
    }
}

fn body_text_unbounded(
    resp: &mut ureq::http::Response<ureq::Body>,
) -> Result<String, StorageError> {
    resp.body_mut()
        .with_config()
        .limit(64 * 1024 * 1024)
        .read_to_string()
        .map_err(transport)
}

/// `2026-01-01T12:00:00.000Z` as a time, or None.
fn humantime_rfc3339(s: &str) -> Option<std::time::SystemTime> {
    let t: jiff::Timestamp = s.parse().ok()?;
    Some(std::time::SystemTime::from(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(e: StorageError) -> (u16, String) {
        match e {
            StorageError::Rejected { status, message } => (status, message),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn listings_are_read_with_or_without_the_fields_a_server_leaves_out() {
        // AWS and SeaweedFS: every field; a continuation token.
        let aws = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>photos</Name>
<KeyCount>2</KeyCount><MaxKeys>2</MaxKeys><IsTruncated>true</IsTruncated>
<Contents><Key>a.jpg</Key><LastModified>2026-01-01T12:00:00.000Z</LastModified>
<ETag>&quot;abc&quot;</ETag><Size>10</Size><StorageClass>STANDARD</StorageClass></Contents>
<Contents><Key>thumb--a.jpg</Key><LastModified>2026-01-02T00:00:00Z</LastModified>
<ETag>"d"</ETag><Size>3</Size></Contents>
<NextContinuationToken>next-1</NextContinuationToken></ListBucketResult>"#;
        let page = ListPage::parse(aws).unwrap();
        let keys: Vec<&str> = page.contents.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(keys, ["a.jpg", "thumb--a.jpg"]);
        assert_eq!(page.next_continuation_token.as_deref(), Some("next-1"));
        assert_eq!(
            page.contents[0]
                .last_modified
                .as_deref()
                .and_then(humantime_rfc3339),
            Some(std::time::UNIX_EPOCH + Duration::from_secs(1_767_268_800))
        );
        // s3s-fs: no ETag; no LastModified tolerated too; the last page has no token.
        let s3s = r#"<ListBucketResult><Contents><Key>b.jpg</Key><Size>1</Size></Contents>
<Contents><Key>c.jpg</Key><LastModified>2026-01-01T00:00:00Z</LastModified></Contents>
<IsTruncated>false</IsTruncated></ListBucketResult>"#;
        let page = ListPage::parse(s3s).unwrap();
        assert_eq!(page.contents.len(), 2);
        assert_eq!(page.contents[0].last_modified, None);
        assert_eq!(page.next_continuation_token, None);
        // An empty bucket has no Contents at all.
        let empty = "<ListBucketResult><KeyCount>0</KeyCount></ListBucketResult>";
        assert!(ListPage::parse(empty).unwrap().contents.is_empty());
        // A body that is no listing is unreadable, not a refusal.
        for body in [
            "",
            "<html>oops</html",
            "<ListBucketResult><Contents><Size>1</Size>",
        ] {
            assert!(
                matches!(ListPage::parse(body), Err(StorageError::Unreadable(_))),
                "{body:?}"
            );
        }
    }

    #[test]
    fn an_error_answer_gives_its_code_and_message_and_keeps_its_status() {
        let body = "<?xml version=\"1.0\"?>\n<Error><Code>SignatureDoesNotMatch</Code>\
                    <Message> The signature does not match. </Message><Key>a.jpg</Key></Error>";
        assert_eq!(
            message(rejected(403, body)),
            (
                403,
                "SignatureDoesNotMatch: The signature does not match.".into()
            )
        );
        assert_eq!(
            message(rejected(401, "<Error><Code>AccessDenied</Code></Error>")),
            (401, "AccessDenied".into())
        );
        assert_eq!(
            message(rejected(500, "<Message>slow down</Message>")),
            (500, "slow down".into())
        );
    }

    #[test]
    fn an_answer_without_both_tags_gives_the_status() {
        for body in [
            "",
            "<html>502 Bad Gateway</html>",
            "<Code>cut off",
            "</Code><Code>",
        ] {
            assert_eq!(
                message(rejected(502, body)),
                (502, "Bad Gateway, with no S3 error in the answer".into()),
                "{body:?}"
            );
        }
        assert_eq!(
            message(rejected(599, "")).1,
            "HTTP 599, with no S3 error in the answer"
        );
        // A closing tag before the opening one is not a value.
        assert_eq!(
            message(rejected(400, "</Code>x<Code>InvalidKey</Code>")).1,
            "InvalidKey"
        );
        // Not ASCII: found and cut on character boundaries.
        assert_eq!(
            message(rejected(400, "<Code>Ungültig</Code><Message>é</Message>")).1,
            "Ungültig: é"
        );
    }
}
