//! Configuration: built-in defaults, then `Config.toml`, then a `.env` file, then the process
//! environment, each layer overriding the one before (figment).
//!
//! Two families of environment variables are read, from the process and from `.env` alike:
//! - the original Python server's names (`DATABASE_URL`, `ADMIN_API_KEY`, `SUPABASE_URL`,
//!   `SUPABASE_KEY`, `SUPABASE_BUCKET`, `CORS_ORIGINS`, `PORT`), so an existing deployment keeps
//!   working unchanged;
//! - `APP_SECTION__KEY` for every key, e.g. `APP_CACHE__TTL_SECS=30` sets `cache.ttl_secs`.
//!
//! Every value from `.env` and the environment arrives as the exact string given (`ADMIN_API_KEY=007`
//! is the key `007`, never the number 7): [`Verbatim`] hands figment strings, and
//! `extract_lossy` turns a string into a number or a boolean only where the key's type is one.
//!
//! `Config.toml` at the repository root lists every key with its default and env override; keep it
//! in step with the structs below (a unit test checks that it parses to the defaults).

use std::{
    fmt,
    path::{Path, PathBuf},
};

use figment::{
    Figment, Metadata, Profile, Provider,
    providers::{Env, Format, Serialized, Toml},
    util::nest,
    value::{Dict, Map, Uncased, UncasedStr, Value},
};
use serde::{Deserialize, Deserializer, Serialize};

