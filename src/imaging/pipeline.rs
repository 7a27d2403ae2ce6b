//! One upload in, the images that are stored out: the photo (upright, at most
//! `image.max_dimension` on its long side, without private metadata), its variants, and a
//! placeholder for the grid.
//!
//! The work is done in the order that keeps it cheap:
//! 1. Decode at the smallest scale the largest output needs. `jpeg-decoder` can leave out
//!    detail while decoding (1/2, 1/4, 1/8, as libvips' shrink-on-load does): a 6000x4000 photo
//!    for a 2560 px result is decoded at 3000x2000, a quarter of the pixels and memory.
//! 2. Resize with `fast_image_resize` (Lanczos3, SIMD), each output from the next larger one:
//!    decoded, photo, medium, thumb, placeholder.
//! 3. Turn each output upright (EXIF orientation) only after it is small.
//! 4. Encode with `jpeg-encoder` (SIMD), the outputs in parallel, the ICC profile in each.
//!
//! A photo that needs neither a smaller size nor turning is not re-encoded: only its private
//! segments are removed ([`super::metadata::strip`]), so its quality is untouched.

use base64::Engine;
use fast_image_resize as fr;
use image::{DynamicImage, RgbImage, metadata::Orientation};

use super::{Dimensions, Inspected, Rejection, metadata};
use crate::config::ImageSettings;

/// A smaller copy of a photo, stored beside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    Thumb,
    Medium,
}

impl Variant {
    pub const ALL: [Variant; 2] = [Variant::Thumb, Variant::Medium];

    pub fn name(self) -> &'static str {
        match self {
            Variant::Thumb => "thumb",
            Variant::Medium => "medium",
        }
    }

    /// Its long side in pixels under `settings` (0: not made).
    pub fn size(self, settings: &ImageSettings) -> u32 {
        match self {
            Variant::Thumb => settings.thumb_px,
            Variant::Medium => settings.medium_px,
        }
    }

    /// The variant's object key: `thumb--sunset.jpg` for the photo `sunset.jpg`.
    ///
    /// - Every backend accepts it: letters, digits and `-._` are in real Supabase Storage's key
    ///   set, S3's safe characters and any file system's names (`~`, the first scheme, is refused
    ///   by Supabase: see [`Variant::legacy_key`]).
    /// - No photo can take it: a photo's key never holds `--` ([`crate::model::FileName::parse`]
    ///   collapses runs of `-`), so `thumb--x.jpg` is always a variant, never an upload.
    /// - The whole photo key follows, so `a.jpg` and `a.jpeg` have different variants.
    pub fn key(self, photo_key: &str) -> String {
        format!("{}{SEPARATOR}{photo_key}", self.name())
    }

    /// The key the first two rounds wrote (`thumb~sunset.jpg`): still read, deleted and
    /// reconciled on the stores that took it (local folders, S3), never written again.
    pub fn legacy_key(self, photo_key: &str) -> String {
        format!("{}{LEGACY_SEPARATOR}{photo_key}", self.name())
    }

    /// Both keys a variant of `photo_key` may have, the current one first.
    pub fn keys(self, photo_key: &str) -> [String; 2] {
        [self.key(photo_key), self.legacy_key(photo_key)]
    }

    /// The variant and photo key a variant's object key was made from, in either scheme.
    pub fn of_key(key: &str) -> Option<(Variant, &str)> {
        Variant::ALL.into_iter().find_map(|variant| {
            [SEPARATOR, LEGACY_SEPARATOR].into_iter().find_map(|sep| {
                let photo = key.strip_prefix(variant.name())?.strip_prefix(sep)?;
                (!photo.is_empty()).then_some((variant, photo))
            })
        })
    }
}

/// Between a variant's name and its photo's key.
const SEPARATOR: &str = "--";
/// The same in the first scheme, which Supabase refuses.
const LEGACY_SEPARATOR: &str = "~";

