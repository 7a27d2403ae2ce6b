//! Builds the configured backend from the settings.

use std::time::Duration;

use super::{
    ObjectStore, Put, StorageError,
    local::LocalStore,
    s3::{S3Config, S3Store},
    signing::UrlKey,
    supabase::SupabaseStore,
};
use crate::config::{StorageBackend, StorageSettings};

/// Builds the configured backend. `Settings::validate` refuses to start without
/// the settings a backend needs; a caller that skipped it gets a store that says what is missing
/// at every call, never a panic.
pub fn from_settings(s: &StorageSettings) -> Box<dyn ObjectStore> {
    match build(s) {
        Ok(store) => store,
        Err(why) => Box::new(Misconfigured(why)),
    }
}

fn build(s: &StorageSettings) -> Result<Box<dyn ObjectStore>, String> {
    fn needed<T>(value: Option<T>, name: &str) -> Result<T, String> {
        value.ok_or_else(|| format!("{name} is not set"))
    }
    let timeout = Duration::from_secs(s.timeout_secs.max(1));
    Ok(match s.backend() {
        StorageBackend::Local => {
            let store = LocalStore::new(&s.local_dir, &s.public_base_url);
            if s.private {
                let key = UrlKey::from_settings(s)
                    .map_err(|e| format!("the key for signing /media URLs: {e}"))?;
                Box::new(store.signing_with(std::sync::Arc::new(key)))
            } else {
                Box::new(store)
            }
        }
        StorageBackend::Supabase => Box::new(SupabaseStore::new(
            needed(s.supabase_url.as_deref(), "SUPABASE_URL")?,
            needed(s.supabase_key.clone(), "SUPABASE_KEY")?,
            &s.supabase_bucket,
            timeout,
        )),
        StorageBackend::S3 => {
            let region = s.s3_region.as_str();
            let aws = format!("https://s3.{region}.amazonaws.com");
            let config = S3Config {
                endpoint: s.s3_endpoint.as_deref().unwrap_or(&aws),
                path_style: s.s3_path_style,
                bucket: needed(
                    s.s3_bucket.as_deref(),
                    "storage.s3_bucket (APP_STORAGE__S3_BUCKET)",
                )?,
                region,
                access_key_id: needed(s.s3_access_key_id.as_deref(), "AWS_ACCESS_KEY_ID")?,
                secret_access_key: needed(
                    s.s3_secret_access_key.as_ref(),
                    "AWS_SECRET_ACCESS_KEY",
                )?,
                session_token: s.s3_session_token.as_ref(),
                public_url: s.s3_public_url.as_deref(),
                timeout,
            };
            // Only an endpoint the URL parser refuses fails here.
            Box::new(S3Store::new(&config)?)
        }
    })
}

/// A store whose settings could not be used: every call fails with why.
struct Misconfigured(String);

impl ObjectStore for Misconfigured {
    fn put_new(&self, _: &str, _: &[u8]) -> Result<Put, StorageError> {
        Err(self.error())
    }
    fn delete(&self, _: &str) -> Result<(), StorageError> {
        Err(self.error())
    }
    fn exists(&self, _: &str) -> Result<bool, StorageError> {
        Err(self.error())
    }
    fn public_url(&self, key: &str) -> String {
        key.to_string()
    }
    fn check(&self) -> Result<(), StorageError> {
        Err(self.error())
    }
}

impl Misconfigured {
    fn error(&self) -> StorageError {
        StorageError::Unusable(self.0.clone())
    }
}