/// Everything the server reads at start-up.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Settings {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub cache: CacheSettings,
    pub auth: AuthSettings,
    pub storage: StorageSettings,
    pub upload: UploadSettings,
    pub image: ImageSettings,
    pub log: LogSettings,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServerSettings {
    /// Address to listen on.
    pub host: String,
    /// Port to listen on; 0 picks a free one (tests).
    pub port: u16,
    /// Origins whose pages may call the admin routes (uploads, edits) from a browser. Public
    /// reads answer every origin with `Access-Control-Allow-Origin: *` whatever this says.
    /// `["*"]`: every route, every origin (never with credentials).
    #[serde(deserialize_with = "list_or_comma_separated")]
    pub cors_origins: Vec<String>,
    /// How long in-flight requests may run on after SIGINT/SIGTERM (after the drain delay).
    pub shutdown_grace_secs: u64,
    /// After SIGINT/SIGTERM, how long the server goes on accepting and serving requests while
    /// `/readyz` already answers 503, so that load balancers take it out first (Kubernetes
    /// updates its endpoints in a few seconds). 0: stop accepting at once.
    pub drain_delay_secs: u64,
    /// Most connections open at once; 0: as many as the open-files limit allows (less a
    /// reserve). At the limit the longest-idle connection is closed to make room.
    pub max_connections: usize,
    /// How long a connection may take to send a request's headers before it is closed.
    pub header_read_timeout_secs: u64,
    /// How long a connection may stay open with no request in flight (before its first
    /// request, or between two) before it is closed.
    pub keep_alive_timeout_secs: u64,
    /// How long a response may go without the client taking any of it before the connection is
    /// closed. A transfer that moves, however slowly, is never cut.
    pub send_stall_timeout_secs: u64,
    /// Serve `GET /metrics` (Prometheus text format).
    pub metrics: bool,
    /// Serve the owner's page at `/admin` (only while an admin key is set).
    pub admin_page: bool,
    /// Proxies (addresses or networks, `10.0.0.0/8`) whose `X-Forwarded-For` names the client
    /// that the wrong-key throttle counts. Empty: every request counts against its peer.
    #[serde(deserialize_with = "networks")]
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DatabaseSettings {
    /// PostgreSQL URL. None: serve the embedded photographs only.
    pub url: Option<Secret>,
    /// Most connections the pool opens: also how many database calls run at once. With the
    /// database 20 ms away a page takes one 40 ms round trip, so throughput follows this.
    pub pool_max_size: u32,
    /// How long a request waits for a pooled connection before the database counts as down.
    pub checkout_timeout_ms: u64,
    /// How long a request queues for a free connection while all are busy before it is answered
    /// 503 (or from the page's stale copy). Bounds the work left behind by clients that gave up.
    pub queue_timeout_ms: u64,
    /// TCP connect timeout for a new connection.
    pub connect_timeout_ms: u64,
    /// While the database is down, how often the background probe retries it.
    pub reprobe_interval_ms: u64,
    /// Apply pending migrations at start-up (and when the database comes back).
    pub migrate_on_start: bool,
    /// Listen for changes to `photographs` (PostgreSQL `LISTEN`), so that every replica drops
    /// its cached pages within a second of any write. False: pages refresh within
    /// `cache.ttl_secs`.
    pub listen: bool,
    /// Where the listening connection goes when `url` is a transaction-mode pooler (which
    /// delivers no notifications): a direct or session-mode URL. None: `url`.
    pub listen_url: Option<Secret>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CacheSettings {
    /// Byte budget for cached listing pages (pre-serialised JSON). 0 disables the cache.
    pub max_bytes: u64,
    /// How long a cached page is served before it is reloaded.
    pub ttl_secs: u64,
    /// Byte budget for the last good copy of each page, served while the database is down.
    pub stale_max_bytes: u64,
    /// `Cache-Control: public, max-age=N` on listing responses.
    pub http_max_age_secs: u64,
    /// Rows of the table copy kept for outages (every row, while the table has at most this
    /// many). 0: no copy.
    pub copy_max_rows: usize,
    /// Where the table copy is saved, so that it survives a restart during an outage.
    pub copy_path: PathBuf,
    /// How often the table copy is taken again (it is also taken within a second of a write).
    pub copy_refresh_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuthSettings {
    /// The `X-API-Key` that admin uploads must present. None: uploads are refused.
    pub admin_api_key: Option<Secret>,
    /// Wrong keys one client address may send in a row before its admin requests are answered
    /// 429 with `Retry-After`. 0: no throttle.
    pub wrong_key_burst: u32,
    /// After the burst, wrong keys an address may send a minute.
    pub wrong_keys_per_minute: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StorageSettings {
    /// Where uploaded photos go: `local` (a folder), `supabase` or `s3`. Unset: `supabase` when
    /// `supabase_url` and `supabase_key` are both set, else `local` (see [`Self::backend`]).
    pub backend: Option<StorageBackend>,
    /// Folder for the `local` backend.
    pub local_dir: PathBuf,
    /// Public base URL under which the `local` backend's objects are reachable.
    pub public_base_url: String,
    /// Supabase project URL, e.g. `https://xyz.supabase.co`.
    pub supabase_url: Option<String>,
    /// Supabase service-role key.
    pub supabase_key: Option<Secret>,
    /// Supabase Storage bucket.
    pub supabase_bucket: String,
    /// Most seconds one request to Supabase or S3 may take.
    pub timeout_secs: u64,
    /// S3 bucket (backend `s3`).
    pub s3_bucket: Option<String>,
    /// S3 region (`AWS_REGION`); R2 takes `auto`.
    pub s3_region: String,
    /// S3 endpoint (`AWS_ENDPOINT_URL`). None: AWS, `https://s3.{region}.amazonaws.com`.
    pub s3_endpoint: Option<String>,
    /// Path-style URLs (`endpoint/bucket/key`), as MinIO and SeaweedFS need; false:
    /// virtual-host style (`bucket.endpoint/key`), as AWS prefers.
    pub s3_path_style: bool,
    /// `AWS_ACCESS_KEY_ID`.
    pub s3_access_key_id: Option<String>,
    /// `AWS_SECRET_ACCESS_KEY`.
    pub s3_secret_access_key: Option<Secret>,
    /// `AWS_SESSION_TOKEN`, for temporary credentials.
    pub s3_session_token: Option<Secret>,
    /// Where photos are read publicly (a CDN, R2's public bucket URL); the key is appended.
    /// None: the bucket's own URL, which must then allow public reads.
    pub s3_public_url: Option<String>,
    /// Private mode: every URL handed out (listings, records) is signed and expires; nothing is
    /// readable without one.
    pub private: bool,
    /// How long a signed URL works, in seconds.
    pub signed_url_secs: u64,
    /// The local backend's key for signing `/media` URLs. None: read from (or made once in)
    /// `signing_key_path`.
    pub signing_key: Option<Secret>,
    /// Where the local backend's signing key is kept when `signing_key` is unset.
    pub signing_key_path: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UploadSettings {
    /// Largest accepted photo, in bytes (413 above it).
    pub max_file_bytes: u64,
    /// Largest accepted request body, in bytes, with or without Content-Length (413 above it).
    pub max_request_bytes: u64,
    /// Most files in one `/api/upload-batch` request; the rest are reported as failed.
    pub max_batch_files: usize,
    /// Largest accepted width or height, in pixels.
    pub max_side_px: u32,
    /// Allowed categories (compared case-insensitively). Empty: any 1 to 50 characters.
    #[serde(deserialize_with = "list_or_comma_separated")]
    pub allowed_categories: Vec<String>,
    /// Uploads written at the same time; each holds a database connection while it stores.
    pub max_concurrent: usize,
    /// Where files of a batch wait (on disk, not in memory) until the batch's category arrives.
    /// Emptied of this server's files at start-up; give each process on a machine its own.
    pub spool_dir: PathBuf,
    /// The clean-up journal: keys that may be in storage without a row, kept on local disk
    /// until settled. Give each process its own; never delete it while entries remain.
    pub journal_dir: PathBuf,
}

/// What an upload is turned into before it is stored (`crate::imaging`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ImageSettings {
    /// Longest side of the stored photo, in pixels; larger uploads are downscaled. 0 keeps every
    /// photo at its uploaded size.
    pub max_dimension: u32,
    /// JPEG quality (1-100) of every image this server encodes.
    pub jpeg_quality: u8,
    /// Keep EXIF, XMP and IPTC (camera, copyright, GPS) in the stored photo. Off by default:
    /// they are removed from the photo and never written to a variant.
    pub keep_metadata: bool,
    /// Longest side of the `thumb` variant (`thumbnail_url`); 0: no thumbnails.
    pub thumb_px: u32,
    /// Longest side of the `medium` variant (`medium_url`); 0: no medium variant.
    pub medium_px: u32,
    /// Answer an upload once the photo and its row are stored, and make its variants and
    /// placeholder afterwards, in the background (until then they are null): a photo stored as
    /// sent is then not decoded before its answer. A photo that must be made smaller or turned
    /// upright is decoded anyway and gets them before the answer. Off: every answer carries
    /// them.
    pub variants_after_answer: bool,
    /// Photos processed at the same time; 0: one per CPU core.
    pub max_concurrent: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LogSettings {
    /// `text` (one line per event; colours only on a terminal) or `json` (one object per line).
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    Local,
    Supabase,
    S3,
}

impl fmt::Display for StorageBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StorageBackend::Local => "local",
            StorageBackend::Supabase => "supabase",
            StorageBackend::S3 => "s3",
        })
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl StorageSettings {
    /// The backend in effect: the explicit `backend` if set; otherwise `supabase` when the
    /// original's `SUPABASE_URL` and `SUPABASE_KEY` are both set (as the original stored every
    /// photo in Supabase), else `local`. [`Settings::validate`] refuses exactly one of the two.
    pub fn backend(&self) -> StorageBackend {
        match self.backend {
            Some(b) => b,
            None if self.supabase_url.is_some() && self.supabase_key.is_some() => {
                StorageBackend::Supabase
            }
            None => StorageBackend::Local,
        }
    }
}

impl ServerSettings {
    /// `CORS_ORIGINS=*`: every origin may call every route.
    pub fn cors_any_origin(&self) -> bool {
        self.cors_origins.iter().any(|o| o == "*")
    }
}

impl Default for CacheSettings {
    fn default() -> Self {
        Settings::default().cache
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            server: ServerSettings {
                host: "0.0.0.0".into(),
                port: 8000,
                cors_origins: Vec::new(),
                shutdown_grace_secs: 10,
                drain_delay_secs: 0,
                max_connections: 0,
                header_read_timeout_secs: 10,
                keep_alive_timeout_secs: 5,
                send_stall_timeout_secs: 60,
                metrics: true,
                admin_page: true,
                trusted_proxies: Vec::new(),
            },
            database: DatabaseSettings {
                url: None,
                pool_max_size: 16,
                checkout_timeout_ms: 1500,
                queue_timeout_ms: 5000,
                connect_timeout_ms: 2000,
                reprobe_interval_ms: 1000,
                migrate_on_start: true,
                listen: true,
                listen_url: None,
            },
            cache: CacheSettings {
                max_bytes: 32 << 20,
                ttl_secs: 60,
                stale_max_bytes: 8 << 20,
                http_max_age_secs: 10,
                copy_max_rows: 100_000,
                copy_path: PathBuf::from("data/photographs-copy.json"),
                copy_refresh_secs: 60,
            },
            auth: AuthSettings {
                admin_api_key: None,
                wrong_key_burst: 10,
                wrong_keys_per_minute: 5,
            },
            storage: StorageSettings {
                backend: None,
                local_dir: PathBuf::from("data/media"),
                public_base_url: "http://localhost:8000/media".into(),
                supabase_url: None,
                supabase_key: None,
                supabase_bucket: "images".into(),
                s3_bucket: None,
                s3_region: "us-east-1".into(),
                s3_endpoint: None,
                s3_path_style: false,
                s3_access_key_id: None,
                s3_secret_access_key: None,
                s3_session_token: None,
                s3_public_url: None,
                timeout_secs: 60,
                private: false,
                signed_url_secs: 3600,
                signing_key: None,
                signing_key_path: PathBuf::from("data/signing-key"),
            },
            upload: UploadSettings {
                max_file_bytes: 25 << 20,
                max_request_bytes: 512 << 20,
                max_batch_files: 500,
                max_side_px: 16_384,
                allowed_categories: Vec::new(),
                max_concurrent: 2,
                spool_dir: PathBuf::from("data/spool"),
                journal_dir: PathBuf::from("data/journal"),
            },
            image: ImageSettings {
                max_dimension: 2560,
                jpeg_quality: 85,
                keep_metadata: false,
                thumb_px: 400,
                medium_px: 1200,
                variants_after_answer: true,
                max_concurrent: 0,
            },
            log: LogSettings {
                format: LogFormat::Text,
            },
        }
    }
}

/// A configuration error, worded for the person starting the server.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value could not be read; figment's message names the key and where it came from.
    #[error("invalid configuration: {0}")]
    Figment(Box<figment::Error>),
    /// A value parsed but makes no sense.
    #[error("invalid configuration: {key} {problem}")]
    Invalid { key: &'static str, problem: String },
    #[error("cannot read {path}: {source}")]
    DotEnv {
        path: PathBuf,
        source: dotenvy::Error,
    },
}

impl From<figment::Error> for ConfigError {
    fn from(e: figment::Error) -> Self {
        ConfigError::Figment(Box::new(e))
    }
}

impl Settings {
    /// Loads settings from `Config.toml` and `.env` in the working directory and the process
    /// environment.
    pub fn load() -> Result<Settings, ConfigError> {
        Self::from_figment(Self::figment(Path::new("."))?)
    }

    /// The layered sources, in increasing precedence, with files looked up in `dir`.
    pub fn figment(dir: &Path) -> Result<Figment, ConfigError> {
        let mut figment = Figment::new().merge(Serialized::defaults(Settings::default()));
        // Exactly this file, never one found in a parent directory; and none is fine.
        let toml = dir.join("Config.toml");
        if toml.exists() {
            figment = figment.merge(Toml::file_exact(toml));
        }
        let dotenv_path = dir.join(".env");
        if dotenv_path.exists() {
            figment = figment.merge(Verbatim::dotenv(&dotenv_path)?);
        }
        Ok(figment.merge(Verbatim::environment()))
    }

    /// Extracts and checks settings from a figment.
    pub fn from_figment(figment: Figment) -> Result<Settings, ConfigError> {
        // Lossy: a string becomes a number or a boolean where (and only where) the key's type
        // is one. Every string setting keeps exactly the characters it was given.
        let mut s: Settings = figment.extract_lossy()?;
        s.normalise();
        s.validate()?;
        Ok(s)
    }

    /// Treats empty strings (`DATABASE_URL=` in a `.env`) as "not set".
    fn normalise(&mut self) {
        fn blank(v: &Option<Secret>) -> bool {
            v.as_ref().is_some_and(|s| s.expose().trim().is_empty())
        }
        if blank(&self.database.url) {
            self.database.url = None;
        }
        if blank(&self.database.listen_url) {
            self.database.listen_url = None;
        }
        if blank(&self.auth.admin_api_key) {
            self.auth.admin_api_key = None;
        }
        if blank(&self.storage.supabase_key) {
            self.storage.supabase_key = None;
        }
        if blank(&self.storage.s3_secret_access_key) {
            self.storage.s3_secret_access_key = None;
        }
        if blank(&self.storage.s3_session_token) {
            self.storage.s3_session_token = None;
        }
        for v in [
            &mut self.storage.s3_bucket,
            &mut self.storage.s3_endpoint,
            &mut self.storage.s3_access_key_id,
            &mut self.storage.s3_public_url,
        ] {
            if v.as_deref().is_some_and(|s| s.trim().is_empty()) {
                *v = None;
            }
        }
        if self
            .storage
            .supabase_url
            .as_deref()
            .is_some_and(|u| u.trim().is_empty())
        {
            self.storage.supabase_url = None;
        }
        self.server.cors_origins.retain(|o| !o.trim().is_empty());
        self.upload
            .allowed_categories
            .retain(|c| !c.trim().is_empty());
        for o in &mut self.server.cors_origins {
            *o = o.trim().trim_end_matches('/').to_string();
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, problem: &str| {
            Err(ConfigError::Invalid {
                key,
                problem: problem.to_string(),
            })
        };
        if !(1..=100).contains(&self.image.jpeg_quality) {
            return invalid("image.jpeg_quality", "must be 1 to 100");
        }
        if self.auth.wrong_key_burst > 10_000 {
            return invalid(
                "auth.wrong_key_burst",
                "must be at most 10000 (0: no throttle)",
            );
        }
        if self.auth.wrong_key_burst > 0 && self.auth.wrong_keys_per_minute == 0 {
            return invalid(
                "auth.wrong_keys_per_minute",
                "must be at least 1 (to turn the throttle off, set auth.wrong_key_burst to 0)",
            );
        }
        if self.server.header_read_timeout_secs == 0 {
            return invalid("server.header_read_timeout_secs", "must be at least 1");
        }
        if self.server.keep_alive_timeout_secs == 0 {
            return invalid("server.keep_alive_timeout_secs", "must be at least 1");
        }
        if self.server.send_stall_timeout_secs == 0 {
            return invalid("server.send_stall_timeout_secs", "must be at least 1");
        }
        if self.database.pool_max_size == 0 {
            return invalid("database.pool_max_size", "must be at least 1");
        }
        if self.database.checkout_timeout_ms == 0 {
            return invalid("database.checkout_timeout_ms", "must be at least 1");
        }
        if self.database.queue_timeout_ms == 0 {
            return invalid("database.queue_timeout_ms", "must be at least 1");
        }
        if self.database.reprobe_interval_ms == 0 {
            return invalid("database.reprobe_interval_ms", "must be at least 1");
        }
        if let Some(url) = &self.database.url
            && let Err(e) = url.expose().parse::<postgres::Config>()
        {
            // The parser's message never echoes the URL, so no password leaks here.
            return invalid(
                "database.url (DATABASE_URL)",
                &format!("is not a PostgreSQL URL: {e}"),
            );
        }
        if let Some(url) = &self.database.listen_url
            && let Err(e) = url.expose().parse::<postgres::Config>()
        {
            return invalid(
                "database.listen_url (APP_DATABASE__LISTEN_URL)",
                &format!("is not a PostgreSQL URL: {e}"),
            );
        }
        if self.server.cors_any_origin() && self.server.cors_origins.len() > 1 {
            return invalid(
                "server.cors_origins (CORS_ORIGINS)",
                "is either `*` (every origin) or a list of origins, not both",
            );
        }
        if let Some(bad) = self
            .server
            .cors_origins
            .iter()
            .find(|o| *o != "*" && !(o.starts_with("http://") || o.starts_with("https://")))
        {
            return invalid(
                "server.cors_origins (CORS_ORIGINS)",
                &format!(
                    "holds `{bad}`, which is not an origin (an origin looks like \
                     `https://photos.example` or `http://localhost:5173`)"
                ),
            );
        }
        if self.upload.max_file_bytes == 0 || self.upload.max_request_bytes == 0 {
            return invalid(
                "upload.max_file_bytes",
                "and upload.max_request_bytes must be above 0",
            );
        }
        let (url, key) = (&self.storage.supabase_url, &self.storage.supabase_key);
        match (self.storage.backend, url.is_some(), key.is_some()) {
            (Some(StorageBackend::Supabase), true, true)
            | (Some(StorageBackend::Local | StorageBackend::S3), ..) => {}
            (Some(StorageBackend::Supabase), ..) => {
                return invalid(
                    "storage.backend",
                    "is `supabase` but SUPABASE_URL and SUPABASE_KEY are not both set",
                );
            }
            // Chosen from the original's variables: both or neither.
            (None, true, true) | (None, false, false) => {}
            (None, true, false) => {
                return invalid(
                    "storage.supabase_key (SUPABASE_KEY)",
                    "is missing: SUPABASE_URL is set, so photos would go to Supabase, which needs \
                     its service-role key too (or set APP_STORAGE__BACKEND=local)",
                );
            }
            (None, false, true) => {
                return invalid(
                    "storage.supabase_url (SUPABASE_URL)",
                    "is missing: SUPABASE_KEY is set, so photos would go to Supabase, which needs \
                     the project URL too (or set APP_STORAGE__BACKEND=local)",
                );
            }
        }
        if let Some(u) = url
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            return invalid(
                "storage.supabase_url (SUPABASE_URL)",
                "must start with https:// (e.g. https://xyzcompany.supabase.co)",
            );
        }
        if self.storage.backend() == StorageBackend::S3 {
            let st = &self.storage;
            if st.s3_bucket.is_none() {
                return invalid(
                    "storage.s3_bucket",
                    "is required with storage.backend = \"s3\"",
                );
            }
            if st.s3_access_key_id.is_none() || st.s3_secret_access_key.is_none() {
                return invalid(
                    "storage.s3_access_key_id (AWS_ACCESS_KEY_ID)",
                    "and storage.s3_secret_access_key (AWS_SECRET_ACCESS_KEY) are both required \
                     with storage.backend = \"s3\"",
                );
            }
            for (key, value) in [
                ("storage.s3_endpoint (AWS_ENDPOINT_URL)", &st.s3_endpoint),
                ("storage.s3_public_url", &st.s3_public_url),
            ] {
                if let Some(u) = value
                    && !(u.starts_with("http://") || u.starts_with("https://"))
                {
                    return invalid(key, "must start with https:// or http://");
                }
            }
            if let Some(endpoint) = &st.s3_endpoint
                && !st.s3_path_style
                && endpoint_is_an_address(endpoint)
            {
                return invalid(
                    "storage.s3_path_style (APP_STORAGE__S3_PATH_STYLE)",
                    "must be true with an endpoint that is an IP address or localhost (storage.\
                     s3_endpoint): bucket names go in the path there, since `bucket.127.0.0.1` \
                     is no host. Set APP_STORAGE__S3_PATH_STYLE=true",
                );
            }
        }
        Ok(())
    }
}

/// Whether an endpoint URL's host is an IP address or `localhost`, where a bucket cannot be a
/// subdomain.
fn endpoint_is_an_address(endpoint: &str) -> bool {
    match url::Url::parse(endpoint)
        .ok()
        .and_then(|u| u.host().map(|h| h.to_owned()))
    {
        Some(url::Host::Ipv4(_) | url::Host::Ipv6(_)) => true,
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// A secret string: usable, never printed.
#[derive(Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl<'de> Deserialize<'de> for Secret {
    /// Environment and `.env` values always arrive as strings (see [`Verbatim`]). A TOML value
    /// written without quotes (`admin_api_key = 12345`) is taken as its text.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Scalar {
            S(String),
            U(u64),
            I(i64),
            F(f64),
            B(bool),
        }
        Ok(Secret(match Scalar::deserialize(d)? {
            Scalar::S(s) => s,
            Scalar::U(v) => v.to_string(),
            Scalar::I(v) => v.to_string(),
            Scalar::F(v) => v.to_string(),
            Scalar::B(v) => v.to_string(),
        }))
    }
}

/// `CORS_ORIGINS="https://a.example,https://b.example"` or a TOML list.
fn list_or_comma_separated<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        List(Vec<String>),
        One(String),
    }
    Ok(match Either::deserialize(d)? {
        Either::List(v) => v,
        Either::One(s) => s.split(',').map(|p| p.trim().to_string()).collect(),
    })
}

