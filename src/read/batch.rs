//! Plain listing pages that wait for a database connection at the same time share one round trip.
//!
//! An uncached page costs one round trip to the database, and a connection is held for all of
//! it. With the database 20 ms away each way, 16 connections answer at most 16 / 40 ms = 400
//! pages a second however many requests wait (measured: 364). So a request does not ask for its
//! own page: it writes its page down here, then queues for a connection like any other work.
//! Whoever gets a connection first fetches every page written down by then (up to
//! [`MOST_PAGES`]) in one statement (`sql/queries/pages.sql`) and hands each request its rows;
//! a request whose page was fetched by another finds nothing to do when its turn comes and
//! gives its connection straight back. Alone, a page is fetched with the usual statement
//! (`page.sql`), so nothing changes for an idle server.
//!
//! Only plain pages (`limit`/`offset`) ride together; keyset and category pages keep their own
//! statement, which is planned with their actual values so that it uses the indexes.

use std::sync::{Arc, Mutex};

use prometheus::IntCounter;
use tokio::sync::oneshot;

use crate::{
    db::{Db, DbError, PgConn, queries},
    model::{PageKey, Photo},
};

/// Most pages fetched by one statement.
pub const MOST_PAGES: usize = 32;

type Answer = Result<Vec<Photo>, DbError>;

/// The pages written down and not yet fetched.
pub struct PageBatcher {
    waiting: Mutex<Vec<Waiting>>,
    /// `listing_pages_shared_total`.
    shared: IntCounter,
}

struct Waiting {
    limit: i64,
    offset: i64,
    answer: oneshot::Sender<Answer>,
}

impl PageBatcher {
    pub fn new(shared: IntCounter) -> PageBatcher {
        PageBatcher {
            waiting: Mutex::new(Vec::new()),
            shared,
        }
    }

    /// The rows of the page `key`, fetched with whatever other plain pages are waiting.
    pub async fn fetch(self: &Arc<Self>, db: &Db, key: &PageKey) -> Answer {
        if key.after_id.is_some() || key.category.is_some() {
            let key = key.clone();
            return db.run(move |c| queries::fetch_page(c, &key)).await;
        }
        let (answer, mine) = oneshot::channel();
        self.lock().push(Waiting {
            limit: key.limit,
            offset: key.offset,
            answer,
        });
        let batcher = self.clone();
        let ran = db.run(move |c| batcher.fetch_waiting(c)).await;
        let mut mine = mine;
        match (ran, mine.try_recv()) {
            (_, Ok(answer)) => answer,
            // Fetched by someone else, who is still at it.
            (Ok(()), Err(oneshot::error::TryRecvError::Empty)) => mine
                .await
                .unwrap_or_else(|_| Err(gone("the batch fetching this page ended without it"))),
            (Ok(()), Err(oneshot::error::TryRecvError::Closed)) => {
                Err(gone("the batch fetching this page ended without it"))
            }
            // No connection for us (busy, unreachable): our page is still written down, unless
            // it was taken meanwhile; no one is left to answer to, so it is crossed out.
            (Err(e), Err(_)) => {
                drop(mine);
                self.lock().retain(|w| !w.answer.is_closed());
                Err(e)
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Waiting>> {
        self.waiting.lock().expect("not poisoned")
    }

    /// On a connection: fetches the pages waiting (whose requests are still there) and answers
    /// them. A failure is every one's, and also the caller's, so that the pool sees it.
    fn fetch_waiting(&self, c: &mut PgConn) -> Result<(), DbError> {
        let batch: Vec<Waiting> = {
            let mut waiting = self.lock();
            waiting.retain(|w| !w.answer.is_closed());
            let n = waiting.len().min(MOST_PAGES);
            waiting.drain(..n).collect()
        };
        let fetched = match batch.as_slice() {
            [] => return Ok(()),
            [one] => {
                let key = PageKey::offset(one.limit, one.offset);
                queries::fetch_page(c, &key).map(|rows| vec![rows])
            }
            many => {
                let pages: Vec<(i64, i64)> = many.iter().map(|w| (w.limit, w.offset)).collect();
                self.shared.inc_by(pages.len() as u64);
                queries::fetch_pages(c, &pages)
            }
        };
        match fetched {
            Ok(pages) => {
                for (w, rows) in batch.into_iter().zip(pages) {
                    let _ = w.answer.send(Ok(rows)); // gone: nothing to do
                }
                Ok(())
            }
            Err(e) => {
                let shared = Arc::new(e);
                for w in batch {
                    let _ = w.answer.send(Err(DbError::Shared(shared.clone())));
                }
                Err(DbError::Shared(shared))
            }
        }
    }
}

fn gone(why: &str) -> DbError {
    DbError::Panicked(crate::blocking::Panicked(why.to_string()))
}
