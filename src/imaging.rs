//! Pure, synchronous checks on an uploaded photo: is it a whole JPEG, how big is it as displayed,
//! and what may it be called. No I/O; callers run it on a blocking thread.

use std::io::Cursor;

use image::{ImageDecoder, ImageFormat, ImageReader, Limits, metadata::Orientation};

/// Why an upload was refused before anything was stored. The message is for the uploader.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("Only .jpg/.jpeg files are accepted")]
    NotJpeg,
    #[error("Unreadable image: {0}")]
    Unreadable(String),
    #[error("Image is {width}x{height}; the largest accepted side is {max} pixels")]
    TooManyPixels { width: u32, height: u32, max: u32 },
    #[error("Invalid file name: {0}")]
    BadName(String),
    #[error("Invalid category: {0}")]
    BadCategory(String),
}

/// The displayed size of a photo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dimensions {
    pub width: u32,
    pub height: u32,
}

/// Checks that `bytes` is a complete JPEG and returns its displayed dimensions (EXIF orientation
/// applied). Only headers are parsed: no pixels are decoded, so a huge header costs nothing.
pub fn inspect_jpeg(bytes: &[u8], max_side: u32) -> Result<Dimensions, Rejection> {
    if image::guess_format(bytes).ok() != Some(ImageFormat::Jpeg) {
        return Err(Rejection::NotJpeg);
    }
    check_complete(bytes)?;
    let mut reader = ImageReader::with_format(Cursor::new(bytes), ImageFormat::Jpeg);
    let mut limits = Limits::default();
    limits.max_image_width = Some(max_side);
    limits.max_image_height = Some(max_side);
    limits.max_alloc = Some(256 << 20);
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(|e| match e {
        image::ImageError::Limits(_) => stored_size(bytes).map_or_else(
            || Rejection::Unreadable("image dimensions exceed the limit".into()),
            |(width, height)| Rejection::TooManyPixels {
                width,
                height,
                max: max_side,
            },
        ),
        other => Rejection::Unreadable(other.to_string()),
    })?;
    let (width, height) = decoder.dimensions();
    if width == 0 || height == 0 {
        return Err(Rejection::Unreadable("image has no pixels".into()));
    }
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    Ok(match orientation {
        Orientation::Rotate90
        | Orientation::Rotate270
        | Orientation::Rotate90FlipH
        | Orientation::Rotate270FlipH => Dimensions {
            width: height,
            height: width,
        },
        _ => Dimensions { width, height },
    })
}

/// Walks the JPEG's marker segments to the first start-of-scan, then requires an end-of-image
/// marker after it. Entropy-coded data never contains `FF D9` (an `FF` there is always followed by
/// `00` or a restart marker), so a file cut off anywhere in its image data fails. Bytes after the
/// end marker (camera trailers) are allowed.
fn check_complete(bytes: &[u8]) -> Result<(), Rejection> {
    let truncated = || Rejection::Unreadable("the JPEG data is truncated or corrupt".into());
    let mut i = 2; // after SOI
    loop {
        // Skip fill bytes before a marker.
        while bytes.get(i) == Some(&0xFF) && bytes.get(i + 1) == Some(&0xFF) {
            i += 1;
        }
        let (Some(&0xFF), Some(&marker)) = (bytes.get(i), bytes.get(i + 1)) else {
            return Err(truncated());
        };
        match marker {
            0xD8 | 0x01 | 0xD0..=0xD7 => i += 2, // no length field
            0xD9 => return Err(truncated()),     // EOI before any scan
            _ => {
                let len = match (bytes.get(i + 2), bytes.get(i + 3)) {
                    (Some(&hi), Some(&lo)) => usize::from(hi) << 8 | usize::from(lo),
                    _ => return Err(truncated()),
                };
                if len < 2 {
                    return Err(truncated());
                }
                let next = i + 2 + len;
                if marker == 0xDA {
                    let scan = bytes.get(next..).ok_or_else(truncated)?;
                    return if scan.windows(2).any(|w| w == [0xFF, 0xD9]) {
                        Ok(())
                    } else {
                        Err(truncated())
                    };
                }
                i = next;
            }
        }
    }
}

/// The stored width and height from the first start-of-frame segment, for error messages.
fn stored_size(bytes: &[u8]) -> Option<(u32, u32)> {
    let mut i = 2;
    while i + 9 < bytes.len() {
        if bytes[i] != 0xFF {
            return None;
        }
        let marker = bytes[i + 1];
        let len = usize::from(bytes[i + 2]) << 8 | usize::from(bytes[i + 3]);
        if matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC) {
            let h = u32::from(bytes[i + 5]) << 8 | u32::from(bytes[i + 6]);
            let w = u32::from(bytes[i + 7]) << 8 | u32::from(bytes[i + 8]);
            return Some((w, h));
        }
        i += 2 + len;
    }
    None
}