/// A list of addresses or networks, as [`list_or_comma_separated`]: `10.0.0.0/8, 192.0.2.1`.
fn networks<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ipnet::IpNet>, D::Error> {
    list_or_comma_separated(d)?
        .iter()
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<ipnet::IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    serde::de::Error::custom(format!(
                        "`{s}` is not an IP address or a network like `10.0.0.0/8`"
                    ))
                })
        })
        .collect()
}

/// Every setting this server reads that names no key of it, one line each for the log: a
/// misspelt key in `Config.toml`, or an `APP_*` variable in `.env` or the environment, which
/// figment would otherwise ignore without a word (`APP_STORAGE__PRIVAT=true` leaves a bucket
/// public). Each line names where the setting was found and the nearest real key, if one is
/// close.
pub fn unknown_settings(dir: &Path) -> Vec<String> {
    let known = known_keys();
    let mut found = Vec::new();
    let toml = dir.join("Config.toml");
    if let Ok(data) = Toml::file_exact(&toml).data()
        && let Some(dict) = data.get(&Profile::Default)
    {
        for path in leaf_paths("", dict) {
            if !known.contains(&path) {
                found.push(format!(
                    "{}: `{path}` is not a setting and is ignored{}",
                    toml.display(),
                    nearest(&path, &known, |k| format!("`{k}`")),
                ));
            }
        }
    }
    let dotenv = dir.join(".env");
    let sources = [
        (
            format!("{}", dotenv.display()),
            Verbatim::dotenv(&dotenv).ok(),
        ),
        ("the environment".to_string(), Some(Verbatim::environment())),
    ];
    for (source, pairs) in sources {
        for (path, _) in pairs.map(|v| v.pairs).unwrap_or_default() {
            let path = path.to_ascii_lowercase();
            if !known.contains(&path) {
                found.push(format!(
                    "{} (in {source}) is not a setting and is ignored{}",
                    variable_of(&path),
                    nearest(&path, &known, variable_of),
                ));
            }
        }
    }
    found
}

