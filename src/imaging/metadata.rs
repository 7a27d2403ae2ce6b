//! What a photo carries besides its pixels, and what of it is published.
//!
//! Cameras and phones write EXIF (GPS position, camera and lens serial numbers, the time, an
//! embedded preview), XMP and IPTC into APP1 and APP13 segments, maker data into other APPn
//! segments, and phones append further images (MPF, depth and gain maps, with EXIF of their own)
//! after the end-of-image marker. By default none of that is published. Kept: APP0 (JFIF), the
//! ICC colour profile (APP2 `ICC_PROFILE`, so colours do not shift), APP14 (Adobe: needed to
//! decode the colours right), and the tables, frame and scans.
//!
//! Segments are parsed and written back by `img-parts`, which keeps everything from the first
//! scan on byte for byte; the trailer is cut at the end-of-image marker first
//! ([`super::image_end`]).

use bytes::Bytes;
use img_parts::jpeg::{Jpeg, JpegSegment, markers};

use super::{Rejection, image_end};

const ICC_PREFIX: &[u8] = b"ICC_PROFILE\0";
const EXIF_PREFIX: &[u8] = b"Exif\0\0";

/// A segment that may say where, when or with what a photo was taken.
fn is_private(segment: &JpegSegment) -> bool {
    match segment.marker() {
        markers::APP0 | markers::APP14 => false,
        markers::APP2 => !segment.contents().starts_with(ICC_PREFIX),
        markers::APP1..=markers::APP15 | markers::COM => true,
        _ => false,
    }
}

fn parse(bytes: &[u8]) -> Result<Jpeg, Rejection> {
    let corrupt = || Rejection::Unreadable("the JPEG data is truncated or corrupt".into());
    let end = image_end(bytes).ok_or_else(corrupt)?;
    Jpeg::from_bytes(Bytes::copy_from_slice(&bytes[..end])).map_err(|_| corrupt())
}

/// The photo without private segments and without anything after its end: the same image data,
/// byte for byte, not re-encoded.
pub fn strip(bytes: &[u8]) -> Result<Vec<u8>, Rejection> {
    let mut jpeg = parse(bytes)?;
    jpeg.segments_mut().retain(|s| !is_private(s));
    Ok(jpeg.encoder().bytes().to_vec())
}

/// The EXIF, XMP and IPTC segments (APP1 and APP13) as `(app number, contents)`, in file order,
/// for a photo that is re-encoded with `image.keep_metadata` on. The EXIF orientation is reset to
/// upright, since the pixels are stored turned.
pub fn kept_segments(bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let Ok(jpeg) = parse(bytes) else {
        return Vec::new();
    };
    jpeg.segments()
        .iter()
        .filter(|s| matches!(s.marker(), markers::APP1 | markers::APP13))
        .map(|s| {
            let mut contents = s.contents().to_vec();
            if s.marker() == markers::APP1 {
                reset_orientation(&mut contents);
            }
            (s.marker() - markers::APP0, contents)
        })
        .collect()
}

/// Sets the Orientation tag (0x0112) of an EXIF APP1 payload (`Exif\0\0` and a TIFF block) to 1,
/// upright, in place. Returns whether there was one to set.
pub fn reset_orientation(app1: &mut [u8]) -> bool {
    let Some(tiff) = app1.strip_prefix(EXIF_PREFIX) else {
        return false;
    };
    let start = EXIF_PREFIX.len();
    let big_endian = match tiff.get(..2) {
        Some(b"MM") => true,
        Some(b"II") => false,
        _ => return false,
    };
    let u16_at = |b: &[u8], i: usize| -> Option<u16> {
        let v = [*b.get(i)?, *b.get(i + 1)?];
        Some(if big_endian {
            u16::from_be_bytes(v)
        } else {
            u16::from_le_bytes(v)
        })
    };
    let u32_at = |b: &[u8], i: usize| -> Option<u32> {
        let v = [*b.get(i)?, *b.get(i + 1)?, *b.get(i + 2)?, *b.get(i + 3)?];
        Some(if big_endian {
            u32::from_be_bytes(v)
        } else {
            u32::from_le_bytes(v)
        })
    };
    let found = (|| {
        let ifd = u32_at(tiff, 4)? as usize;
        let count = usize::from(u16_at(tiff, ifd)?);
        (0..count)
            .map(|n| ifd + 2 + n * 12)
            .find(|&entry| {
                u16_at(tiff, entry) == Some(0x0112) && u16_at(tiff, entry + 2) == Some(3)
            })
            .filter(|&entry| entry + 10 <= tiff.len())
    })();
    let Some(entry) = found else {
        return false;
    };
    let one = if big_endian {
        1u16.to_be_bytes()
    } else {
        1u16.to_le_bytes()
    };
    app1[start + entry + 8..start + entry + 10].copy_from_slice(&one);
    true
}

