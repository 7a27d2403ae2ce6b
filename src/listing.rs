//! The read path of `GET /api/images`: cache, then database, then the stale copy, then the
//! photographs embedded in the binary. The body is always a JSON array of the same shape.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use rust_embed::Embed;

use crate::{
    cache::{Page, PageCache},
    db::{self, Db},
    model::PageKey,
};

/// Where a response's data came from; sent as `X-Data-Source`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// PostgreSQL, directly or through the live cache.
    Database,
    /// The last good copy of this page, while the database is down.
    Stale,
    /// The photographs embedded in the binary.
    Fallback,
}

impl Source {
    /// The `X-Data-Source` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Database => "database",
            Source::Stale => "stale",
            Source::Fallback => "fallback",
        }
    }
}

#[derive(Embed)]
#[folder = "assets/"]
pub struct Assets;

/// The embedded photographs, as parsed JSON objects (they carry `title` and `location` besides
/// the six contract fields).
pub struct Fallback {
    items: Vec<serde_json::Value>,
    /// Pages already built (the data never changes). Bounded: cleared when full.
    pages: Mutex<HashMap<PageKey, Arc<Page>>>,
}

const FALLBACK_PAGES_MAX: usize = 1024;

impl Fallback {
    pub fn load() -> Fallback {
        let file = Assets::get("photographs.json").expect("assets/photographs.json is embedded");
        let items: Vec<serde_json::Value> =
            serde_json::from_slice(&file.data).expect("assets/photographs.json is a JSON array");
        Fallback {
            items,
            pages: Mutex::new(HashMap::new()),
        }
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn page(&self, key: &PageKey) -> Arc<Page> {
        if let Some(page) = self.pages.lock().expect("not poisoned").get(key) {
            return page.clone();
        }
        let page = self.build(key);
        let mut pages = self.pages.lock().expect("not poisoned");
        if pages.len() >= FALLBACK_PAGES_MAX {
            pages.clear();
        }
        pages.insert(key.clone(), page.clone());
        page
    }

    fn build(&self, key: &PageKey) -> Arc<Page> {
        let matching: Vec<&serde_json::Value> = self
            .items
            .iter()
            .filter(|p| {
                key.category.as_ref().is_none_or(|c| {
                    p["category"]
                        .as_str()
                        .is_some_and(|pc| pc.eq_ignore_ascii_case(c.as_str()))
                })
            })
            .collect();
        let total = matching.len() as i64;
        let body: Vec<&serde_json::Value> = matching
            .into_iter()
            .filter(|p| key.after_id.is_none_or(|a| p["id"].as_i64() > Some(a)))
            .skip(usize::try_from(key.offset).unwrap_or(usize::MAX))
            .take(usize::try_from(key.limit).unwrap_or(0))
            .collect();
        let last_id = body.last().and_then(|p| p["id"].as_i64());
        let len = body.len();
        let body = serde_json::to_vec(&body).expect("JSON values serialise");
        Arc::new(Page::new(body, total, len, last_id))
    }
}

/// The database is up but saturated, and there is no earlier copy of the page.
#[derive(Debug, Clone, Copy)]
pub struct Busy;

pub struct Listing {
    db: Option<Db>,
    cache: PageCache,
    fallback: Fallback,
}

impl Listing {
    pub fn new(db: Option<Db>, cache: PageCache) -> Listing {
        Listing {
            db,
            cache,
            fallback: Fallback::load(),
        }
    }

    /// The page for `key` if it can be answered without waiting: a live cached page, or the
    /// embedded data when no database is configured. None means [`Listing::page`] has work to do.
    pub async fn ready(&self, key: &PageKey) -> Option<(Arc<Page>, Source)> {
        match &self.db {
            None => Some((self.fallback.page(key), Source::Fallback)),
            Some(_) => self.cache.get(key).await.map(|p| (p, Source::Database)),
        }
    }

    /// Forgets cached pages after a write.
    pub fn invalidate(&self) {
        self.cache.invalidate();
    }

    /// The page for `key` and where it came from, or [`Busy`] when the database is up but had
    /// no free connection in time and there is no earlier copy of the page to give instead.
    pub async fn page(&self, key: &PageKey) -> Result<(Arc<Page>, Source), Busy> {
        let Some(db) = &self.db else {
            return Ok((self.fallback.page(key), Source::Fallback));
        };
        if let Some(page) = self.cache.get(key).await {
            return Ok((page, Source::Database));
        }
        // While the database is known to be down, don't make every request wait out a
        // checkout timeout: the background probe will notice when it is back.
        let mut busy = false;
        if db.is_available() {
            match self
                .cache
                .get_or_load(key.clone(), self.load(db, key))
                .await
            {
                Ok(page) => return Ok((page, Source::Database)),
                Err(e) => {
                    busy = e.is_busy();
                    tracing::warn!(error = %e, "listing from the database failed");
                }
            }
        }
        match self.cache.stale(key).await {
            Some(page) => Ok((page, Source::Stale)),
            // Saturated is not down: the embedded photographs would be the wrong answer.
            None if busy => Err(Busy),
            None => Ok((self.fallback.page(key), Source::Fallback)),
        }
    }

    async fn load(&self, db: &Db, key: &PageKey) -> Result<Arc<Page>, db::DbError> {
        let category = key.category.clone();
        let total = {
            let category = category.clone();
            self.cache
                .total(
                    category.clone(),
                    db.run(move |c| db::count(c, category.as_ref().map(|c| c.as_str()))),
                )
                .await
                .map_err(db::DbError::Shared)?
        };
        let key = key.clone();
        let photos = db.run(move |c| db::fetch_page(c, &key)).await?;
        let body = serde_json::to_vec(&photos).expect("photos serialise");
        let last_id = photos.last().map(|p| i64::from(p.id));
        Ok(Arc::new(Page::new(body, total, photos.len(), last_id)))
    }
}