/// The variants `settings` asks for, smallest first.
pub fn variants_of(settings: &ImageSettings) -> Vec<Variant> {
    let mut v: Vec<Variant> = Variant::ALL
        .into_iter()
        .filter(|v| v.size(settings) > 0)
        .collect();
    v.sort_by_key(|v| v.size(settings));
    v
}

/// One JPEG ready to store.
#[derive(Debug, Clone)]
pub struct Encoded {
    pub bytes: Vec<u8>,
    pub dims: Dimensions,
}

/// What the grid paints before any image arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preview {
    /// A ThumbHash (about 25 bytes), base64: the front end decodes it into a blurred image of
    /// the photo's shape and colours.
    pub placeholder: String,
    /// The photo's average colour, `#rrggbb`.
    pub color: String,
}

/// Everything stored for one upload.
#[derive(Debug, Clone)]
pub struct Processed {
    pub photo: Encoded,
    /// The photo was decoded and encoded again (resized or turned upright); otherwise it is the
    /// upload with its private segments removed.
    pub reencoded: bool,
    pub variants: Vec<(Variant, Encoded)>,
    /// None when the variants and placeholder are made later ([`process_photo`]).
    pub preview: Option<Preview>,
}

impl Processed {
    /// The variants and placeholder are to be made after the answer ([`process_photo`]).
    pub fn variants_later(&self) -> bool {
        self.preview.is_none()
    }
}

/// The longest side the placeholder is computed from (ThumbHash takes at most 100x100).
const PREVIEW_SIDE: u32 = 100;
/// No decode may allocate more than this (checked before decoding).
const MAX_DECODED_BYTES: usize = 512 << 20;

/// Turns an accepted upload (`info` from [`super::inspect`]) into what is stored.
pub fn process(
    bytes: &[u8],
    info: &Inspected,
    settings: &ImageSettings,
) -> Result<Processed, Rejection> {
    make(bytes, info, settings, true, true)
}

/// The photo alone, for `image.variants_after_answer`: its variants and placeholder are made
/// later from the stored photo ([`variants_for_stored`]). Nothing is decoded unless the photo
/// itself must change size or orientation.
pub fn process_photo(
    bytes: &[u8],
    info: &Inspected,
    settings: &ImageSettings,
) -> Result<Processed, Rejection> {
    make(bytes, info, settings, true, false)
}

/// The variants and preview of a photo that is already stored (`variants backfill`); the
/// photo itself is left as it is.
pub fn variants_for_stored(
    bytes: &[u8],
    info: &Inspected,
    settings: &ImageSettings,
) -> Result<(Vec<(Variant, Encoded)>, Preview), Rejection> {
    let made = make(bytes, info, settings, false, true)?;
    let preview = made.preview.expect("the preview is a target");
    Ok((made.variants, preview))
}

/// The long side of the photo as stored: at most `image.max_dimension`.
fn photo_long(info: &Inspected, settings: &ImageSettings) -> u32 {
    let long = info.stored.width.max(info.stored.height);
    match settings.max_dimension {
        0 => long,
        max => long.min(max),
    }
}

/// The photo itself must be decoded and encoded again: made smaller, or turned upright.
pub fn must_reencode(info: &Inspected, settings: &ImageSettings) -> bool {
    photo_long(info, settings) < info.stored.width.max(info.stored.height)
        || info.orientation != Orientation::NoTransforms
}