/// Longest stored file name, in bytes (the column is VARCHAR(255); keep room to spare).
pub const MAX_NAME_LEN: usize = 200;

/// Reduces an uploaded file name to a safe object key: the base name only (any client path is
/// dropped), lower-cased, with characters other than `a-z 0-9 . _ -` replaced by `-`. Control
/// characters, `..` and names that end up empty are refused; the extension must be `.jpg` or
/// `.jpeg`.
pub fn safe_file_name(raw: &str) -> Result<String, Rejection> {
    if raw.chars().any(char::is_control) {
        return Err(Rejection::BadName("contains control characters".into()));
    }
    let base = raw.rsplit(['/', '\\']).next().unwrap_or("").trim();
    if base.is_empty() || base == "." || base == ".." {
        return Err(Rejection::BadName("no file name".into()));
    }
    let lower = base.to_lowercase();
    if !(lower.ends_with(".jpg") || lower.ends_with(".jpeg")) {
        return Err(Rejection::NotJpeg);
    }
    let mut name = String::with_capacity(lower.len());
    for c in lower.chars() {
        let c = if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
            c
        } else {
            '-'
        };
        // Collapse runs of separators so "a  b" and "a..b" stay readable and `..` cannot appear.
        if matches!(c, '-' | '.') && name.ends_with(c) {
            continue;
        }
        name.push(c);
    }
    let name = name.trim_start_matches(['.', '-']).to_string();
    let (stem, ext) = name.rsplit_once('.').unwrap_or(("", ""));
    if stem.trim_matches(['-', '_', '.']).is_empty() || !matches!(ext, "jpg" | "jpeg") {
        return Err(Rejection::BadName(format!(
            "`{raw}` has no usable name before the extension"
        )));
    }
    if name.len() > MAX_NAME_LEN {
        let keep = MAX_NAME_LEN - ext.len() - 1;
        return Ok(format!("{}.{ext}", &stem[..keep]));
    }
    Ok(name)
}