/// `section.key` for every setting, from the defaults.
fn known_keys() -> Vec<String> {
    let defaults = serde_json::to_value(Settings::default()).expect("settings serialise");
    let mut keys = Vec::new();
    for (section, fields) in defaults.as_object().into_iter().flatten() {
        for key in fields.as_object().into_iter().flat_map(|f| f.keys()) {
            keys.push(format!("{section}.{key}"));
        }
    }
    keys
}

/// The dotted path of every value in a TOML document that is not a table.
fn leaf_paths(prefix: &str, dict: &Dict) -> Vec<String> {
    let mut paths = Vec::new();
    for (key, value) in dict {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            Value::Dict(_, inner) => paths.extend(leaf_paths(&path, inner)),
            _ => paths.push(path),
        }
    }
    paths
}

/// The `APP_*` variable that sets `path`.
fn variable_of(path: &str) -> String {
    format!("APP_{}", path.replace('.', "__").to_ascii_uppercase())
}

/// `; did you mean …?` for the known key closest to `path`, if it is at most two edits away
/// (a letter missing, added, changed, or two swapped).
fn nearest(path: &str, known: &[String], show: impl Fn(&str) -> String) -> String {
    known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(path, k), k))
        .filter(|(edits, _)| *edits <= 2)
        .min_by_key(|(edits, _)| *edits)
        .map(|(_, k)| format!("; did you mean {}?", show(k)))
        .unwrap_or_default()
}

