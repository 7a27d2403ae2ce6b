//! Photos in, web-ready images out. This module checks an upload (a whole JPEG, how big as
//! displayed) by its headers alone; [`pipeline`] turns it into the stored photo, its variants and
//! its placeholder; [`metadata`] removes what must not be published. No I/O: callers run these
//! through [`crate::blocking`].

pub mod metadata;
pub mod pipeline;

use std::io::Cursor;

use image::{ImageDecoder, ImageFormat, ImageReader, Limits, metadata::Orientation};

pub use pipeline::{
    Encoded, Preview, Processed, Variant, must_reencode, process, process_photo,
    variants_for_stored, variants_of,
};

/// Why an upload was refused before anything was stored. The message is for the uploader.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("Only .jpg/.jpeg files are accepted")]
    NotJpeg,
    #[error("Unreadable image: {0}")]
    Unreadable(String),
    #[error("Image is {width}x{height}; the largest accepted side is {max} pixels")]
    TooManyPixels { width: u32, height: u32, max: u32 },
}

/// The displayed size of a photo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dimensions {
    pub width: u32,
    pub height: u32,
}

/// What the headers of an accepted JPEG say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inspected {
    /// As displayed: EXIF orientation applied.
    pub displayed: Dimensions,
    /// As stored in the file.
    pub stored: Dimensions,
    /// The EXIF orientation (none: upright).
    pub orientation: Orientation,
}

/// Checks that `bytes` is a complete JPEG of at most `max_side` pixels a side, from its headers.
pub fn inspect(bytes: &[u8], max_side: u32) -> Result<Inspected, Rejection> {
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
    let stored = Dimensions { width, height };
    Ok(Inspected {
        displayed: if swaps_sides(orientation) {
            Dimensions {
                width: height,
                height: width,
            }
        } else {
            stored
        },
        stored,
        orientation,
    })
}

/// The orientation turns the picture a quarter: width and height trade places.
pub fn swaps_sides(o: Orientation) -> bool {
    matches!(
        o,
        Orientation::Rotate90
            | Orientation::Rotate270
            | Orientation::Rotate90FlipH
            | Orientation::Rotate270FlipH
    )
}

/// Requires the whole image: every marker segment, every scan, and the end-of-image marker.
/// Bytes after it (camera trailers) are allowed here.
fn check_complete(bytes: &[u8]) -> Result<(), Rejection> {
    image_end(bytes)
        .map(|_| ())
        .ok_or_else(|| Rejection::Unreadable("the JPEG data is truncated or corrupt".into()))
}