/// Normalises a category: trimmed, inner whitespace collapsed to single spaces, lower-cased,
/// 1 to 50 characters, and in `allowed` when an allow-list is configured.
pub fn normalise_category(raw: &str, allowed: &[String]) -> Result<String, Rejection> {
    if raw.chars().any(char::is_control) {
        return Err(Rejection::BadCategory("contains control characters".into()));
    }
    let category = raw
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase();
    let len = category.chars().count();
    if !(1..=50).contains(&len) {
        return Err(Rejection::BadCategory(format!(
            "must be 1 to 50 characters, got {len}"
        )));
    }
    if !allowed.is_empty() && !allowed.iter().any(|a| a.eq_ignore_ascii_case(&category)) {
        return Err(Rejection::BadCategory(format!(
            "`{category}` is not one of: {}",
            allowed.join(", ")
        )));
    }
    Ok(category)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageEncoder, RgbImage, codecs::jpeg::JpegEncoder};

    fn jpeg(w: u32, h: u32, exif: Option<Vec<u8>>) -> Vec<u8> {
        let img = RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 128]));
        let mut out = Vec::new();
        let mut enc = JpegEncoder::new_with_quality(&mut out, 80);
        if let Some(exif) = exif {
            enc.set_exif_metadata(exif).unwrap();
        }
        enc.write_image(&img, w, h, image::ExtendedColorType::Rgb8)
            .unwrap();
        out
    }

    /// A minimal little-endian TIFF block with one IFD entry: Orientation = `o`.
    pub fn exif_orientation(o: u16) -> Vec<u8> {
        let mut t = b"II*\0".to_vec();
        t.extend_from_slice(&8u32.to_le_bytes()); // IFD at offset 8
        t.extend_from_slice(&1u16.to_le_bytes()); // one entry
        t.extend_from_slice(&0x0112u16.to_le_bytes()); // tag: Orientation
        t.extend_from_slice(&3u16.to_le_bytes()); // type: SHORT
        t.extend_from_slice(&1u32.to_le_bytes()); // count
        t.extend_from_slice(&o.to_le_bytes());
        t.extend_from_slice(&[0, 0]); // value padding
        t.extend_from_slice(&0u32.to_le_bytes()); // no next IFD
        t
    }

    #[test]
    fn a_plain_jpeg_reports_its_size() {
        let d = inspect_jpeg(&jpeg(40, 30, None), 16_384).unwrap();
        assert_eq!((d.width, d.height), (40, 30));
    }

    #[test]
    fn exif_orientation_6_swaps_width_and_height() {
        let d = inspect_jpeg(&jpeg(40, 30, Some(exif_orientation(6))), 16_384).unwrap();
        assert_eq!((d.width, d.height), (30, 40));
        let d = inspect_jpeg(&jpeg(40, 30, Some(exif_orientation(3))), 16_384).unwrap();
        assert_eq!((d.width, d.height), (40, 30), "180° keeps the shape");
    }

    #[test]
    fn non_jpeg_content_is_refused() {
        let mut png = Vec::new();
        image::DynamicImage::ImageRgb8(RgbImage::new(4, 4))
            .write_to(&mut Cursor::new(&mut png), ImageFormat::Png)
            .unwrap();
        assert_eq!(inspect_jpeg(&png, 16_384), Err(Rejection::NotJpeg));
        assert_eq!(inspect_jpeg(b"hello", 16_384), Err(Rejection::NotJpeg));
        assert_eq!(inspect_jpeg(b"", 16_384), Err(Rejection::NotJpeg));
    }

    #[test]
    fn truncated_jpegs_are_refused_at_any_cut() {
        let full = jpeg(64, 48, Some(exif_orientation(1)));
        assert!(inspect_jpeg(&full, 16_384).is_ok());
        for cut in [3, 10, 40, full.len() / 3, full.len() / 2, full.len() - 2] {
            let r = inspect_jpeg(&full[..cut], 16_384);
            assert!(
                matches!(r, Err(Rejection::Unreadable(_))),
                "cut at {cut}: {r:?}"
            );
        }
        // Trailing bytes after the end marker are fine (camera trailers).
        let mut trailer = full.clone();
        trailer.extend_from_slice(b"TRAILER");
        assert!(inspect_jpeg(&trailer, 16_384).is_ok());
    }

    #[test]
    fn a_huge_header_is_refused_without_allocating() {
        let mut bytes = jpeg(16, 16, None);
        // Rewrite the SOF0 frame size to 60000x60000.
        let sof = bytes.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        bytes[sof + 5..sof + 9].copy_from_slice(&[0xEA, 0x60, 0xEA, 0x60]);
        let r = inspect_jpeg(&bytes, 16_384);
        assert_eq!(
            r,
            Err(Rejection::TooManyPixels {
                width: 60000,
                height: 60000,
                max: 16_384
            })
        );
    }

    #[test]
    fn file_names_are_reduced_to_safe_base_names() {
        let ok =
            |raw: &str, want: &str| assert_eq!(safe_file_name(raw).as_deref(), Ok(want), "{raw}");
        ok("Sunset.JPG", "sunset.jpg");
        ok("../../etc/passwd.jpg", "passwd.jpg");
        ok("C:\\Users\\me\\IMG 001.jpeg", "img-001.jpeg");
        ok("...hidden.jpg", "hidden.jpg");
        ok("a..b.jpg", "a.b.jpg");
        ok("café  au lait.jpg", "caf-au-lait.jpg");
        let long = format!("{}.jpg", "x".repeat(300));
        let cut = safe_file_name(&long).unwrap();
        assert_eq!(cut.len(), MAX_NAME_LEN);
        assert!(cut.ends_with(".jpg"));

        assert!(matches!(
            safe_file_name("bad\u{0}.jpg"),
            Err(Rejection::BadName(_))
        ));
        assert!(matches!(
            safe_file_name("line\nbreak.jpg"),
            Err(Rejection::BadName(_))
        ));
        assert!(matches!(safe_file_name("../"), Err(Rejection::BadName(_))));
        assert!(matches!(safe_file_name(".jpg"), Err(Rejection::BadName(_))));
        assert!(matches!(
            safe_file_name("---.jpg"),
            Err(Rejection::BadName(_))
        ));
        assert_eq!(safe_file_name("photo.png"), Err(Rejection::NotJpeg));
        assert_eq!(safe_file_name("photo.jpg.exe"), Err(Rejection::NotJpeg));
    }

    #[test]
    fn categories_are_normalised_and_checked() {
        assert_eq!(
            normalise_category("  Street   Photo ", &[]).unwrap(),
            "street photo"
        );
        assert!(normalise_category("", &[]).is_err());
        assert!(normalise_category("   ", &[]).is_err());
        assert!(normalise_category(&"x".repeat(51), &[]).is_err());
        assert!(normalise_category(&"x".repeat(50), &[]).is_ok());
        assert!(normalise_category("a\tb\u{7}", &[]).is_err());
        let allowed = vec!["nature".to_string(), "city".to_string()];
        assert_eq!(normalise_category("Nature", &allowed).unwrap(), "nature");
        assert!(normalise_category("food", &allowed).is_err());
    }
}
