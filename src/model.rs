//! The domain's values, each with the one `parse` that holds its rule: a photo's record, its file
//! name, its category, and the key of a listing page. Nothing here does I/O or knows HTTP.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// One row of `photographs`, in the contract's field order. These six fields never change name
/// or type; new fields may be added after them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, poem_openapi::Object)]
pub struct Photo {
    pub id: i32,
    pub filename: String,
    pub url: String,
    pub category: String,
    pub width: i32,
    pub height: i32,
    /// The `thumb` variant (about 400 px), null until one is made.
    #[serde(default)]
    #[oai(nullable)]
    pub thumbnail_url: Option<String>,
    /// The `medium` variant (about 1200 px), null until one is made.
    #[serde(default)]
    #[oai(nullable)]
    pub medium_url: Option<String>,
    /// A ThumbHash of the photo, base64: decode it (the `thumbhash` npm package) into a blurred
    /// preview to paint before the image arrives. Null until made.
    #[serde(default)]
    #[oai(nullable)]
    pub placeholder: Option<String>,
    /// The photo's average colour, `#rrggbb`, null until made.
    #[serde(default)]
    #[oai(nullable)]
    pub color: Option<String>,
}

/// Why a name or a category was refused. The message is for the uploader.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("Only .jpg/.jpeg files are accepted")]
    NotJpeg,
    #[error("Invalid file name: {0}")]
    Name(String),
    #[error("Invalid category: {0}")]
    Category(String),
}

// ---------------------------------------------------------------------------------------------
// File names

/// A stored photo's name, which is also its object key: a safe, lower-case ASCII base name
/// ending in `.jpg` or `.jpeg`, at most [`FileName::MAX_LEN`] bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FileName(String);

impl FileName {
    /// Longest stored file name, in bytes (the column is VARCHAR(255); keep room to spare).
    pub const MAX_LEN: usize = 200;