/// Maps an environment variable name to a settings key path, or None if it is not ours.
fn key_for_var(name: &UncasedStr) -> Option<Uncased<'static>> {
    if let Some((_, key)) = LEGACY.iter().find(|(n, _)| *n == name.as_str()) {
        return Some((*key).into());
    }
    // Case-sensitive: `app_x` is not ours, as figment's `Env::prefixed` would also refuse.
    let rest = name.as_str().strip_prefix("APP_")?;
    Some(rest.replace("__", ".").into())
}

/// The variable an error names for a key path: `cache.ttl_secs` was set as
/// `APP_CACHE__TTL_SECS`, `database.url` as `DATABASE_URL` (or `APP_DATABASE__URL`).
fn name_variable(_: &Profile, keys: &[&str]) -> String {
    let path = keys.join(".");
    let legacy = LEGACY
        .iter()
        .find(|(_, k)| *k == path)
        .map(|(name, _)| format!("{name} (or "))
        .unwrap_or_default();
    let close = if legacy.is_empty() { "" } else { ")" };
    format!(
        "{legacy}APP_{}{close}",
        keys.join("__").to_ascii_uppercase()
    )
}

/// The original server's variable names, and AWS's conventional ones, and the keys they set.
const LEGACY: &[(&str, &str)] = &[
    ("AWS_ACCESS_KEY_ID", "storage.s3_access_key_id"),
    ("AWS_SECRET_ACCESS_KEY", "storage.s3_secret_access_key"),
    ("AWS_SESSION_TOKEN", "storage.s3_session_token"),
    ("AWS_REGION", "storage.s3_region"),
    ("AWS_ENDPOINT_URL", "storage.s3_endpoint"),
    ("DATABASE_URL", "database.url"),
    ("ADMIN_API_KEY", "auth.admin_api_key"),
    ("SUPABASE_URL", "storage.supabase_url"),
    ("SUPABASE_KEY", "storage.supabase_key"),
    ("SUPABASE_BUCKET", "storage.supabase_bucket"),
    ("CORS_ORIGINS", "server.cors_origins"),
    ("PORT", "server.port"),
];

/// A figment provider of `key.path = "exact string"` pairs. figment's own `Env` provider picks
/// and renames the variables (through [`key_for_var`]); this provider differs from it in one
/// thing only: it does not guess types, so `007`, `1e5`, `true` or `[1,2]` stay those exact
/// characters. `Figment::extract_lossy` parses the strings of number and boolean keys.
struct Verbatim {
    metadata: Metadata,
    pairs: Vec<(String, String)>,
}

impl Verbatim {
    /// The process environment.
    fn environment() -> Verbatim {
        let env = Env::raw().filter_map(|name| key_for_var(name));
        Verbatim {
            metadata: Metadata::named("environment variable").interpolater(name_variable),
            pairs: env
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), v))
                .collect(),
        }
    }

    /// A `.env` file, read as python-dotenv reads the original's (quotes, `export`, comments);
    /// the `dotenvy` crate does the parsing.
    fn dotenv(path: &Path) -> Result<Verbatim, ConfigError> {
        let err = |source: dotenvy::Error| ConfigError::DotEnv {
            path: path.to_path_buf(),
            source,
        };
        let mut pairs = Vec::new();
        for item in dotenvy::from_path_iter(path).map_err(err)? {
            let (name, value) = item.map_err(err)?;
            if let Some(key) = key_for_var(UncasedStr::new(name.trim())) {
                pairs.push((key.as_str().to_string(), value));
            }
        }
        Ok(Verbatim {
            metadata: Metadata::named(format!("{}", path.display())).interpolater(name_variable),
            pairs,
        })
    }
}

impl Provider for Verbatim {
    fn metadata(&self) -> Metadata {
        self.metadata.clone()
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut dict = Dict::new();
        for (path, value) in &self.pairs {
            // Keys like `server..port` or a trailing `.` are not ours; figment's Env skips them.
            if path.is_empty() || path.split('.').any(str::is_empty) {
                continue;
            }
            let path = path.to_ascii_lowercase();
            if let Value::Dict(_, nested) = nest(&path, Value::from(value.clone())) {
                merge_into(&mut dict, nested);
            }
        }
        Ok(Profile::Default.collect(dict))
    }
}

