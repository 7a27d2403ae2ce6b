//! The image pipeline alone, for `bench/run.sh` (scenario 9): what one upload of `FILE` costs
//! the server, without storage or the database.
//!
//!     cargo run --release --example pipeline -- FILE RUNS
//!
//! Prints `key=value` lines: the median wall time of RUNS runs of one photo (headers checked,
//! decoded, turned upright, the stored photo and both variants encoded, the placeholder made),
//! the CPU time per photo, and the peak RSS growth while two photos are processed at once.

use std::time::Instant;

use portfolio_server::{config::Settings, imaging};

fn cpu_seconds() -> f64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct it is given.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(usage.ru_utime) + t(usage.ru_stime)
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args.next().expect("usage: pipeline FILE RUNS");
    let runs: usize = args.next().map_or(5, |r| r.parse().unwrap());
    let bytes = std::fs::read(&path).unwrap();
    let settings = Settings::default();
    let one = |bytes: &[u8]| {
        let info = imaging::inspect(bytes, settings.upload.max_side_px).unwrap();
        imaging::process(bytes, &info, &settings.image).unwrap()
    };

    let first = one(&bytes); // warm-up, and the sizes to report
    let mut walls = Vec::new();
    let cpu0 = cpu_seconds();
    for _ in 0..runs {
        let t = Instant::now();
        std::hint::black_box(one(&bytes));
        walls.push(t.elapsed().as_secs_f64());
    }
    let cpu = (cpu_seconds() - cpu0) / runs as f64;
    walls.sort_by(f64::total_cmp);
    let median = walls[walls.len() / 2];

    // Two at once, as two uploads of a batch would be with two image slots.
    let second = bytes.clone();
    std::fs::write("/proc/self/clear_refs", "5").unwrap(); // resets VmHWM to VmRSS
    let base = status_kib("VmRSS:");
    std::thread::scope(|s| {
        let a = s.spawn(|| one(&bytes));
        let b = s.spawn(|| one(&second));
        std::hint::black_box((a.join().unwrap(), b.join().unwrap()));
    });
    let peak = status_kib("VmHWM:");

    println!(
        "input_bytes={} input_width={} input_height={}",
        bytes.len(),
        imaging::inspect(&bytes, 65_535).unwrap().stored.width,
        imaging::inspect(&bytes, 65_535).unwrap().stored.height
    );
    println!(
        "photo={}x{} variants={}",
        first.photo.dims.width,
        first.photo.dims.height,
        first
            .variants
            .iter()
            .map(|(v, e)| format!("{}:{}x{}", v.name(), e.dims.width, e.dims.height))
            .collect::<Vec<_>>()
            .join(",")
    );
    println!("runs={runs} wall_median_s={median:.3} cpu_s={cpu:.3}");
    println!(
        "two_at_once_base_kib={base} two_at_once_peak_kib={peak} two_at_once_growth_kib={}",
        peak - base
    );
}