    /// Reduces an uploaded file name to a safe object key: the base name only (any client path
    /// is dropped); letters transliterated to ASCII (`café` is `cafe`, `Ærø` is `aero`, by the
    /// `deunicode` crate) and lower-cased; any other character but `a-z 0-9 . _ -` becomes `-`.
    /// Control characters, `..` and names that end up empty are refused; the extension must be
    /// `.jpg` or `.jpeg`.
    pub fn parse(raw: &str) -> Result<FileName, Invalid> {
        if raw.chars().any(char::is_control) {
            return Err(Invalid::Name("contains control characters".into()));
        }
        let base = raw.rsplit(['/', '\\']).next().unwrap_or("").trim();
        if base.is_empty() || base == "." || base == ".." {
            return Err(Invalid::Name("no file name".into()));
        }
        let lower = base.to_lowercase();
        if !(lower.ends_with(".jpg") || lower.ends_with(".jpeg")) {
            return Err(Invalid::NotJpeg);
        }
        // "[?]"-free: a character with no transliteration becomes a separator.
        let ascii = deunicode::deunicode_with_tofu(base, "-").to_ascii_lowercase();
        let mut name = String::with_capacity(ascii.len());
        for c in ascii.chars() {
            let c = if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            };
            // Collapse runs of separators so "a  b" and "a..b" stay readable and `..` cannot
            // appear.
            if matches!(c, '-' | '.') && name.ends_with(c) {
                continue;
            }
            name.push(c);
        }
        let name = name.trim_start_matches(['.', '-']).to_string();
        let (stem, ext) = name.rsplit_once('.').unwrap_or(("", ""));
        if stem.trim_matches(['-', '_', '.']).is_empty() || !matches!(ext, "jpg" | "jpeg") {
            return Err(Invalid::Name(format!(
                "`{raw}` has no usable name before the extension"
            )));
        }
        if name.len() > Self::MAX_LEN {
            let keep = Self::MAX_LEN - ext.len() - 1;
            return Ok(FileName(format!("{}.{ext}", &stem[..keep])));
        }
        Ok(FileName(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for FileName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

// ---------------------------------------------------------------------------------------------
// Categories

/// A category: trimmed, inner whitespace collapsed to single spaces, lower-cased, 1 to
/// [`Category::MAX_CHARS`] characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Category(Arc<str>);

impl Category {
    pub const MAX_CHARS: usize = 50;
    /// What an upload without a `category` field gets, as the original did.
    pub const DEFAULT: &'static str = "nature";
    /// The rule [`Category::parse`] applies, as the regular expression the OpenAPI document
    /// gives with `maxLength` 50: no control character, and something besides whitespace.
    /// Written with explicit ranges (the control characters, and Rust's `char::is_whitespace`
    /// set) so that every engine reads it alike: ECMAScript, Python's `re` (schemathesis),
    /// Rust's `regex`.
    pub const PATTERN: &'static str = "^[^\\x00-\\x1f\\x7f-\\x9f]*[^\\x00-\\x20\\x7f-\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000][^\\x00-\\x1f\\x7f-\\x9f]*$";

    /// Normalises `raw` and checks it against `allowed` when that list is not empty (compared
    /// case-insensitively). `raw` itself is at most [`Category::MAX_CHARS`] characters, as the
    /// original's `VARCHAR(50)` column held it; what is stored is never longer.
    pub fn parse(raw: &str, allowed: &[String]) -> Result<Category, Invalid> {
        if raw.chars().any(char::is_control) {
            return Err(Invalid::Category("contains control characters".into()));
        }
        let len = raw.chars().count();
        if len > Self::MAX_CHARS {
            return Err(Invalid::Category(format!(
                "must be 1 to {} characters, got {len}",
                Self::MAX_CHARS
            )));
        }
        let category: String = raw
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .chars()
            .map(lower_one)
            .collect();
        if category.is_empty() {
            return Err(Invalid::Category(
                "must have a character other than whitespace".into(),
            ));
        }
        if !allowed.is_empty() && !allowed.iter().any(|a| a.eq_ignore_ascii_case(&category)) {
            return Err(Invalid::Category(format!(
                "`{category}` is not one of: {}",
                allowed.join(", ")
            )));
        }
        Ok(Category(category.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `c` lower-cased, when that is one character: `İ` (whose lower case is two) stays as it is,
/// so a category is never longer than what was sent.
fn lower_one(c: char) -> char {
    let mut lower = c.to_lowercase();
    match (lower.next(), lower.next()) {
        (Some(l), None) => l,
        _ => c,
    }
}

// ---------------------------------------------------------------------------------------------
// Listing pages

/// What identifies a page of the listing.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PageKey {
    pub limit: i64,
    pub offset: i64,
    /// Keyset pagination: only rows with a larger id.
    pub after_id: Option<i64>,
    /// Only this category.
    pub category: Option<Category>,
    /// Which route's JSON the page is.
    pub shape: Shape,
}

/// The JSON a listing page is written in: one table, two routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Shape {
    /// `GET /api/images`, the original's: every field of [`Photo`].
    #[default]
    Records,
    /// `GET /api/photos`, the second system's: [`PhotoLink`]s.
    Links,
}

/// A photo as the second system's `/api/photos` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, poem_openapi::Object)]
pub struct PhotoLink {
    pub id: i32,
    /// Where the photo can be read.
    pub photo_url: String,
}

impl From<&Photo> for PhotoLink {
    fn from(p: &Photo) -> PhotoLink {
        PhotoLink {
            id: p.id,
            photo_url: p.url.clone(),
        }
    }
}

impl Shape {
    /// The route that lists pages of this shape.
    pub fn path(self) -> &'static str {
        match self {
            Shape::Records => "/api/images",
            Shape::Links => "/api/photos",
        }
    }

    /// The JSON array of `photos` in this shape.
    pub fn body<'a>(self, photos: impl IntoIterator<Item = &'a Photo>) -> Vec<u8> {
        let photos = photos.into_iter();
        match self {
            Shape::Records => serde_json::to_vec(&photos.collect::<Vec<_>>()),
            Shape::Links => serde_json::to_vec(&photos.map(PhotoLink::from).collect::<Vec<_>>()),
        }
        .expect("photos serialise")
    }
}

/// A listing query that breaks a rule; the message names the parameter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidQuery(pub String);

impl PageKey {
    pub const DEFAULT_LIMIT: i64 = 10;
    pub const MAX_LIMIT: i64 = 100;

    /// The page `limit`/`offset` (or `limit`/`after_id`) of one category or all: every rule of
    /// the listing's parameters, for every path that parses them.
    pub fn parse(
        limit: Option<i64>,
        offset: Option<i64>,
        after_id: Option<i64>,
        category: Option<&str>,
    ) -> Result<PageKey, InvalidQuery> {
        let limit = limit.unwrap_or(Self::DEFAULT_LIMIT);
        if !(1..=Self::MAX_LIMIT).contains(&limit) {
            return Err(InvalidQuery(format!(
                "parameter `limit`: must be 1 to {}, got {limit}",
                Self::MAX_LIMIT
            )));
        }
        if offset.is_some_and(|o| o < 0) {
            return Err(InvalidQuery("parameter `offset`: must be 0 or more".into()));
        }
        if after_id.is_some_and(|a| a < 0) {
            return Err(InvalidQuery(
                "parameter `after_id`: must be 0 or more".into(),
            ));
        }
        let category = match category {
            None => None,
            Some(c) => Some(
                Category::parse(c, &[])
                    .map_err(|e| InvalidQuery(format!("parameter `category`: {e}")))?,
            ),
        };
        Ok(PageKey {
            limit,
            offset: offset.unwrap_or(0),
            after_id,
            category,
            shape: Shape::Records,
        })
    }

    /// `limit`/`offset` of every category.
    pub fn offset(limit: i64, offset: i64) -> PageKey {
        PageKey {
            limit,
            offset,
            after_id: None,
            category: None,
            shape: Shape::Records,
        }
    }

    /// The same page in `shape`.
    pub fn in_shape(self, shape: Shape) -> PageKey {
        PageKey { shape, ..self }
    }

    /// The `Link` header value for the page after this one, which held `len` photographs ending
    /// at `last_id`; None when this page is the last (shorter than `limit`, or empty).
    pub fn next_link(&self, len: usize, last_id: Option<i64>) -> Option<String> {
        if len == 0 || len < usize::try_from(self.limit).unwrap_or(usize::MAX) {
            return None;
        }
        let mut url = match self.after_id {
            Some(_) => format!(
                "{}?after_id={}&limit={}",
                self.shape.path(),
                last_id?,
                self.limit
            ),
            None => format!(
                "{}?limit={}&offset={}",
                self.shape.path(),
                self.limit,
                self.offset + len as i64
            ),
        };
        if let Some(c) = &self.category {
            url.push_str("&category=");
            url.extend(percent_encoding::utf8_percent_encode(
                c.as_str(),
                percent_encoding::NON_ALPHANUMERIC,
            ));
        }
        Some(format!("<{url}>; rel=\"next\""))
    }
}

/// A strong `ETag` for `body`: 128 bits of its SHA-256, quoted.
pub fn etag_of(body: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(body);
    format!("\"{}\"", hex(&digest[..16]))
}

/// Lower-case hexadecimal.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// One row's count of a category.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, poem_openapi::Object)]
pub struct CategoryCount {
    pub category: String,
    pub count: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_reduced_to_safe_base_names() {
        let ok = |raw: &str, want: &str| {
            assert_eq!(
                FileName::parse(raw).as_ref().map(FileName::as_str),
                Ok(want),
                "{raw}"
            )
        };
        ok("Sunset.JPG", "sunset.jpg");
        ok("../../etc/passwd.jpg", "passwd.jpg");
        ok("C:\\Users\\me\\IMG 001.jpeg", "img-001.jpeg");
        ok("...hidden.jpg", "hidden.jpg");
        ok("a..b.jpg", "a.b.jpg");
        ok("a--b.jpg", "a-b.jpg");
        ok("-lead.jpg", "lead.jpg");
        ok("café  au lait.jpg", "cafe-au-lait.jpg");
        ok("Ærøskøbing Straße.jpg", "aeroskobing-strasse.jpg");
        ok("x.jpg", "x.jpg");
        ok("under_score.jpg", "under_score.jpg");
        let long = format!("{}.jpg", "x".repeat(300));
        let cut = FileName::parse(&long).unwrap();
        assert_eq!(cut.as_str().len(), FileName::MAX_LEN);
        assert!(cut.as_str().ends_with(".jpg"));
        let exact = format!("{}.jpg", "y".repeat(FileName::MAX_LEN - 4));
        assert_eq!(
            FileName::parse(&exact).unwrap().as_str(),
            exact,
            "at the limit: kept"
        );

        let bad = |raw: &str| {
            assert!(
                matches!(FileName::parse(raw), Err(Invalid::Name(_))),
                "{raw:?}"
            );
        };
        bad("bad\u{0}.jpg");
        bad("line\nbreak.jpg");
        bad("../");
        bad("..");
        bad(".");
        bad("");
        bad(".jpg");
        bad("---.jpg");
        bad("_.jpg");
        assert_eq!(FileName::parse("photo.png"), Err(Invalid::NotJpeg));
        assert_eq!(FileName::parse("photo.jpg.exe"), Err(Invalid::NotJpeg));
    }

    #[test]
    fn letters_are_transliterated_not_replaced() {
        // Each of these used to be `caf-.jpg`, one name for different words.
        let names: Vec<_> = ["café.jpg", "cafñ.jpg", "cafß.jpg", "caf€.jpg"]
            .iter()
            .map(|n| FileName::parse(n).unwrap().to_string())
            .collect();
        assert_eq!(names, ["cafe.jpg", "cafn.jpg", "cafss.jpg", "cafeur.jpg"]);
        // Accents alone do not tell photos apart: `café` and `cafè` are one name, as a person
        // reads them (the second upload is a 409, not a second `caf-.jpg`).
        assert_eq!(FileName::parse("cafè.jpg").unwrap().as_str(), "cafe.jpg");
        // No transliteration at all: a separator, never "[?]".
        assert_eq!(
            FileName::parse("a\u{10FFFD}b.jpg").unwrap().as_str(),
            "a-b.jpg"
        );
    }

    #[test]
    fn categories_are_normalised_and_checked() {
        let c = |raw: &str| Category::parse(raw, &[]).map(|c| c.as_str().to_string());
        assert_eq!(c("  Street   Photo ").unwrap(), "street photo");
        assert!(c("").is_err());
        assert!(c("   ").is_err());
        assert!(c(&"x".repeat(51)).is_err());
        assert!(c(&"x".repeat(50)).is_ok());
        assert!(c(&"é".repeat(50)).is_ok(), "characters, not bytes");
        assert!(c("x").is_ok());
        assert!(c("a\tb\u{7}").is_err());
        // The raw text counts, as the original's column did: padding is part of it.
        assert!(c(&format!(" {} ", "x".repeat(49))).is_err());
        assert_eq!(c(&format!("{} ", "x".repeat(49))).unwrap(), "x".repeat(49));
        assert!(c("\u{3000}\u{2028}").is_err(), "whitespace only");
        assert_eq!(c("İSTANBUL").unwrap(), "İstanbul", "never longer than sent");
        assert_eq!(c(&"İ".repeat(50)).unwrap().chars().count(), 50);
        let allowed = vec!["nature".to_string(), "city".to_string()];
        assert_eq!(
            Category::parse("Nature", &allowed).unwrap().as_str(),
            "nature"
        );
        assert!(Category::parse("food", &allowed).is_err());
    }

    /// The pattern the OpenAPI document gives (with `maxLength` 50) accepts exactly what
    /// `Category::parse` accepts: every character up to U+3100 and a sample above, alone,
    /// inside text and around it, and at the length limit.
    #[test]
    fn the_documented_category_pattern_is_the_rule() {
        let pattern = regex::Regex::new(Category::PATTERN).unwrap();
        let documented = |s: &str| pattern.is_match(s) && s.chars().count() <= Category::MAX_CHARS;
        let chars = (0..=0x3100u32)
            .chain([0xFEFF, 0x1F600, 0x10FFFD])
            .filter_map(char::from_u32);
        let mut checked = 0;
        for c in chars {
            for s in [
                c.to_string(),
                format!("a{c}b"),
                format!("{c}x"),
                format!("{c}{c}"),
                format!("{}{c}", "y".repeat(49)),
                format!("{}{c}", "y".repeat(50)),
            ] {
                assert_eq!(
                    documented(&s),
                    Category::parse(&s, &[]).is_ok(),
                    "{:?} (U+{:04X})",
                    s,
                    c as u32
                );
                checked += 1;
            }
        }
        assert!(checked > 70_000);
    }

    #[test]
    fn page_keys_hold_every_rule_of_the_listing() {
        let k = PageKey::parse(None, None, None, None).unwrap();
        assert_eq!(k, PageKey::offset(10, 0));
        assert!(PageKey::parse(Some(1), Some(0), None, None).is_ok());
        assert!(PageKey::parse(Some(100), None, Some(0), None).is_ok());
        for bad in [0, -1, 101] {
            let e = PageKey::parse(Some(bad), None, None, None).unwrap_err();
            assert!(e.0.contains("limit"), "{e}");
        }
        assert!(
            PageKey::parse(None, Some(-1), None, None)
                .unwrap_err()
                .0
                .contains("offset")
        );
        assert!(
            PageKey::parse(None, None, Some(-1), None)
                .unwrap_err()
                .0
                .contains("after_id")
        );
        // Both: `offset` rows skipped after `after_id`.
        let k = PageKey::parse(None, Some(3), Some(7), None).unwrap();
        assert_eq!((k.offset, k.after_id), (3, Some(7)));
        let e = PageKey::parse(None, None, None, Some(" ")).unwrap_err();
        assert!(e.0.contains("category"), "{e}");
        let k = PageKey::parse(Some(5), None, Some(7), Some("City")).unwrap();
        assert_eq!((k.limit, k.offset, k.after_id), (5, 0, Some(7)));
        assert_eq!(k.category.unwrap().as_str(), "city");
    }

    #[test]
    fn the_next_link_follows_the_form_of_the_page() {
        let k = PageKey::offset(2, 4);
        assert_eq!(
            k.next_link(2, Some(9)).as_deref(),
            Some("</api/images?limit=2&offset=6>; rel=\"next\"")
        );
        assert_eq!(k.next_link(1, Some(9)), None, "a short page is the last");
        assert_eq!(k.next_link(0, None), None);
        let k = PageKey::parse(Some(2), None, Some(3), Some("street photo")).unwrap();
        assert_eq!(
            k.next_link(2, Some(11)).as_deref(),
            Some("</api/images?after_id=11&limit=2&category=street%20photo>; rel=\"next\"")
        );
    }

    #[test]
    fn etags_are_quoted_hashes() {
        let t = etag_of(b"[]");
        assert_eq!(t.len(), 34);
        assert!(t.starts_with('"') && t.ends_with('"'));
        assert_ne!(t, etag_of(b"[1]"));
        assert_eq!(hex(&[0, 15, 255]), "000fff");
    }
}