/// The markers of the segments before the first scan, for checks.
pub fn header_markers(bytes: &[u8]) -> Vec<u8> {
    parse(bytes)
        .map(|j| j.segments().iter().map(JpegSegment::marker).collect())
        .unwrap_or_default()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::imaging::tests::{exif_orientation, jpeg};

    /// Inserts an APPn segment with `contents` right after SOI.
    pub fn with_segment(bytes: &[u8], app: u8, contents: &[u8]) -> Vec<u8> {
        let mut out = bytes[..2].to_vec();
        out.extend_from_slice(&[0xFF, 0xE0 + app]);
        out.extend_from_slice(&((contents.len() + 2) as u16).to_be_bytes());
        out.extend_from_slice(contents);
        out.extend_from_slice(&bytes[2..]);
        out
    }

    fn exif_app1(orientation: u16) -> Vec<u8> {
        let mut a = EXIF_PREFIX.to_vec();
        a.extend(exif_orientation(orientation));
        a
    }

    #[test]
    fn strip_removes_every_private_segment_and_the_trailer_but_keeps_the_profile() {
        let plain = jpeg(32, 24, None);
        let mut icc = ICC_PREFIX.to_vec();
        icc.extend_from_slice(&[1, 1, 9, 9, 9]);
        let mut photo = plain.clone();
        for (app, contents) in [
            (1, exif_app1(6)),
            (1, b"http://ns.adobe.com/xap/1.0/\0<x:xmpmeta/>".to_vec()),
            (13, b"Photoshop 3.0\08BIM".to_vec()),
            (2, b"MPF\0\0\0".to_vec()),
            (2, icc.clone()),
            (11, b"maker".to_vec()),
            (14, b"Adobe\0\x64\0\0\0\0\x01".to_vec()),
        ] {
            photo = with_segment(&photo, app, &contents);
        }
        // A comment, and a trailer after the end of the image (a phone's second picture).
        photo = {
            let mut p = photo[..2].to_vec();
            p.extend_from_slice(&[0xFF, 0xFE, 0, 7]);
            p.extend_from_slice(b"GPS 1");
            p.extend_from_slice(&photo[2..]);
            p
        };
        let mut trailer = jpeg(8, 8, Some(exif_orientation(1)));
        trailer = with_segment(&trailer, 1, &exif_app1(1));
        photo.extend_from_slice(&trailer);

        let out = strip(&photo).unwrap();
        let markers = header_markers(&out);
        assert!(!markers.contains(&markers::APP1), "{markers:x?}");
        assert!(!markers.contains(&markers::APP13));
        assert!(!markers.contains(&markers::COM));
        assert!(!markers.contains(&0xEB));
        assert!(
            markers.contains(&markers::APP14),
            "Adobe colour information stays"
        );
        let app2: Vec<_> = parse(&out)
            .unwrap()
            .segments()
            .iter()
            .filter(|s| s.marker() == markers::APP2)
            .map(|s| s.contents().to_vec())
            .collect();
        assert_eq!(app2, vec![icc], "the profile stays, MPF goes");
        assert_eq!(Some(out.len()), image_end(&out), "nothing after the image");
        assert!(!out.windows(4).any(|w| w == b"Exif"));
        // The picture itself is untouched.
        let scan = |b: &[u8]| b[b.windows(2).rposition(|w| w == [0xFF, 0xDA]).unwrap()..].to_vec();
        assert_eq!(scan(&out), scan(&plain));
        assert!(image::load_from_memory(&out).is_ok());
    }

    #[test]
    fn orientation_is_reset_in_both_byte_orders() {
        let mut le = exif_app1(6);
        assert!(reset_orientation(&mut le));
        assert_eq!(le, exif_app1(1));

        // The same block, big-endian.
        let mut be = EXIF_PREFIX.to_vec();
        be.extend_from_slice(b"MM\0*\0\0\0\x08\0\x01\x01\x12\0\x03\0\0\0\x01\0\x08\0\0\0\0\0\0");
        assert!(reset_orientation(&mut be));
        assert_eq!(&be[6 + 18..6 + 20], &[0, 1]);

        let mut none = EXIF_PREFIX.to_vec();
        none.extend_from_slice(b"II*\0\x08\0\0\0\0\0");
        assert!(!reset_orientation(&mut none));
        let mut truncated = exif_app1(6);
        truncated.truncate(truncated.len() - 8);
        assert!(!reset_orientation(&mut truncated), "the value is cut off");
        assert!(!reset_orientation(&mut b"XMP".to_vec()));
    }

    /// A little-endian EXIF APP1 payload whose IFD0 holds `entries` (tag, type, value).
    fn exif_with(entries: &[(u16, u16, u16)]) -> Vec<u8> {
        let mut a = EXIF_PREFIX.to_vec();
        a.extend_from_slice(b"II*\0\x08\0\0\0");
        a.extend_from_slice(&(entries.len() as u16).to_le_bytes());
        for (tag, ty, value) in entries {
            a.extend_from_slice(&tag.to_le_bytes());
            a.extend_from_slice(&ty.to_le_bytes());
            a.extend_from_slice(&1u32.to_le_bytes());
            a.extend_from_slice(&value.to_le_bytes());
            a.extend_from_slice(&[0, 0]);
        }
        a.extend_from_slice(&[0; 4]);
        a
    }

    #[test]
    fn only_the_orientation_entry_is_changed_wherever_it_is_in_the_directory() {
        // ImageWidth (SHORT), ImageLength (LONG), a SHORT decoy, then Orientation.
        let entries = [
            (0x0100, 3, 640),
            (0x0101, 4, 480),
            (0x0128, 3, 2),
            (0x0112, 3, 6),
        ];
        let mut exif = exif_with(&entries);
        assert!(reset_orientation(&mut exif));
        let mut want = entries;
        want[3].2 = 1;
        assert_eq!(exif, exif_with(&want), "the other entries are untouched");
        // An Orientation entry of the wrong type is not one to change.
        let mut long = exif_with(&[(0x0100, 3, 640), (0x0112, 4, 6)]);
        let before = long.clone();
        assert!(!reset_orientation(&mut long));
        assert_eq!(long, before);
    }

    #[test]
    fn kept_segments_carry_exif_upright_and_iptc() {
        let photo = with_segment(
            &with_segment(&jpeg(16, 16, None), 13, b"Photoshop 3.0\0"),
            1,
            &exif_app1(8),
        );
        let kept = kept_segments(&photo);
        assert_eq!(
            kept,
            vec![(1, exif_app1(1)), (13, b"Photoshop 3.0\0".to_vec())]
        );
    }
}
