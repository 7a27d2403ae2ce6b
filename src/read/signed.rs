//! Private mode (`storage.private`): every URL of this store that a listing page or a record
//! hands out is signed for `storage.signed_url_secs`, and no page is sent with signatures older
//! than a quarter of that.
//!
//! Pages are cached as the database gives them (their URLs unsigned), with their rows kept
//! beside the body. Each page carries its signed rendition and the moment it stops being sent;
//! past it, the next request signs the rows again (one call to the store for the whole page:
//! computed locally for S3 and `/media`, one request for Supabase) while the others wait for
//! it. The same holds for every source of a page: the cache, the last good copy and the table
//! copy served during an outage. The embedded photographs are not this store's and are sent
//! as they are. ETags are the signed bodies': they change with the signatures.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{
    blocking,
    model::{PageKey, Photo},
    read::cache::Page,
    storage::{ObjectStore, StorageError, key_of_url},
};

/// Signs the URLs of one store.
pub struct Signer {
    store: Arc<dyn ObjectStore>,
    lifetime: Duration,
}

impl Signer {
    pub fn new(store: Arc<dyn ObjectStore>, lifetime: Duration) -> Signer {
        Signer {
            store,
            lifetime: lifetime.max(Duration::from_secs(4)),
        }
    }

    /// How long a signed page is sent: a quarter of the URLs' lifetime, so every URL handed out
    /// has at least three quarters of it left.
    pub fn page_life(&self) -> Duration {
        self.lifetime / 4
    }

    /// `photos` with every URL that points into this store signed, in one call to the store.
    /// URLs elsewhere (the original's demo rows) are left as they are.
    pub fn sign(&self, photos: &[Photo]) -> Result<Vec<Photo>, StorageError> {
        let mut out = photos.to_vec();
        let mut keys = Vec::new();
        let mut slots = Vec::new();
        for (i, photo) in out.iter_mut().enumerate() {
            for field in 0..URLS {
                let url = url_of(photo, field).map(|u| key_of_url(&*self.store, u.as_str()));
                if let Some(Some(key)) = url {
                    keys.push(key);
                    slots.push((i, field));
                }
            }
        }
        if keys.is_empty() {
            return Ok(out);
        }
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let signed = self.store.signed_urls(&refs, self.lifetime)?;
        if signed.len() != keys.len() {
            return Err(StorageError::Unreadable(format!(
                "asked to sign {} URLs, got {}",
                keys.len(),
                signed.len()
            )));
        }
        for ((i, field), url) in slots.into_iter().zip(signed) {
            if let Some(slot) = url_of(&mut out[i], field) {
                *slot = url;
            }
        }
        Ok(out)
    }

    /// One record with its URLs signed.
    pub fn sign_one(&self, photo: Photo) -> Result<Photo, StorageError> {
        Ok(self.sign(std::slice::from_ref(&photo))?.remove(0))
    }
}

/// How many URLs a record has: the photo's and its two variants'.
const URLS: usize = 3;

/// A record's URL number `field` (0 the photo, 1 the thumbnail, 2 the medium size), if it has
/// one.
fn url_of(photo: &mut Photo, field: usize) -> Option<&mut String> {
    match field {
        0 => Some(&mut photo.url),
        1 => photo.thumbnail_url.as_mut(),
        _ => photo.medium_url.as_mut(),
    }
}

/// The page to send for `page` (of `key`): its signed rendition, signed again if it has
/// served its time. A page without rows (the embedded photographs) is sent as it is.
pub async fn signed_page(
    signer: &Arc<Signer>,
    key: &PageKey,
    page: Arc<Page>,
) -> Result<Arc<Page>, StorageError> {
    let Some(rows) = page.rows.clone() else {
        return Ok(page);
    };
    let mut rendition = page.signed.lock().await;
    if let Some((until, signed)) = &*rendition
        && Instant::now() < *until
    {
        return Ok(signed.clone());
    }
    let started = Instant::now();
    let signer2 = signer.clone();
    let photos = blocking::run(move || signer2.sign(&rows))
        .await
        .map_err(|e| StorageError::Unavailable(e.to_string()))??;
    let signed = Arc::new(Page::new(
        key.shape.body(&photos),
        page.total,
        page.len,
        page.last_id,
    ));
    *rendition = Some((started + signer.page_life(), signed.clone()));
    Ok(signed)
}

/// The signed rendition of `page` if it is ready now (the fast path never waits).
pub fn ready_signed(page: &Page) -> Option<Arc<Page>> {
    page.rows.as_ref()?;
    let rendition = page.signed.try_lock().ok()?;
    let (until, signed) = rendition.as_ref()?;
    (Instant::now() < *until).then(|| signed.clone())
}
