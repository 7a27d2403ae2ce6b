//! `GET` and `POST /api/photos`, the second system's routes (src/http/api/links.rs), on the
//! table `/api/images` lists.

use poem::http::StatusCode;

use crate::helpers::*;

/// The `(id, photo_url)` pairs of an `/api/photos` body, checking each item has exactly those
/// two fields.
fn links(r: &Reply) -> Vec<(i64, String)> {
    r.json()
        .as_array()
        .expect("an array")
        .iter()
        .map(|item| {
            let fields = item.as_object().unwrap();
            assert_eq!(fields.len(), 2, "{item}");
            (
                item["id"].as_i64().unwrap(),
                item["photo_url"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The `(id, url)` pairs of an `/api/images` body.
fn ids_and_urls(r: &Reply) -> Vec<(i64, String)> {
    r.json()
        .as_array()
        .expect("an array")
        .iter()
        .map(|p| (p["id"].as_i64().unwrap(), p["url"].as_str().unwrap().into()))
        .collect()
}

#[tokio::test]
async fn the_listing_is_ids_and_urls_of_the_same_rows_in_the_same_pages() {
    let db = TestDb::new();
    let app = TestApp::with_db(&db).await;
    db.seed(25);
    for query in [
        "",
        "limit=7&offset=3",
        "after_id=20&limit=10",
        "category=city&limit=4",
    ] {
        let images = app.get(&format!("/api/images?{query}")).await;
        let photos = app.get(&format!("/api/photos?{query}")).await;
        assert_eq!(photos.status, StatusCode::OK, "{query}");
        let expected = ids_and_urls(&images);
        assert!(!expected.is_empty(), "{query}");
        assert_eq!(links(&photos), expected, "{query}");
        assert_eq!(
            photos.header("x-total-count"),
            images.header("x-total-count"),
            "{query}"
        );
        assert_ne!(photos.header("etag"), images.header("etag"));
    }
    // The next page is this route's.
    let first = app.get("/api/photos?limit=10").await;
    assert_eq!(
        first.header("link"),
        Some("</api/photos?limit=10&offset=10>; rel=\"next\"")
    );
    let keyset = app.get("/api/photos?after_id=0&limit=10").await;
    assert_eq!(
        keyset.header("link"),
        Some("</api/photos?after_id=10&limit=10>; rel=\"next\"")
    );
    // Cached like the listing, and revalidated the same way.
    let again = app
        .request(
            "/api/photos?limit=10",
            &[("if-none-match", first.header("etag").unwrap())],
        )
        .await;
    assert_eq!(again.status, StatusCode::NOT_MODIFIED);
    // The listing's rules, the listing's errors.
    let bad = app.get("/api/photos?limit=101").await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(bad.json()["detail"].as_str().unwrap().contains("limit"));
}

#[tokio::test]
async fn without_the_database_the_listing_keeps_its_shape() {
    let app = TestApp::spawn(settings(None)).await;
    let r = app.get("/api/photos?limit=5").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("x-data-source"), Some("fallback"));
    let embedded = app.get("/api/images?limit=5").await;
    let expected = ids_and_urls(&embedded);
    assert_eq!(links(&r), expected);
    assert_eq!(expected.len(), 5);
}

#[tokio::test]
async fn an_upload_is_stored_under_a_new_uuid_name_each_time() {
    let db = TestDb::new();
    let media = scratch_dir("media");
    let app = TestApp::spawn(upload_settings(Some(&db.url), &media)).await;
    let mut keys = Vec::new();
    for _ in 0..2 {
        let form = Form::new().file("photo", "Beach Day.jpg", jpeg(64, 48, None));
        let r = app.post_form("/api/photos", &form, Some(API_KEY)).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
        let body = r.json();
        assert_eq!(body.as_object().unwrap().len(), 2, "{body}");
        let id = body["id"].as_i64().unwrap();
        let url = body["photo_url"].as_str().unwrap();
        let key = url.strip_prefix("http://media.test/media/").unwrap();
        let (uuid, rest) = key.split_at(36);
        assert_eq!(uuid::Uuid::parse_str(uuid).unwrap().get_version_num(), 4);
        assert_eq!(rest, "-beach-day.jpg");
        // The row is the same photo, as /api/images and /api/photos list it.
        let rows = db.rows(&format!(
            "SELECT filename, url FROM photographs WHERE id = {id}"
        ));
        assert_eq!(
            rows,
            vec![vec![Some(key.to_string()), Some(url.to_string())]]
        );
        let listed = app.get("/api/photos").await;
        assert!(links(&listed).contains(&(id, url.to_string())));
        keys.push(key.to_string());
    }
    assert_ne!(keys[0], keys[1]);
    let names: Vec<&str> = keys.iter().map(String::as_str).collect();
    assert_eq!(files_in(&media), objects_of("", &names));
}

#[tokio::test]
async fn a_bad_upload_is_photo_upload_failed_with_the_reason_and_stores_nothing() {
    let db = TestDb::new();
    let media = scratch_dir("media");
    let mut s = upload_settings(Some(&db.url), &media);
    s.upload.max_file_bytes = 50_000;
    let app = TestApp::spawn(s).await;
    let big = {
        // Noise does not compress: well over 50 kB.
        let img = image::RgbImage::from_fn(400, 400, |x, y| {
            image::Rgb([
                (x * 7919 % 251) as u8,
                (y * 104_729 % 241) as u8,
                ((x ^ y) % 255) as u8,
            ])
        });
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
        out.into_inner()
    };
    assert!(big.len() > 50_000);
    let cases = [
        (
            Form::new().file("photo", "notes.txt", b"text".to_vec()),
            "Only .jpg/.jpeg files are accepted",
        ),
        (
            Form::new().file("photo", "fake.jpg", png(10, 10)),
            "Only .jpg/.jpeg files are accepted",
        ),
        (Form::new().file("photo", "big.jpg", big), "50000"),
        (
            Form::new().file("file", "wrong-field.jpg", jpeg(10, 10, None)),
            "Field required: photo",
        ),
        (
            Form::new().file("photo", "a.jpg", jpeg(10, 10, None)).file(
                "photo",
                "b.jpg",
                jpeg(10, 10, None),
            ),
            "Send one `photo` field",
        ),
        (Form::new().text("photo", "not a file"), "not a file"),
    ];
    for (form, reason) in cases {
        let r = app.post_form("/api/photos", &form, Some(API_KEY)).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{reason}: {}", r.text());
        let body = r.json();
        assert_eq!(body["detail"], "Photo upload failed", "{body}");
        assert!(
            body["reason"].as_str().unwrap().contains(reason),
            "{reason}: {body}"
        );
    }
    assert!(db.rows("SELECT id FROM photographs").is_empty());
    assert!(
        files_in(&media).is_empty(),
        "left behind: {:?}",
        files_in(&media)
    );

    // The key's answers are the admin routes' own.
    let form = Form::new().file("photo", "a.jpg", jpeg(10, 10, None));
    let r = app.post_form("/api/photos", &form, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.json()["detail"], "Invalid or missing API key");
    let no_key = TestApp::with_db(&db).await;
    let r = no_key.post_form("/api/photos", &form, Some(API_KEY)).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
}
