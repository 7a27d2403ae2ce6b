//! The listing cache: pages of `GET /api/images` kept as ready-to-send JSON bytes.
//!
//! Three moka caches:
//! - `pages`: the live cache, bounded by bytes and a TTL. Concurrent misses for one page share a
//!   single load (moka's `try_get_with`); failed loads are not cached.
//! - `totals`: the row count behind `X-Total-Count`, with the same TTL.
//! - `stale`: the last good copy of every page, with no TTL, served only while the database is
//!   down ("the last page successfully served for the same query").
//!
//! Writes call [`PageCache::invalidate`]. Keys carry a generation number that invalidation bumps,
//! so a load that started before a write can never park its outdated page under a current key.

use std::{
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use moka::future::Cache;
use poem::http::HeaderValue;

use crate::{
    config::CacheSettings,
    db::DbError,
    model::{Category, PageKey, etag_of},
};

/// One page of the listing, serialised once.
#[derive(Debug)]
pub struct Page {
    /// The JSON array, exactly as sent.
    pub body: Bytes,
    /// Strong validator: a hash of `body`, quoted.
    pub etag: String,
    /// `etag` and the gzip copy's, ready to send.
    pub etag_header: HeaderValue,
    pub gzip_etag_header: HeaderValue,
    /// Total number of photographs (of the category, if filtered) when the page was built.
    pub total: i64,
    /// Photographs on this page.
    pub len: usize,
    /// Id of the last photograph on this page (where the next keyset page starts).
    pub last_id: Option<i64>,
    /// The body gzipped, made the first time a client accepts gzip.
    gzip: OnceLock<Bytes>,
    /// Private mode: the rows the body was made of (their URLs unsigned), to sign again.
    pub rows: Option<Arc<[crate::model::Photo]>>,
    /// Private mode: this page with its URLs signed, and until when it may be sent.
    pub signed: tokio::sync::Mutex<Option<(std::time::Instant, Arc<Page>)>>,
}

/// The ETag of the gzip copy: a different representation, so a different strong tag.
fn gzip_etag(etag: &str) -> String {
    format!("{}-gz\"", &etag[..etag.len() - 1])
}

/// Bodies shorter than this are sent as they are: gzip would not make them smaller.
const GZIP_MIN: usize = 256;

impl Page {
    pub fn new(body: Vec<u8>, total: i64, len: usize, last_id: Option<i64>) -> Page {
        let etag = etag_of(&body);
        let header = |t: &str| HeaderValue::from_str(t).expect("a quoted hex string");
        Page {
            etag_header: header(&etag),
            gzip_etag_header: header(&gzip_etag(&etag)),
            body: Bytes::from(body),
            etag,
            total,
            len,
            last_id,
            gzip: OnceLock::new(),
            rows: None,
            signed: tokio::sync::Mutex::new(None),
        }
    }

    /// The same page, keeping the rows it was made of (private mode signs them when sent).
    pub fn keeping(mut self, rows: Arc<[crate::model::Photo]>) -> Page {
        self.rows = Some(rows);
        self
    }

    /// The gzip copy of the body, or None when the body is too short to be worth it.
    pub fn gzipped(&self) -> Option<&Bytes> {
        if self.body.len() < GZIP_MIN {
            return None;
        }
        Some(self.gzip.get_or_init(|| {
            use std::io::Write;
            let mut enc = flate2::write::GzEncoder::new(
                Vec::with_capacity(self.body.len() / 3),
                flate2::Compression::default(),
            );
            enc.write_all(&self.body).expect("writing to a Vec");
            Bytes::from(enc.finish().expect("writing to a Vec"))
        }))
    }

    /// Whether an `If-None-Match` header value matches this page (RFC 9110 weak comparison).
    pub fn matches(&self, if_none_match: &str) -> bool {
        let base = &self.etag[..self.etag.len() - 1]; // without the closing quote
        if_none_match.split(',').map(str::trim).any(|tag| {
            let tag = tag.strip_prefix("W/").unwrap_or(tag);
            tag == "*" || tag == self.etag || tag.strip_suffix("-gz\"").is_some_and(|t| t == base)
        })
    }
}

pub struct PageCache {
    /// None when `cache.max_bytes` is 0: every request goes to the database.
    pages: Option<Cache<(u64, PageKey), Arc<Page>>>,
    /// Keyed by generation and category.
    totals: Cache<(u64, Option<Category>), i64>,
    stale: Cache<PageKey, Arc<Page>>,
    generation: AtomicU64,
}

fn weigh(body_len: usize) -> u32 {
    // Body plus a rough allowance for the key, the Arc and moka's own bookkeeping.
    u32::try_from(body_len + 128).unwrap_or(u32::MAX)
}

impl PageCache {
    pub fn new(s: &CacheSettings) -> PageCache {
        let ttl = Duration::from_secs(s.ttl_secs.max(1));
        let pages = (s.max_bytes > 0).then(|| {
            Cache::builder()
                .max_capacity(s.max_bytes)
                .weigher(|_k, v: &Arc<Page>| weigh(v.body.len()))
                .time_to_live(ttl)
                .build()
        });
        PageCache {
            pages,
            totals: Cache::builder()
                .max_capacity(1024)
                .time_to_live(ttl)
                .build(),
            stale: Cache::builder()
                .max_capacity(s.stale_max_bytes.max(1))
                .weigher(|_k, v: &Arc<Page>| weigh(v.body.len()))
                .build(),
            generation: AtomicU64::new(0),
        }
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Pages cached and their weighed bytes (moka's counts, brought up to date first).
    pub async fn stats(&self) -> (u64, u64) {
        match &self.pages {
            Some(p) => {
                p.run_pending_tasks().await;
                (p.entry_count(), p.weighted_size())
            }
            None => (0, 0),
        }
    }

    /// A live cached page, if there is one.
    pub async fn get(&self, key: &PageKey) -> Option<Arc<Page>> {
        let key = (self.generation(), key.clone());
        self.pages.as_ref()?.get(&key).await
    }

    /// The cached page, or the result of `load`, shared by every concurrent caller for the same
    /// key. A successful load is also kept as the page's stale copy.
    pub async fn get_or_load<F>(&self, key: PageKey, load: F) -> Result<Arc<Page>, Arc<DbError>>
    where
        F: Future<Output = Result<Arc<Page>, DbError>>,
    {
        let stale_key = key.clone();
        let load = async {
            let page = load.await?;
            self.stale.insert(stale_key, page.clone()).await;
            Ok(page)
        };
        match &self.pages {
            Some(pages) => pages.try_get_with((self.generation(), key), load).await,
            None => load.await.map_err(Arc::new),
        }
    }

    /// The row count (of one category, or all), cached under the current generation.
    pub async fn total<F>(&self, category: Option<Category>, load: F) -> Result<i64, Arc<DbError>>
    where
        F: Future<Output = Result<i64, DbError>>,
    {
        self.totals
            .try_get_with((self.generation(), category), load)
            .await
    }

    /// The last page successfully loaded for `key`, however old.
    pub async fn stale(&self, key: &PageKey) -> Option<Arc<Page>> {
        self.stale.get(key).await
    }

    /// Forgets every live page and count: the next request for each reloads it.
    pub fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let Some(pages) = &self.pages {
            pages.invalidate_all();
        }
        self.totals.invalidate_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn settings(max_bytes: u64) -> CacheSettings {
        CacheSettings {
            max_bytes,
            ttl_secs: 60,
            stale_max_bytes: 1 << 20,
            http_max_age_secs: 0,
            ..CacheSettings::default()
        }
    }

    const KEY: PageKey = PageKey {
        limit: 10,
        offset: 0,
        after_id: None,
        category: None,
        shape: crate::model::Shape::Records,
    };

    #[test]
    fn a_gzip_copy_is_made_once_for_bodies_worth_compressing() {
        use std::io::Read;
        assert!(Page::new(b"[]".to_vec(), 0, 0, None).gzipped().is_none());
        let body = br#"{"id":1,"filename":"a.jpg"},"#.repeat(40);
        let p = Page::new(body.clone(), 40, 40, Some(40));
        let gz = p.gzipped().unwrap().clone();
        assert!(gz.len() < body.len() / 4);
        assert_eq!(p.gzipped().unwrap().as_ptr(), gz.as_ptr(), "made once");
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut plain)
            .unwrap();
        assert_eq!(plain, body);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn concurrent_misses_for_one_page_load_it_once() {
        let cache = Arc::new(PageCache::new(&settings(1 << 20)));
        let loads = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let (cache, loads) = (cache.clone(), loads.clone());
                tokio::spawn(async move {
                    cache
                        .get_or_load(KEY.clone(), async {
                            loads.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            Ok(Arc::new(Page::new(b"[]".to_vec(), 0, 0, None)))
                        })
                        .await
                        .unwrap()
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn the_cache_stays_within_its_byte_budget() {
        let budget = 64 * 1024;
        let cache = PageCache::new(&settings(budget));
        for offset in 0..200 {
            let key = PageKey::offset(10, offset);
            let page = Arc::new(Page::new(vec![b' '; 2000], 0, 0, None));
            cache.get_or_load(key, async { Ok(page) }).await.unwrap();
        }
        let pages = cache.pages.as_ref().unwrap();
        pages.run_pending_tasks().await;
        assert!(pages.weighted_size() <= budget, "{}", pages.weighted_size());
        assert!(pages.entry_count() > 10, "it still caches what fits");
    }

    #[tokio::test]
    async fn invalidation_hides_pages_loaded_before_it() {
        let cache = PageCache::new(&settings(1 << 20));
        let old = Arc::new(Page::new(b"[1]".to_vec(), 1, 1, Some(1)));
        cache
            .get_or_load(KEY.clone(), async { Ok(old) })
            .await
            .unwrap();
        assert!(cache.get(&KEY).await.is_some());
        cache.invalidate();
        assert!(cache.get(&KEY).await.is_none());
        // The stale copy survives for outages.
        assert_eq!(cache.stale(&KEY).await.unwrap().body.as_ref(), b"[1]");
    }

    #[test]
    fn etag_matching_follows_if_none_match_rules() {
        let p = Page::new(b"[]".to_vec(), 0, 0, None);
        assert!(p.matches(&p.etag));
        assert!(p.matches(&format!("W/{}", p.etag)));
        assert!(p.matches(&format!("\"other\", {}", p.etag)));
        assert!(p.matches("*"));
        assert!(!p.matches("\"other\""));
        assert!(
            p.matches(&gzip_etag(&p.etag)),
            "either representation's tag"
        );
        assert_ne!(p.etag, Page::new(b"[1]".to_vec(), 0, 0, None).etag);
    }
}