fn make(
    bytes: &[u8],
    info: &Inspected,
    settings: &ImageSettings,
    with_photo: bool,
    with_variants: bool,
) -> Result<Processed, Rejection> {
    let stored = info.stored;
    let photo_long = photo_long(info, settings);
    let reencode = with_photo && must_reencode(info, settings);
    // Outputs, largest first; none is larger than the stored photo.
    let mut targets: Vec<(Output, u32)> = Vec::new();
    if reencode {
        targets.push((Output::Photo, photo_long));
    }
    if with_variants {
        for variant in variants_of(settings).into_iter().rev() {
            targets.push((
                Output::Variant(variant),
                variant.size(settings).min(photo_long),
            ));
        }
        targets.push((Output::Preview, PREVIEW_SIDE.min(photo_long)));
    }

    let mut resized: Vec<(Output, Pixels)> = Vec::with_capacity(targets.len());
    let mut icc = None;
    if let Some(&(_, largest)) = targets.first() {
        let decoded;
        (decoded, icc) = decode(bytes, stored, largest)?;
        for (output, side) in targets {
            let source = resized.last().map_or(&decoded, |(_, p)| p);
            let pixels = resize(source, fit(stored, side))?;
            resized.push((output, pixels));
        }
    }

    let mut preview = None;
    let mut to_encode: Vec<(Output, RgbImage)> = Vec::new();
    for (output, pixels) in resized {
        let upright = orient(pixels, info.orientation);
        match output {
            Output::Preview => preview = Some(preview_of(&upright)),
            other => to_encode.push((other, upright)),
        }
    }
    let quality = settings.jpeg_quality;
    let kept = if settings.keep_metadata {
        metadata::kept_segments(bytes)
    } else {
        Vec::new()
    };
    // Largest first: the photo and the medium variant get threads of their own.
    let encoded: Vec<(Output, Result<Encoded, Rejection>)> = std::thread::scope(|scope| {
        let mut handles = Vec::new();
        let mut inline = Vec::new();
        for (n, (output, image)) in to_encode.into_iter().enumerate() {
            let app = if output == Output::Photo {
                &kept[..]
            } else {
                &[]
            };
            let icc = icc.as_deref();
            if n < 2 {
                handles.push((
                    output,
                    scope.spawn(move || encode(&image, quality, icc, app)),
                ));
            } else {
                inline.push((output, encode(&image, quality, icc, app)));
            }
        }
        let mut all: Vec<_> = handles
            .into_iter()
            .map(|(o, h)| {
                let result = h.join().unwrap_or_else(|_| {
                    Err(Rejection::Unreadable("the JPEG encoder failed".into()))
                });
                (o, result)
            })
            .collect();
        all.extend(inline);
        all
    });

    let mut photo = None;
    let mut variants = Vec::new();
    for (output, result) in encoded {
        match output {
            Output::Photo => photo = Some(result?),
            Output::Variant(v) => variants.push((v, result?)),
            Output::Preview => {}
        }
    }
    variants.sort_by_key(|(_, e)| e.dims.width.max(e.dims.height));
    let photo = match photo {
        Some(p) => p,
        None if !with_photo => Encoded {
            bytes: Vec::new(),
            dims: stored,
        },
        None => Encoded {
            bytes: if settings.keep_metadata {
                bytes.to_vec()
            } else {
                metadata::strip(bytes)?
            },
            dims: stored,
        },
    };
    Ok(Processed {
        photo,
        reencoded: reencode,
        variants,
        preview,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Output {
    Photo,
    Variant(Variant),
    Preview,
}

/// RGB pixels in the file's stored orientation.
struct Pixels {
    rgb: Vec<u8>,
    dims: Dimensions,
}

fn unreadable(e: impl std::fmt::Display) -> Rejection {
    Rejection::Unreadable(e.to_string())
}

/// `d` scaled so that its long side is `side` (never 0 on either side).
fn fit(d: Dimensions, side: u32) -> Dimensions {
    let long = d.width.max(d.height).max(1);
    let scale = |v: u32| {
        ((u64::from(v) * u64::from(side) + u64::from(long) / 2) / u64::from(long)).max(1) as u32
    };
    if d.width >= d.height {
        Dimensions {
            width: side,
            height: scale(d.height),
        }
    } else {
        Dimensions {
            width: scale(d.width),
            height: side,
        }
    }
}

/// Decodes at the smallest scale whose long side is at least `long_side`; also returns the
/// ICC profile.
fn decode(
    bytes: &[u8],
    stored: Dimensions,
    long_side: u32,
) -> Result<(Pixels, Option<Vec<u8>>), Rejection> {
    let mut decoder = jpeg_decoder::Decoder::new(bytes);
    decoder.set_max_decoding_buffer_size(MAX_DECODED_BYTES);
    let want = fit(stored, long_side);
    let clamp = |v: u32| v.min(u32::from(u16::MAX)) as u16;
    let (w, h) = decoder
        .scale(clamp(want.width), clamp(want.height))
        .map_err(unreadable)?;
    let data = decoder.decode().map_err(unreadable)?;
    let info = decoder
        .info()
        .ok_or_else(|| unreadable("no frame header"))?;
    let rgb = match info.pixel_format {
        jpeg_decoder::PixelFormat::RGB24 => data,
        jpeg_decoder::PixelFormat::L8 => data.iter().flat_map(|&l| [l, l, l]).collect(),
        jpeg_decoder::PixelFormat::CMYK32 => data
            .chunks_exact(4)
            .flat_map(|p| {
                let k = u32::from(p[3]);
                let ink = |c: u8| (u32::from(c) * k / 255) as u8;
                [ink(p[0]), ink(p[1]), ink(p[2])]
            })
            .collect(),
        jpeg_decoder::PixelFormat::L16 => {
            return Err(unreadable("16-bit JPEGs are not supported"));
        }
    };
    let dims = Dimensions {
        width: u32::from(w),
        height: u32::from(h),
    };
    if rgb.len() != dims.width as usize * dims.height as usize * 3 {
        return Err(unreadable("the decoder returned a short image"));
    }
    Ok((Pixels { rgb, dims }, decoder.icc_profile()))
}

fn resize(source: &Pixels, to: Dimensions) -> Result<Pixels, Rejection> {
    if source.dims == to {
        return Ok(Pixels {
            rgb: source.rgb.clone(),
            dims: to,
        });
    }
    let src = fr::images::ImageRef::new(
        source.dims.width,
        source.dims.height,
        &source.rgb,
        fr::PixelType::U8x3,
    )
    .map_err(unreadable)?;
    let mut dst = fr::images::Image::new(to.width, to.height, fr::PixelType::U8x3);
    let options =
        fr::ResizeOptions::new().resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::Lanczos3));
    fr::Resizer::new()
        .resize(&src, &mut dst, &options)
        .map_err(unreadable)?;
    Ok(Pixels {
        rgb: dst.into_vec(),
        dims: to,
    })
}

fn orient(pixels: Pixels, orientation: Orientation) -> RgbImage {
    let image = RgbImage::from_raw(pixels.dims.width, pixels.dims.height, pixels.rgb)
        .expect("the buffer matches its dimensions");
    if orientation == Orientation::NoTransforms {
        return image;
    }
    let mut image = DynamicImage::ImageRgb8(image);
    image.apply_orientation(orientation);
    image.into_rgb8()
}

fn encode(
    image: &RgbImage,
    quality: u8,
    icc: Option<&[u8]>,
    app_segments: &[(u8, Vec<u8>)],
) -> Result<Encoded, Rejection> {
    let (w, h) = image.dimensions();
    let too_big = || unreadable("the image is too large for JPEG");
    let (w16, h16) = (
        u16::try_from(w).map_err(|_| too_big())?,
        u16::try_from(h).map_err(|_| too_big())?,
    );
    let mut out = Vec::with_capacity(image.len() / 8);
    let mut encoder = jpeg_encoder::Encoder::new(&mut out, quality);
    for (app, contents) in app_segments {
        // A segment that does not fit is dropped, never the photo.
        let _ = encoder.add_app_segment(*app, contents.clone());
    }
    if let Some(icc) = icc {
        let _ = encoder.add_icc_profile(icc);
    }
    encoder
        .encode(image.as_raw(), w16, h16, jpeg_encoder::ColorType::Rgb)
        .map_err(unreadable)?;
    Ok(Encoded {
        bytes: out,
        dims: Dimensions {
            width: w,
            height: h,
        },
    })
}

fn preview_of(image: &RgbImage) -> Preview {
    let (w, h) = image.dimensions();
    let rgba: Vec<u8> = image
        .as_raw()
        .chunks_exact(3)
        .flat_map(|p| [p[0], p[1], p[2], 255])
        .collect();
    let hash = thumbhash::rgba_to_thumb_hash(w as usize, h as usize, &rgba);
    let (r, g, b, _) = thumbhash::thumb_hash_to_average_rgba(&hash).unwrap_or((0.5, 0.5, 0.5, 1.0));
    let byte = |v: f32| (v.clamp(0.0, 1.0) * 255.0).round() as u8;
    Preview {
        placeholder: base64::engine::general_purpose::STANDARD.encode(&hash),
        color: format!("#{:02x}{:02x}{:02x}", byte(r), byte(g), byte(b)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imaging::{inspect, metadata::header_markers, tests::exif_orientation};
    use image::{ImageEncoder, codecs::jpeg::JpegEncoder};

    fn settings() -> ImageSettings {
        crate::config::Settings::default().image
    }

    /// A photo whose left half is red and right half blue, stored `w`x`h`.
    fn halves(w: u32, h: u32, exif: Option<Vec<u8>>) -> Vec<u8> {
        let img = RgbImage::from_fn(w, h, |x, _| {
            if x < w / 2 {
                image::Rgb([220, 20, 20])
            } else {
                image::Rgb([20, 20, 220])
            }
        });
        let mut out = Vec::new();
        let mut enc = JpegEncoder::new_with_quality(&mut out, 90);
        if let Some(exif) = exif {
            enc.set_exif_metadata(exif).unwrap();
        }
        enc.write_image(&img, w, h, image::ExtendedColorType::Rgb8)
            .unwrap();
        out
    }

    fn run(bytes: &[u8], s: &ImageSettings) -> Processed {
        let info = inspect(bytes, 16_384).unwrap();
        process(bytes, &info, s).unwrap()
    }

    fn size_of(bytes: &[u8]) -> (u32, u32) {
        let i = inspect(bytes, 16_384).unwrap();
        assert_eq!(i.orientation, Orientation::NoTransforms, "stored upright");
        (i.stored.width, i.stored.height)
    }

    #[test]
    fn a_large_photo_is_downscaled_on_its_long_side_with_variants() {
        let p = run(&halves(3000, 2000, None), &settings());
        assert!(p.reencoded);
        assert_eq!(size_of(&p.photo.bytes), (2560, 1707));
        assert_eq!((p.photo.dims.width, p.photo.dims.height), (2560, 1707));
        let sizes: Vec<_> = p
            .variants
            .iter()
            .map(|(v, e)| (*v, size_of(&e.bytes)))
            .collect();
        assert_eq!(
            sizes,
            vec![(Variant::Thumb, (400, 267)), (Variant::Medium, (1200, 800))]
        );
    }

    #[test]
    fn orientation_is_baked_in_and_sides_swap() {
        // Stored landscape, red on the left; orientation 6 shows it turned 90° clockwise, so the
        // red half is on top.
        let p = run(&halves(600, 400, Some(exif_orientation(6))), &settings());
        assert!(
            p.reencoded,
            "turning needs new pixels even without a resize"
        );
        assert_eq!(size_of(&p.photo.bytes), (400, 600));
        let img = image::load_from_memory(&p.photo.bytes).unwrap().into_rgb8();
        let top = img.get_pixel(200, 50);
        let bottom = img.get_pixel(200, 550);
        assert!(top[0] > 150 && top[2] < 100, "top is red: {top:?}");
        assert!(
            bottom[2] > 150 && bottom[0] < 100,
            "bottom is blue: {bottom:?}"
        );
        let sizes: Vec<_> = p.variants.iter().map(|(_, e)| size_of(&e.bytes)).collect();
        assert_eq!(
            sizes,
            vec![(267, 400), (400, 600)],
            "never larger than the photo"
        );
    }

    #[test]
    fn a_photo_that_fits_is_not_reencoded_and_loses_only_metadata() {
        let original = halves(800, 600, Some(exif_orientation(1)));
        let p = run(&original, &settings());
        assert!(!p.reencoded);
        assert_eq!(p.photo.bytes, metadata::strip(&original).unwrap());
        assert!(!header_markers(&p.photo.bytes).contains(&0xE1));
        let mut keep = settings();
        keep.keep_metadata = true;
        assert_eq!(run(&original, &keep).photo.bytes, original);
    }

    #[test]
    fn the_photo_alone_is_decoded_only_when_it_must_change() {
        let fits = halves(800, 600, Some(exif_orientation(1)));
        let info = inspect(&fits, 16_384).unwrap();
        let p = process_photo(&fits, &info, &settings()).unwrap();
        assert!(!p.reencoded);
        assert_eq!(p.photo.bytes, metadata::strip(&fits).unwrap());
        assert!(p.variants.is_empty() && p.preview.is_none());

        let large = halves(3000, 2000, Some(exif_orientation(6)));
        let info = inspect(&large, 16_384).unwrap();
        let p = process_photo(&large, &info, &settings()).unwrap();
        assert!(p.reencoded);
        assert_eq!(
            size_of(&p.photo.bytes),
            (1707, 2560),
            "downscaled and upright"
        );
        assert!(p.variants.is_empty() && p.preview.is_none());
    }

    #[test]
    fn zero_max_dimension_keeps_the_size_and_zero_sizes_drop_variants() {
        let mut s = settings();
        s.max_dimension = 0;
        s.thumb_px = 0;
        let p = run(&halves(3000, 2000, None), &s);
        assert!(!p.reencoded);
        assert_eq!(size_of(&p.photo.bytes), (3000, 2000));
        assert_eq!(p.variants.len(), 1);
        assert_eq!(p.variants[0].0, Variant::Medium);
        s.medium_px = 0;
        assert!(run(&halves(300, 200, None), &s).variants.is_empty());
    }

    #[test]
    fn the_icc_profile_survives_reencoding_and_kept_exif_is_upright() {
        let mut icc = b"ICC_PROFILE\0\x01\x01".to_vec();
        icc.extend_from_slice(&[7u8; 300]);
        let with_icc =
            metadata::tests::with_segment(&halves(3000, 2000, Some(exif_orientation(6))), 2, &icc);
        let mut s = settings();
        s.keep_metadata = true;
        let p = run(&with_icc, &s);
        let profile = |b: &[u8]| {
            let mut d = jpeg_decoder::Decoder::new(b);
            d.read_info().unwrap();
            d.icc_profile()
        };
        assert_eq!(profile(&p.photo.bytes), Some(vec![7u8; 300]));
        for (_, v) in &p.variants {
            assert_eq!(profile(&v.bytes), Some(vec![7u8; 300]));
            assert!(
                !header_markers(&v.bytes).contains(&0xE1),
                "variants never carry EXIF"
            );
        }
        // The photo kept its EXIF, now saying upright.
        let info = inspect(&p.photo.bytes, 16_384).unwrap();
        assert!(header_markers(&p.photo.bytes).contains(&0xE1));
        assert_eq!(info.orientation, Orientation::NoTransforms);
        assert_eq!((info.stored.width, info.stored.height), (1707, 2560));
    }

    #[test]
    fn the_placeholder_is_a_thumbhash_with_the_average_colour() {
        let img = RgbImage::from_pixel(300, 200, image::Rgb([200, 100, 50]));
        let mut bytes = Vec::new();
        JpegEncoder::new_with_quality(&mut bytes, 95)
            .write_image(&img, 300, 200, image::ExtendedColorType::Rgb8)
            .unwrap();
        let p = run(&bytes, &settings());
        let preview = p.preview.expect("made with the variants");
        let hash = base64::engine::general_purpose::STANDARD
            .decode(&preview.placeholder)
            .unwrap();
        assert!((5..=40).contains(&hash.len()), "{} bytes", hash.len());
        let ratio = thumbhash::thumb_hash_to_approximate_aspect_ratio(&hash).unwrap();
        assert!((ratio - 1.5).abs() < 0.2, "the shape is kept: {ratio}");
        let channel =
            |i: usize| u8::from_str_radix(&preview.color[1 + 2 * i..3 + 2 * i], 16).unwrap();
        for (i, want) in [200u8, 100, 50].into_iter().enumerate() {
            assert!(
                channel(i).abs_diff(want) <= 12,
                "{} vs {want}",
                preview.color
            );
        }
    }

    #[test]
    fn grey_photos_and_tiny_photos_work() {
        let img = image::GrayImage::from_pixel(5, 3, image::Luma([90]));
        let mut bytes = Vec::new();
        JpegEncoder::new_with_quality(&mut bytes, 90)
            .write_image(&img, 5, 3, image::ExtendedColorType::L8)
            .unwrap();
        let p = run(&bytes, &settings());
        assert_eq!(size_of(&p.photo.bytes), (5, 3));
        assert!(p.variants.iter().all(|(_, e)| size_of(&e.bytes) == (5, 3)));
    }

    #[test]
    fn variant_keys_name_their_photo_and_never_a_photo() {
        assert_eq!(Variant::Thumb.key("a.jpg"), "thumb--a.jpg");
        assert_eq!(Variant::Medium.key("a.jpg"), "medium--a.jpg");
        assert_eq!(Variant::Thumb.legacy_key("a.jpg"), "thumb~a.jpg");
        assert_eq!(
            Variant::Medium.keys("a.jpg"),
            ["medium--a.jpg".to_string(), "medium~a.jpg".to_string()]
        );
        assert_ne!(Variant::Thumb.key("a.jpg"), Variant::Thumb.key("a.jpeg"));
        for (key, want) in [
            ("medium--a.jpg", Some((Variant::Medium, "a.jpg"))),
            ("thumb--a.jpg", Some((Variant::Thumb, "a.jpg"))),
            ("medium~a.jpg", Some((Variant::Medium, "a.jpg"))),
            ("thumb~a--b.jpg", Some((Variant::Thumb, "a--b.jpg"))),
            ("thumb--a~b.jpg", Some((Variant::Thumb, "a~b.jpg"))),
            ("a.jpg", None),
            ("thumb-a.jpg", None),
            ("thumb.jpg", None),
            ("large--a.jpg", None),
            ("large~a.jpg", None),
            ("xthumb--a.jpg", None),
            ("thumb--", None),
            ("thumb~", None),
        ] {
            assert_eq!(Variant::of_key(key), want, "{key}");
        }
        for raw in [
            "thumb~a.jpg",
            "thumb--a.jpg",
            "medium--a.jpg",
            "thumb - - a.jpg",
            "thumb\u{2014}a.jpg",
            "thumb\u{2013}\u{2013}a.jpg",
            "x~y.jpeg",
        ] {
            let name = crate::model::FileName::parse(raw).unwrap();
            assert!(
                Variant::of_key(name.as_str()).is_none(),
                "{raw} -> {name:?}"
            );
        }
    }

    #[test]
    fn fit_rounds_and_never_reaches_zero() {
        let d = |width, height| Dimensions { width, height };
        assert_eq!(fit(d(6000, 4000), 2560), d(2560, 1707));
        assert_eq!(fit(d(4000, 6000), 2560), d(1707, 2560));
        assert_eq!(fit(d(10000, 10), 100), d(100, 1));
        assert_eq!(fit(d(300, 300), 100), d(100, 100));
    }
}
