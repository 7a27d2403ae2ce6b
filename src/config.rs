//! Configuration: built-in defaults, then `Config.toml`, then a `.env` file, then the process
//! environment, each layer overriding the one before (figment).
//!
//! Two families of environment variables are read, from the process and from `.env` alike:
//! - the original Python server's names (`DATABASE_URL`, `ADMIN_API_KEY`, `SUPABASE_URL`,
//!   `SUPABASE_KEY`, `SUPABASE_BUCKET`, `CORS_ORIGINS`, `PORT`), so an existing deployment keeps
//!   working unchanged;
//! - `APP_SECTION__KEY` for every key, e.g. `APP_CACHE__TTL_SECS=30` sets `cache.ttl_secs`.
//!
//! `Config.toml` at the repository root lists every key with its default and env override; keep it
//! in step with the structs below (a unit test checks that it parses to the defaults).

use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
};

use figment::{
    Figment, Metadata, Profile, Provider,
    providers::{Format, Serialized, Toml},
    value::{Dict, Map, Value},
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
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServerSettings {
    /// Address to listen on.
    pub host: String,
    /// Port to listen on; 0 picks a free one (tests).
    pub port: u16,
    /// Origins allowed by CORS. Empty: no cross-origin browser access at all.
    #[serde(deserialize_with = "list_or_comma_separated")]
    pub cors_origins: Vec<String>,
    /// How long in-flight requests may run on after SIGINT/SIGTERM.
    pub shutdown_grace_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DatabaseSettings {
    /// PostgreSQL URL. None: serve the embedded photographs only.
    pub url: Option<Secret>,
    /// Most connections the pool opens.
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
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuthSettings {
    /// The `X-API-Key` that admin uploads must present. None: uploads are refused.
    pub admin_api_key: Option<Secret>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StorageSettings {
    /// Where uploaded photos go: `local` (a folder) or `supabase`.
    pub backend: StorageBackend,
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
    /// Most seconds one request to Supabase may take.
    pub timeout_secs: u64,
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
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    Local,
    Supabase,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            server: ServerSettings {
                host: "0.0.0.0".into(),
                port: 8000,
                cors_origins: Vec::new(),
                shutdown_grace_secs: 10,
            },
            database: DatabaseSettings {
                url: None,
                pool_max_size: 8,
                checkout_timeout_ms: 1500,
                queue_timeout_ms: 5000,
                connect_timeout_ms: 2000,
                reprobe_interval_ms: 1000,
                migrate_on_start: true,
            },
            cache: CacheSettings {
                max_bytes: 32 << 20,
                ttl_secs: 60,
                stale_max_bytes: 8 << 20,
                http_max_age_secs: 10,
            },
            auth: AuthSettings {
                admin_api_key: None,
            },
            storage: StorageSettings {
                backend: StorageBackend::Local,
                local_dir: PathBuf::from("data/media"),
                public_base_url: "http://localhost:8000/media".into(),
                supabase_url: None,
                supabase_key: None,
                supabase_bucket: "images".into(),
                timeout_secs: 60,
            },
            upload: UploadSettings {
                max_file_bytes: 25 << 20,
                max_request_bytes: 512 << 20,
                max_batch_files: 500,
                max_side_px: 16_384,
                allowed_categories: Vec::new(),
                max_concurrent: 2,
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
        source: std::io::Error,
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
        let dotenv_path = dir.join(".env");
        let dotenv = match std::fs::read_to_string(&dotenv_path) {
            Ok(text) => parse_dotenv(&text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => {
                return Err(ConfigError::DotEnv {
                    path: dotenv_path,
                    source,
                });
            }
        };
        let mut figment = Figment::new().merge(Serialized::defaults(Settings::default()));
        // Exactly this file, never one found in a parent directory; and none is fine.
        let toml = dir.join("Config.toml");
        if toml.exists() {
            figment = figment.merge(Toml::file_exact(toml));
        }
        Ok(figment
            .merge(Vars::new(format!("{}", dotenv_path.display()), dotenv))
            .merge(Vars::new("environment variable".into(), std::env::vars())))
    }

    /// Extracts and checks settings from a figment.
    pub fn from_figment(figment: Figment) -> Result<Settings, ConfigError> {
        let mut s: Settings = figment.extract()?;
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
        if blank(&self.auth.admin_api_key) {
            self.auth.admin_api_key = None;
        }
        if blank(&self.storage.supabase_key) {
            self.storage.supabase_key = None;
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
        if self.server.cors_origins.iter().any(|o| o == "*") {
            return invalid(
                "server.cors_origins (CORS_ORIGINS)",
                "must list origins explicitly; `*` is not allowed",
            );
        }
        if self.upload.max_file_bytes == 0 || self.upload.max_request_bytes == 0 {
            return invalid(
                "upload.max_file_bytes",
                "and upload.max_request_bytes must be above 0",
            );
        }
        if self.storage.backend == StorageBackend::Supabase
            && (self.storage.supabase_url.is_none() || self.storage.supabase_key.is_none())
        {
            return invalid(
                "storage.backend",
                "is `supabase` but SUPABASE_URL and SUPABASE_KEY are not both set",
            );
        }
        Ok(())
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
    /// Env values are type-guessed, so `ADMIN_API_KEY=12345` arrives as a number: take any
    /// scalar as its text.
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

/// Maps an environment variable name to a settings key path, or None if it is not ours.
fn key_for_var(name: &str) -> Option<String> {
    let legacy = match name {
        "DATABASE_URL" => Some("database.url"),
        "ADMIN_API_KEY" => Some("auth.admin_api_key"),
        "SUPABASE_URL" => Some("storage.supabase_url"),
        "SUPABASE_KEY" => Some("storage.supabase_key"),
        "SUPABASE_BUCKET" => Some("storage.supabase_bucket"),
        "CORS_ORIGINS" => Some("server.cors_origins"),
        "PORT" => Some("server.port"),
        _ => None,
    };
    if let Some(k) = legacy {
        return Some(k.to_string());
    }
    let rest = name.strip_prefix("APP_")?;
    (!rest.is_empty()).then(|| rest.to_ascii_lowercase().replace("__", "."))
}

/// A figment provider over a list of `NAME=value` pairs (the process environment or a `.env`
/// file), mapped by [`key_for_var`]. Values are type-guessed exactly as figment's `Env` does.
struct Vars {
    name: String,
    pairs: Vec<(String, String)>,
}

impl Vars {
    fn new(name: String, pairs: impl IntoIterator<Item = (String, String)>) -> Self {
        let pairs = pairs
            .into_iter()
            .filter(|(k, _)| key_for_var(k).is_some())
            .collect();
        Vars { name, pairs }
    }
}

impl Provider for Vars {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name.clone())
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut dict = Dict::new();
        for (k, v) in &self.pairs {
            let Some(path) = key_for_var(k) else { continue };
            let value: Value = v.parse().expect("parsing a Value is infallible");
            if let Value::Dict(_, nested) = figment::util::nest(&path, value) {
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

/// Parses a `.env` file: `NAME=value` lines, `#` comments, optional `export `, optional single or
/// double quotes around the value. Enough for the original's `.env.example`.
fn parse_dotenv(text: &str) -> Vec<(String, String)> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = v.trim();
        let v = if v.len() >= 2
            && ((v.starts_with('"') && v.ends_with('"'))
                || (v.starts_with('\'') && v.ends_with('\'')))
        {
            // Quoted: keep the text exactly, and keep it a string (no type guessing).
            format!("\"{}\"", v[1..v.len() - 1].replace('"', "\\\""))
        } else {
            // Unquoted: drop a trailing ` # comment`.
            v.split(" #").next().unwrap_or("").trim().to_string()
        };
        out.insert(k.trim().to_string(), v);
    }
    out.into_iter().collect()
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
            assert!(err.contains("ttl_secs"), "{err}");
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
            jail.set_env("CORS_ORIGINS", "*");
            let err = load_in(jail).unwrap_err().to_string();
            assert!(err.contains("CORS_ORIGINS"), "{err}");
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
    fn dotenv_parsing() {
        let pairs = parse_dotenv("# c\nexport PORT=81\nX='a b'\nY=v # note\nbroken\n");
        let map: BTreeMap<_, _> = pairs.into_iter().collect();
        assert_eq!(map["PORT"], "81");
        assert_eq!(map["X"], "\"a b\"");
        assert_eq!(map["Y"], "v");
        assert!(!map.contains_key("broken"));
    }
}