/// The offset just past the image's end-of-image marker, or None if the data stops (or breaks)
/// before it. Walks the marker segments to the first start-of-scan, then the entropy-coded data:
/// there an `FF` is followed by `00` (a stuffed byte), a restart marker, a fill byte, or a real
/// marker. The segments between the scans of a progressive JPEG (tables, the next scan's header)
/// are stepped over by their length, so bytes inside them are never taken for a marker.
pub fn image_end(bytes: &[u8]) -> Option<usize> {
    let length = |i: usize| -> Option<usize> {
        let len = usize::from(*bytes.get(i + 2)?) << 8 | usize::from(*bytes.get(i + 3)?);
        (len >= 2).then_some(len)
    };
    if bytes.get(..2)? != [0xFF, 0xD8] {
        return None;
    }
    let mut i = 2;
    // Header segments, up to and including the first scan's header.
    loop {
        while bytes.get(i) == Some(&0xFF) && bytes.get(i + 1) == Some(&0xFF) {
            i += 1; // fill bytes before a marker
        }
        if *bytes.get(i)? != 0xFF {
            return None;
        }
        match *bytes.get(i + 1)? {
            0xD8 | 0x01 | 0xD0..=0xD7 => i += 2, // no length field
            0xD9 => return None,                 // end of image before any scan
            0xDA => {
                i += 2 + length(i)?;
                break;
            }
            _ => i += 2 + length(i)?,
        }
    }
    // Entropy-coded data, and whatever segments come between scans.
    loop {
        let ff = i + memchr::memchr(0xFF, bytes.get(i..)?)?;
        match *bytes.get(ff + 1)? {
            0x00 | 0x01 | 0xD0..=0xD7 => i = ff + 2,
            0xFF => i = ff + 1,
            0xD9 => return Some(ff + 2),
            _ => i = ff + 2 + length(ff)?,
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use image::{ImageEncoder, RgbImage, codecs::jpeg::JpegEncoder};

    /// The displayed dimensions [`inspect`] finds, as the tests compare them.
    fn displayed(bytes: &[u8]) -> Result<Dimensions, Rejection> {
        inspect(bytes, 16_384).map(|i| i.displayed)
    }

    pub fn jpeg(w: u32, h: u32, exif: Option<Vec<u8>>) -> Vec<u8> {
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
        let d = displayed(&jpeg(40, 30, None)).unwrap();
        assert_eq!((d.width, d.height), (40, 30));
    }

    #[test]
    fn exif_orientation_6_swaps_width_and_height() {
        let d = displayed(&jpeg(40, 30, Some(exif_orientation(6)))).unwrap();
        assert_eq!((d.width, d.height), (30, 40));
        let d = displayed(&jpeg(40, 30, Some(exif_orientation(3)))).unwrap();
        assert_eq!((d.width, d.height), (40, 30), "180° keeps the shape");
    }

    #[test]
    fn non_jpeg_content_is_refused() {
        let mut png = Vec::new();
        image::DynamicImage::ImageRgb8(RgbImage::new(4, 4))
            .write_to(&mut Cursor::new(&mut png), ImageFormat::Png)
            .unwrap();
        assert_eq!(displayed(&png), Err(Rejection::NotJpeg));
        assert_eq!(displayed(b"hello"), Err(Rejection::NotJpeg));
        assert_eq!(displayed(b""), Err(Rejection::NotJpeg));
    }

    #[test]
    fn fill_bytes_and_markers_without_length_before_the_scan_are_stepped_over() {
        let plain = jpeg(16, 16, None);
        let end = image_end(&plain).unwrap();
        assert_eq!(end, plain.len());
        // Fill bytes (extra FFs) before the first segment's marker, then a TEM and a restart
        // marker, which carry no length: the end is found all the same, two, one and two
        // bytes further on.
        for (insert, extra) in [
            (&[0xFF, 0xFF][..], 2),
            (&[0xFF, 0x01][..], 2),
            (&[0xFF, 0xD3][..], 2),
            (&[0xFF, 0xFF, 0xFF, 0x01][..], 4),
        ] {
            let mut bytes = plain[..2].to_vec();
            bytes.extend_from_slice(insert);
            bytes.extend_from_slice(&plain[2..]);
            assert_eq!(image_end(&bytes), Some(end + extra), "{insert:x?}");
        }
        // An end-of-image marker before any scan ends the search, even when what follows would
        // parse as a segment.
        let mut early = plain[..2].to_vec();
        early.extend_from_slice(&[0xFF, 0xD9, 0x00, 0x04, 0xAB, 0xCD]);
        early.extend_from_slice(&plain[2..]);
        assert_eq!(image_end(&early), None);
    }

    #[test]
    fn an_end_marker_inside_a_segment_or_after_fill_bytes_is_read_as_the_spec_says() {
        let plain = jpeg(16, 16, None);
        let (body, eoi) = plain.split_at(plain.len() - 2);
        assert_eq!(eoi, [0xFF, 0xD9]);
        let with = |before_eoi: &[u8]| [body, before_eoi, eoi].concat();

        // Fill bytes before the end marker.
        let filled = with(&[0xFF, 0xFF]);
        assert_eq!(image_end(&filled), Some(filled.len()));

        // A table segment between two scans whose contents end in FF D9, then a second scan:
        // the segment is stepped over by its length, so the end is the last marker.
        let second_scan = [
            &[0xFF, 0xC4, 0x00, 0x06, 0xAA, 0xBB, 0xFF, 0xD9][..], // DHT, 4 bytes of contents
            &[0xFF, 0xDA, 0x00, 0x08, 0x01, 0x01, 0x00, 0x00, 0x3F, 0x00], // SOS, 1 component
            &[0x12, 0x34, 0xFF, 0x00, 0x56],                       // data, a stuffed FF
        ]
        .concat();
        let progressive = with(&second_scan);
        assert_eq!(image_end(&progressive), Some(progressive.len()));
        // And with the end marker straight after such a segment.
        let table_last = with(&second_scan[..8]);
        assert_eq!(image_end(&table_last), Some(table_last.len()));

        // The same inside a comment just before the first scan's header.
        let sos = plain.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
        let mut comment = vec![0xFF, 0xFE, 0x00, 32];
        comment.extend_from_slice(&[0x20; 28]);
        comment.extend_from_slice(&[0xFF, 0xD9]);
        let commented = [&plain[..sos], &comment, &plain[sos..]].concat();
        assert_eq!(image_end(&commented), Some(commented.len()));
    }

    #[test]
    fn truncated_jpegs_are_refused_at_any_cut() {
        let full = jpeg(64, 48, Some(exif_orientation(1)));
        assert!(displayed(&full).is_ok());
        for cut in [3, 10, 40, full.len() / 3, full.len() / 2, full.len() - 2] {
            let r = displayed(&full[..cut]);
            assert!(
                matches!(r, Err(Rejection::Unreadable(_))),
                "cut at {cut}: {r:?}"
            );
        }
        // Trailing bytes after the end marker are fine (camera trailers).
        let mut trailer = full.clone();
        trailer.extend_from_slice(b"TRAILER");
        assert!(displayed(&trailer).is_ok());
    }

    #[test]
    fn a_huge_header_is_refused_without_allocating() {
        let mut bytes = jpeg(16, 16, None);
        // Rewrite the SOF0 frame size to 60000x60000.
        let sof = bytes.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        bytes[sof + 5..sof + 9].copy_from_slice(&[0xEA, 0x60, 0xEA, 0x60]);
        let r = displayed(&bytes);
        assert_eq!(
            r,
            Err(Rejection::TooManyPixels {
                width: 60000,
                height: 60000,
                max: 16_384
            })
        );
    }
}