fn merge_into(into: &mut Dict, from: Dict) {
    for (k, v) in from {
        match (into.get_mut(&k), v) {
            (Some(Value::Dict(_, a)), Value::Dict(_, b)) => merge_into(a, b),
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

#[cfg(test)]
// figment's `Jail` closures return figment::Error, which is large; that is its API, not ours.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use figment::Jail;

    fn load_in(jail: &Jail) -> Result<Settings, ConfigError> {
        Settings::from_figment(Settings::figment(jail.directory())?)
    }

    #[test]
    fn the_shipped_config_toml_parses_to_the_defaults() {
        let text = include_str!("../Config.toml");
        let from_file: Settings = Figment::new()
            .merge(Serialized::defaults(Settings::default()))
            .merge(Toml::string(text))
            .extract()
            .expect("Config.toml parses");
        assert_eq!(from_file, Settings::default());
        // Every key in the file is a real key: figment silently ignores a misspelt one.
        let data = Toml::string(text).data().expect("Config.toml is TOML");
        let defaults = serde_json::to_value(Settings::default()).unwrap();
        for (section, keys) in &data[&Profile::Default] {
            for key in keys.as_dict().expect("sections only").keys() {
                assert!(
                    defaults[section].get(key).is_some(),
                    "Config.toml has unknown key {section}.{key}"
                );
            }
        }
    }

    #[test]
    fn misspelt_settings_are_named_with_where_they_were_found_and_the_nearest_key() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "Config.toml",
                "[storage]\nprivat = true\nprivate = false\n[sever]\nport = 1\n\
                 [cache.extra]\nttl_secs = 5\n",
            )?;
            jail.create_file(
                ".env",
                "APP_CACHE__TTL_SEC=6\nAPP_CACHE__TTL_SECS=6\nPORT=1\n",
            )?;
            jail.set_env("APP_STORAGE__PRIVAT", "true");
            jail.set_env("APP_PORT_8080_TCP", "tcp://10.0.0.1:8080"); // a Kubernetes service "app"
            jail.set_env("APP_SERVER__PORT", "9000");
            jail.set_env("DATABASE_URL", "postgres://db/x");
            jail.set_env("app_storage__privat", "true"); // not ours: the prefix is upper case
            let toml = jail.directory().join("Config.toml").display().to_string();
            let dotenv = jail.directory().join(".env").display().to_string();
            let mut found = unknown_settings(jail.directory());
            found.sort();
            let mut want = vec![
                format!(
                    "{toml}: `storage.privat` is not a setting and is ignored; did you mean \
                     `storage.private`?"
                ),
                format!(
                    "{toml}: `sever.port` is not a setting and is ignored; did you mean `server.port`?"
                ),
                format!("{toml}: `cache.extra.ttl_secs` is not a setting and is ignored"),
                format!(
                    "APP_CACHE__TTL_SEC (in {dotenv}) is not a setting and is ignored; did you \
                     mean APP_CACHE__TTL_SECS?"
                ),
                "APP_STORAGE__PRIVAT (in the environment) is not a setting and is ignored; did \
                 you mean APP_STORAGE__PRIVATE?"
                    .to_string(),
                "APP_PORT_8080_TCP (in the environment) is not a setting and is ignored"
                    .to_string(),
            ];
            want.sort();
            assert_eq!(found, want);
            Ok(())
        });
        // Nothing to say about the shipped file, legacy names, or no files at all.
        Jail::expect_with(|jail| {
            jail.create_file("Config.toml", include_str!("../Config.toml"))?;
            jail.set_env("SUPABASE_BUCKET", "b");
            jail.set_env("APP_IMAGE__MEDIUM_PX", "0");
            assert_eq!(unknown_settings(jail.directory()), Vec::<String>::new());
            Ok(())
        });
        Jail::expect_with(|jail| {
            assert_eq!(unknown_settings(jail.directory()), Vec::<String>::new());
            Ok(())
        });
    }

    #[test]
    fn precedence_is_defaults_then_toml_then_dotenv_then_environment() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "Config.toml",
                "[cache]\nttl_secs = 5\nhttp_max_age_secs = 7\n[server]\nport = 9000\n",
            )?;
            jail.create_file(".env", "PORT=9100\nAPP_CACHE__TTL_SECS=6\n")?;
            jail.set_env("PORT", "9200");
            let s = load_in(jail).expect("loads");
            assert_eq!(s.server.port, 9200, "process env beats .env and TOML");
            assert_eq!(s.cache.ttl_secs, 6, ".env beats TOML");
            assert_eq!(s.cache.http_max_age_secs, 7, "TOML beats defaults");
            assert_eq!(s.cache.max_bytes, 32 << 20, "defaults fill the rest");
            Ok(())
        });
    }

    #[test]
    fn trusted_proxies_and_the_key_throttle_are_read_and_checked() {
        Jail::expect_with(|jail| {
            jail.set_env(
                "APP_SERVER__TRUSTED_PROXIES",
                "10.0.0.0/8, 192.0.2.1,,2001:db8::/32",
            );
            jail.set_env("APP_AUTH__WRONG_KEY_BURST", "3");
            let s = load_in(jail).expect("loads");
            let nets: Vec<String> = s
                .server
                .trusted_proxies
                .iter()
                .map(|n| n.to_string())
                .collect();
            assert_eq!(nets, ["10.0.0.0/8", "192.0.2.1/32", "2001:db8::/32"]);
            assert_eq!(s.auth.wrong_key_burst, 3);
            assert_eq!(s.auth.wrong_keys_per_minute, 5);

            jail.set_env("APP_SERVER__TRUSTED_PROXIES", "10.0.0.0/8,proxy.internal");
            let e = load_in(jail).unwrap_err().to_string();
            assert!(e.contains("`proxy.internal` is not an IP address"), "{e}");
            assert!(e.contains("APP_SERVER__TRUSTED_PROXIES"), "{e}");
            jail.set_env("APP_SERVER__TRUSTED_PROXIES", "");

            jail.set_env("APP_AUTH__WRONG_KEYS_PER_MINUTE", "0");
            let e = load_in(jail).unwrap_err().to_string();
            assert!(e.contains("auth.wrong_keys_per_minute"), "{e}");
            jail.set_env("APP_AUTH__WRONG_KEY_BURST", "0");
            assert!(
                load_in(jail).is_ok(),
                "no throttle: the rate does not matter"
            );
            jail.set_env("APP_AUTH__WRONG_KEY_BURST", "10001");
            let e = load_in(jail).unwrap_err().to_string();
            assert!(e.contains("auth.wrong_key_burst"), "{e}");
            jail.set_env("APP_AUTH__WRONG_KEY_BURST", "10000");
            jail.set_env("APP_AUTH__WRONG_KEYS_PER_MINUTE", "1");
            assert!(load_in(jail).is_ok());
            Ok(())
        });
    }

    #[test]
    fn original_variable_names_are_honoured() {
        Jail::expect_with(|jail| {
            jail.set_env("DATABASE_URL", "postgres://u:p@db.example:5432/photos");
            jail.set_env("ADMIN_API_KEY", "12345");
            jail.set_env("SUPABASE_URL", "https://x.supabase.co");
            jail.set_env("SUPABASE_KEY", "service");
            jail.set_env("SUPABASE_BUCKET", "pics");
            jail.set_env("CORS_ORIGINS", "https://a.example, https://b.example/");
            let s = load_in(jail).expect("loads");
            assert_eq!(
                s.database.url.unwrap().expose(),
                "postgres://u:p@db.example:5432/photos"
            );
            assert_eq!(s.auth.admin_api_key.unwrap().expose(), "12345");
            assert_eq!(
                s.storage.supabase_url.as_deref(),
                Some("https://x.supabase.co")
            );
            assert_eq!(s.storage.supabase_bucket, "pics");
            assert_eq!(
                s.server.cors_origins,
                vec!["https://a.example", "https://b.example"]
            );
            Ok(())
        });
    }

    #[test]
    fn a_bad_value_names_the_key_and_its_source() {
        Jail::expect_with(|jail| {
            jail.set_env("APP_CACHE__TTL_SECS", "soon");
            let err = load_in(jail).unwrap_err().to_string();
            assert!(err.contains("APP_CACHE__TTL_SECS"), "{err}");
            assert!(err.contains("environment variable"), "{err}");
            Ok(())
        });
        Jail::expect_with(|jail| {
            jail.create_file("Config.toml", "[server]\nport = \"eighty\"\n")?;
            let err = load_in(jail).unwrap_err().to_string();
            assert!(err.contains("port"), "{err}");
            assert!(err.contains("Config.toml"), "{err}");
            Ok(())
        });
        Jail::expect_with(|jail| {
            jail.set_env("DATABASE_URL", "mysql://nope");
            let err = load_in(jail).unwrap_err().to_string();
            assert!(err.contains("DATABASE_URL"), "{err}");
            Ok(())
        });
        Jail::expect_with(|jail| {
            jail.set_env("CORS_ORIGINS", "*, https://a.example");
            let err = load_in(jail).unwrap_err().to_string();
            assert!(err.contains("CORS_ORIGINS"), "{err}");
            Ok(())
        });
        Jail::expect_with(|jail| {
            jail.set_env("CORS_ORIGINS", "photos.example");
            let err = load_in(jail).unwrap_err().to_string();
            assert!(
                err.contains("CORS_ORIGINS") && err.contains("photos.example"),
                "{err}"
            );
            Ok(())
        });
        Jail::expect_with(|jail| {
            jail.set_env("APP_DATABASE__MIGRATE_ON_START", "maybe");
            let err = load_in(jail).unwrap_err().to_string();
            assert!(err.contains("APP_DATABASE__MIGRATE_ON_START"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn cors_star_means_any_origin() {
        Jail::expect_with(|jail| {
            jail.set_env("CORS_ORIGINS", "*");
            let s = load_in(jail).expect("loads");
            assert!(s.server.cors_any_origin());
            Ok(())
        });
    }

    /// Values that figment's `Env` would have read as numbers, booleans or arrays.
    const TRICKY: &[&str] = &[
        "007",
        "1e5",
        "true",
        "0x1F",
        "[1,2]",
        "-0",
        "1.50",
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    ];

    #[test]
    fn string_settings_keep_their_exact_characters_from_the_environment() {
        for &v in TRICKY {
            Jail::expect_with(|jail| {
                jail.set_env("ADMIN_API_KEY", v);
                jail.set_env("SUPABASE_BUCKET", v);
                jail.set_env("APP_STORAGE__PUBLIC_BASE_URL", v);
                let s = load_in(jail).expect("loads");
                assert_eq!(s.auth.admin_api_key.unwrap().expose(), v);
                assert_eq!(s.storage.supabase_bucket, v);
                assert_eq!(s.storage.public_base_url, v);
                Ok(())
            });
        }
    }

    #[test]
    fn string_settings_keep_their_exact_characters_from_dotenv() {
        for &v in TRICKY {
            Jail::expect_with(|jail| {
                jail.create_file(".env", &format!("ADMIN_API_KEY={v}\nSUPABASE_BUCKET={v}\n"))?;
                let s = load_in(jail).expect("loads");
                assert_eq!(s.auth.admin_api_key.unwrap().expose(), v);
                assert_eq!(s.storage.supabase_bucket, v);
                Ok(())
            });
        }
        // Quoted as python-dotenv reads it: `=` and `#` inside quotes are part of the value.
        Jail::expect_with(|jail| {
            jail.create_file(
                ".env",
                "ADMIN_API_KEY=\"k=v#not-a-comment\"\nSUPABASE_BUCKET='a#b=c'\n\
                 export DATABASE_URL=postgres://u@h/db # a comment\n",
            )?;
            let s = load_in(jail).expect("loads");
            assert_eq!(s.auth.admin_api_key.unwrap().expose(), "k=v#not-a-comment");
            assert_eq!(s.storage.supabase_bucket, "a#b=c");
            assert_eq!(s.database.url.unwrap().expose(), "postgres://u@h/db");
            Ok(())
        });
    }

    #[test]
    fn numbers_and_booleans_are_parsed_only_for_their_keys() {
        Jail::expect_with(|jail| {
            jail.create_file(".env", "APP_DATABASE__MIGRATE_ON_START=false\n")?;
            jail.set_env("PORT", "0");
            jail.set_env("APP_CACHE__TTL_SECS", "007");
            let s = load_in(jail).expect("loads");
            assert_eq!(s.server.port, 0);
            assert_eq!(s.cache.ttl_secs, 7);
            assert!(!s.database.migrate_on_start);
            Ok(())
        });
    }

    #[test]
    fn the_storage_backend_follows_the_originals_variables() {
        Jail::expect_with(|jail| {
            let s = load_in(jail).expect("loads");
            assert_eq!(s.storage.backend(), StorageBackend::Local, "neither set");
            jail.set_env("SUPABASE_URL", "https://x.supabase.co");
            jail.set_env("SUPABASE_KEY", "service");
            let s = load_in(jail).expect("loads");
            assert_eq!(s.storage.backend(), StorageBackend::Supabase, "both set");
            jail.set_env("APP_STORAGE__BACKEND", "local");
            let s = load_in(jail).expect("loads");
            assert_eq!(s.storage.backend(), StorageBackend::Local, "explicit wins");
            Ok(())
        });
        Jail::expect_with(|jail| {
            jail.create_file(".env", "SUPABASE_URL=https://x.supabase.co\n")?;
            let err = load_in(jail).unwrap_err().to_string();
            assert!(
                err.contains("SUPABASE_KEY") && err.contains("missing"),
                "{err}"
            );
            Ok(())
        });
        Jail::expect_with(|jail| {
            jail.set_env("SUPABASE_KEY", "service");
            let err = load_in(jail).unwrap_err().to_string();
            assert!(
                err.contains("SUPABASE_URL") && err.contains("missing"),
                "{err}"
            );
            Ok(())
        });
        Jail::expect_with(|jail| {
            jail.set_env("APP_STORAGE__BACKEND", "supabase");
            jail.set_env("SUPABASE_URL", "https://x.supabase.co");
            let err = load_in(jail).unwrap_err().to_string();
            assert!(err.contains("SUPABASE_KEY"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn blank_values_mean_unset_and_secrets_never_print() {
        Jail::expect_with(|jail| {
            jail.create_file(".env", "DATABASE_URL=\nADMIN_API_KEY=\"s3cr3t\" \n")?;
            let s = load_in(jail).expect("loads");
            assert_eq!(s.database.url, None);
            let key = s.auth.admin_api_key.clone().unwrap();
            assert_eq!(key.expose(), "s3cr3t");
            assert!(!format!("{s:?}").contains("s3cr3t"));
            Ok(())
        });
    }

    #[test]
    fn an_address_endpoint_needs_path_style_and_says_which_setting() {
        for (endpoint, path_style, ok) in [
            ("http://127.0.0.1:9000", false, false),
            ("http://[::1]:9000", false, false),
            ("http://LOCALHOST:9000", false, false),
            ("http://127.0.0.1:9000", true, true),
            ("http://minio:9000", false, true),
            ("https://s3.eu-west-1.amazonaws.com", false, true),
        ] {
            Jail::expect_with(|jail| {
                jail.set_env("APP_STORAGE__BACKEND", "s3");
                jail.set_env("APP_STORAGE__S3_BUCKET", "photos");
                jail.set_env("AWS_ACCESS_KEY_ID", "k");
                jail.set_env("AWS_SECRET_ACCESS_KEY", "s");
                jail.set_env("AWS_ENDPOINT_URL", endpoint);
                jail.set_env("APP_STORAGE__S3_PATH_STYLE", path_style.to_string());
                match load_in(jail) {
                    Ok(_) => assert!(ok, "{endpoint} {path_style}"),
                    Err(e) => {
                        assert!(!ok, "{endpoint} {path_style}: {e}");
                        let e = e.to_string();
                        assert!(e.contains("APP_STORAGE__S3_PATH_STYLE=true"), "{e}");
                    }
                }
                Ok(())
            });
        }
    }

    #[test]
    fn s3_takes_the_aws_variables_and_names_what_is_missing() {
        Jail::expect_with(|jail| {
            jail.set_env("APP_STORAGE__BACKEND", "s3");
            jail.set_env("APP_STORAGE__S3_BUCKET", "photos");
            jail.set_env("AWS_ACCESS_KEY_ID", "AKIA123");
            jail.set_env("AWS_SECRET_ACCESS_KEY", "s3cr3t");
            jail.set_env("AWS_REGION", "eu-west-3");
            jail.set_env("AWS_ENDPOINT_URL", "http://minio:9000");
            let s = load_in(jail).unwrap();
            assert_eq!(s.storage.backend(), StorageBackend::S3);
            assert_eq!(s.storage.s3_access_key_id.as_deref(), Some("AKIA123"));
            assert_eq!(s.storage.s3_region, "eu-west-3");
            assert_eq!(s.storage.s3_endpoint.as_deref(), Some("http://minio:9000"));
            assert!(
                !format!("{s:?}").contains("s3cr3t"),
                "the secret is redacted"
            );
            Ok(())
        });
        Jail::expect_with(|jail| {
            jail.set_env("APP_STORAGE__BACKEND", "s3");
            jail.set_env("AWS_ACCESS_KEY_ID", "AKIA123");
            jail.set_env("AWS_SECRET_ACCESS_KEY", "s3cr3t");
            let err = load_in(jail).unwrap_err().to_string();
            assert!(err.contains("storage.s3_bucket"), "{err}");
            Ok(())
        });
        Jail::expect_with(|jail| {
            jail.set_env("APP_STORAGE__BACKEND", "s3");
            jail.set_env("APP_STORAGE__S3_BUCKET", "photos");
            jail.set_env("AWS_ACCESS_KEY_ID", "AKIA123");
            let err = load_in(jail).unwrap_err().to_string();
            assert!(err.contains("AWS_SECRET_ACCESS_KEY"), "{err}");
            Ok(())
        });
        Jail::expect_with(|jail| {
            jail.set_env("APP_STORAGE__BACKEND", "s3");
            jail.set_env("APP_STORAGE__S3_BUCKET", "photos");
            jail.set_env("AWS_ACCESS_KEY_ID", "AKIA123");
            jail.set_env("AWS_SECRET_ACCESS_KEY", "s3cr3t");
            jail.set_env("AWS_ENDPOINT_URL", "minio:9000");
            let err = load_in(jail).unwrap_err().to_string();
            assert!(err.contains("AWS_ENDPOINT_URL"), "{err}");
            Ok(())
        });
        // AWS variables alone never switch the backend: the original's deployments keep theirs.
        Jail::expect_with(|jail| {
            jail.set_env("AWS_ACCESS_KEY_ID", "AKIA123");
            let s = load_in(jail).unwrap();
            assert_eq!(s.storage.backend(), StorageBackend::Local);
            Ok(())
        });
    }

    #[test]
    fn the_listener_url_is_checked_and_blank_means_unset() {
        Jail::expect_with(|jail| {
            jail.set_env("APP_DATABASE__LISTEN_URL", "");
            assert_eq!(load_in(jail).unwrap().database.listen_url, None);
            jail.set_env("APP_DATABASE__LISTEN_URL", "mysql://nope");
            let err = load_in(jail).unwrap_err().to_string();
            assert!(err.contains("APP_DATABASE__LISTEN_URL"), "{err}");
            Ok(())
        });
    }
}
