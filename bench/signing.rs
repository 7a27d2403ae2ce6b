//! Private mode's signing alone, for `bench/run.sh` (scenario 10): what it costs to sign a page
//! of 100 photos (300 URLs: each photo and its two variants) before it is sent.
//!
//!     cargo run --release --example signing -- RUNS
//!
//! Prints `key=value` lines, the median of RUNS runs each: the store's own signing of the 300
//! URLs (`*_sign_us`), and the whole page as the listing makes it, rows signed and serialised
//! (`*_page_us`), for the S3 backend (SigV4 query signing, computed locally) and the local one
//! (HMAC-SHA256). Supabase signs with one request per page, so its cost is that round trip.

use std::{sync::Arc, time::Duration, time::Instant};

use portfolio_server::{
    config::Secret,
    model::{Photo, Shape},
    read::signed::Signer,
    storage::{
        ObjectStore,
        local::LocalStore,
        s3::{S3Config, S3Store},
        signing::UrlKey,
    },
};

const PHOTOS: usize = 100;
const LIFETIME: Duration = Duration::from_secs(3600);

fn page(store: &dyn ObjectStore) -> Vec<Photo> {
    (1..=PHOTOS)
        .map(|i| {
            let name = format!("photo-{i:03}.jpg");
            Photo {
                id: i as i32,
                filename: name.clone(),
                url: store.public_url(&name),
                category: "nature".into(),
                width: 2560,
                height: 1707,
                thumbnail_url: Some(store.public_url(&format!("thumb--{name}"))),
                medium_url: Some(store.public_url(&format!("medium--{name}"))),
                placeholder: None,
                color: Some("#808080".into()),
            }
        })
        .collect()
}

fn median_us(runs: usize, mut f: impl FnMut()) -> f64 {
    f(); // warm-up
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn measure(name: &str, store: Arc<dyn ObjectStore>, runs: usize) {
    let rows = page(&*store);
    let keys: Vec<String> = rows
        .iter()
        .flat_map(|p| {
            [
                p.filename.clone(),
                format!("thumb--{}", p.filename),
                format!("medium--{}", p.filename),
            ]
        })
        .collect();
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let sign = median_us(runs, || {
        let urls = store.signed_urls(&refs, LIFETIME).unwrap();
        assert_eq!(urls.len(), 3 * PHOTOS);
    });
    let signer = Signer::new(store.clone(), LIFETIME);
    let mut bytes = 0;
    let whole = median_us(runs, || {
        let signed = signer.sign(&rows).unwrap();
        bytes = Shape::Records.body(&signed).len();
    });
    println!("{name}_sign_us={sign:.0} {name}_page_us={whole:.0} {name}_page_bytes={bytes}");
}

fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .map_or(200, |r| r.parse().expect("RUNS is a number"));
    println!("photos={PHOTOS} urls={} runs={runs}", 3 * PHOTOS);
    let secret = Secret::new("bench-secret-key");
    let s3 = S3Store::new(&S3Config {
        endpoint: "https://s3.eu-west-1.amazonaws.com",
        path_style: false,
        bucket: "portfolio-photos",
        region: "eu-west-1",
        access_key_id: "AKIDEXAMPLE",
        secret_access_key: &secret,
        session_token: None,
        public_url: None,
        timeout: Duration::from_secs(5),
    })
    .unwrap();
    measure("s3", Arc::new(s3), runs);
    let local = LocalStore::new(std::path::Path::new("/tmp"), "https://photos.example/media")
        .signing_with(Arc::new(UrlKey::new(b"bench signing key of 32 bytes..")));
    measure("local", Arc::new(local), runs);
}
