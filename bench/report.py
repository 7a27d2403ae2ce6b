#!/usr/bin/env python3
"""Turns the raw output of bench/run.sh into bench/results.md (stdout).

    report.py RAW_DIR            the markdown report
    report.py --check RAW_DIR    exit 1 unless every scenario ran and answered correctly
                                 (the CI smoke test; targets are not judged on 1 s runs)
"""
import re
import statistics
import sys
from pathlib import Path


def kv(path):
    """`key=value` lines. A line with one `=` holds one value (spaces allowed); others hold
    several space-separated pairs."""
    out = {}
    for line in Path(path).read_text().splitlines():
        if line.count("=") == 1:
            key, value = line.split("=", 1)
            out[key] = value
        else:
            out.update(re.findall(r"(\w+)=(\S+)", line))
    return out


def ms(text):
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    value, unit = float(m.group(1)), m.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def wrk(path):
    text = Path(path).read_text()
    r = {}
    m = re.search(r"(\d+) requests in ([\d.]+)(m?s)", text)
    r["requests"] = int(m.group(1))
    r["seconds"] = float(m.group(2)) / (1000 if m.group(3) == "ms" else 1)
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", text, re.M)
        r[f"p{pct}"] = ms(m.group(1))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    r["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    r["socket_errors"] = sum(int(x) for x in m.groups()) if m else 0
    m = re.search(r"checked: ok=(\d+) bad=(\d+) fallback=(\d+)", text)
    r["ok"], r["bad"], r["fallback"] = (int(x) for x in m.groups())
    r["rps"] = r["ok"] / r["seconds"]  # only correct 2xx answers count
    return r


NOT_WRK = ("env", "rss", "upload", "storm", "original", "signing")


def memory_parts(rss, rows):
    """What the loaded RSS is made of (`bench/smaps.py`), and what the copy of the table adds."""
    mib = lambda prefix, *keys: sum(int(rss[f"{prefix}_{k}_kib"]) for k in keys) / 1024
    program = mib("loaded", "binary_code", "binary_rodata", "binary_data", "libraries")
    heap = mib("loaded", "malloc_main", "malloc_threads", "other_anon")
    copy = mib("loaded", "total") - mib("nocopy", "total")
    return (
        f"Of that, {program:.1f} MiB is the program itself, paged in from its file "
        f"({mib('loaded', 'binary_code'):.1f} code, {mib('loaded', 'binary_rodata'):.1f} constants and "
        f"embedded assets, {mib('loaded', 'libraries'):.1f} glibc), "
        f"{heap:.1f} MiB is allocated memory ({mib('loaded', 'malloc_main', 'malloc_threads'):.1f} in "
        f"malloc's arenas, {mib('loaded', 'other_anon'):.1f} in blocks mapped on their own) and "
        f"{mib('loaded', 'stacks'):.1f} MiB thread stacks (`bench/smaps.py`). The same load on a "
        f"server without the copy of the table kept for outages ended at "
        f"{mib('nocopy', 'total'):.1f} MiB: the copy of {rows:,} rows costs {copy:.1f} MiB."
    )


def wrk_runs(raw):
    """Every wrk output in RAW_DIR, by name."""
    return {p.stem: wrk_load(p) for p in Path(raw).glob("*.txt")
            if p.stem not in NOT_WRK
            and not p.stem.startswith(("pgbench", "image_", "upcmp_", "upone_"))}


def scenarios(delay):
    """The scenarios run against both servers, in interleaved rounds: (key, label)."""
    return [
        ("root", "`GET /`"),
        ("cached", "first page (ours: page cache)"),
        ("uncached", "rotating pages (ours: cache off)"),
        ("remote_cached", f"first page, database {delay} ms away"),
        ("remote_uncached", f"rotating pages, database {delay} ms away (ours: cache off)"),
        ("remote_uncached_c10", f"the same with 10 connections"),
        ("outage", "database stopped, rotating pages"),
    ]


def by_round(raw, prefix, parse):
    """The runs `{prefix}_r{k}.txt`, parsed, in round order."""
    paths = sorted(Path(raw).glob(f"{prefix}_r*.txt"), key=lambda p: int(p.stem.rsplit("_r", 1)[1]))
    return [parse(p) for p in paths]


def with_load(path):
    """The `key=value` lines of a run, with the load average before it as `load`."""
    out = kv(path)
    out["load"] = float(out.get("loadavg_before", "nan"))
    return out


def wrk_load(path):
    """A wrk run, with the load average before it as `load`."""
    return wrk(path) | {"load": with_load(path)["load"]}


def comparison(raw):
    """What bench/run.sh ran against both servers, round by round: a dict with
    `scenarios` [(key, label, {server: [wrk run per round]})], `uploads` and `singles`
    {server: [kv per round]}, `servers` [(server, label)] and `orig` (the original's details, or
    None when ORIGINAL_DIR was not set)."""
    raw = Path(raw)
    env = kv(raw / "env.txt")
    orig = kv(raw / "original.txt") if (raw / "original.txt").exists() else None
    servers = [("ours", "portfolio-server")]
    if orig:
        servers.append(("orig", "original, best worker count"))
    table = [(key, label, {who: by_round(raw, f"cmp_{who}_{key}", wrk_load) for who, _ in servers})
             for key, label in scenarios(env.get("delay_ms", "20"))]
    uploads = {who: by_round(raw, f"upcmp_{who}", with_load) for who in ("ours", "plain", "orig")}
    singles = {who: by_round(raw, f"upone_{who}", with_load) for who in ("ours", "orig")}
    return {"scenarios": table, "uploads": uploads, "singles": singles, "servers": servers, "orig": orig}


def spread(values):
    """(median, lowest, highest)."""
    values = sorted(values)
    return statistics.median(values), values[0], values[-1]


def num(v):
    return f"{v:,.0f}" if v >= 100 else f"{v:,.1f}" if v >= 1 else f"{v:.2f}"


def med_range(values):
    if not values:
        return "—"
    m, lo, hi = spread(values)
    return f"{num(m)} ({num(lo)}–{num(hi)})" if len(values) > 1 else num(m)


def ratio(x):
    return "—" if x is None else f"{x:,.1f}×" if x < 10 else f"{x:,.0f}×"


def wrong(r):
    """Answers that came back 200 but were not the database's rows (the original's static
    fallback is a JSON object of demo photos)."""
    return r["bad"] - r["non2xx"]


def failed(r):
    return r["non2xx"] + r["socket_errors"]


def comparison_lines(raw, env):
    c = comparison(raw)
    delay, orig = env.get("delay_ms", "20"), c["orig"]
    rounds = env.get("rounds", "1")
    out = ["## Against the original Python server", ""]
    if orig:
        out += [
            f"The original (Tydos/portfolio-backend-server, commit: {orig['commit']}; {orig['python']}, "
            f"{orig['packages'].strip()}) ran under uvicorn as its README says, on the same PostgreSQL and "
            f"rows, with its best worker count on this machine of {orig['candidates'].replace(' ', ', ')}: "
            f"{orig['best_workers']} by good answers on the cached first page, for the local scenarios, "
            f"and {orig.get('best_workers_remote', orig['best_workers'])} by good answers on rotating pages "
            f"{delay} ms from the database, for the remote ones (each worker has a pool of 10 connections). "
            f"Every scenario ran in {rounds} interleaved rounds, ours then the original's, "
            "round after round; each cell is the median of the rounds with their range, and the ratio "
            "is ours ÷ the original's, of the medians (in brackets: the lowest of the rounds' own ratios). "
            "Only a 200 whose body is the database's rows counts as a good answer, for both servers "
            "(`bench/check.lua`; rotating pages are checked row by row): *wrong* is a 200 with "
            "anything else (the original answers from its static demo data when its pool of 10 "
            "connections is exhausted or the database is down), *failed* a non-2xx answer or a socket "
            "error, both summed over the rounds.",
        ]
    else:
        out += ["`ORIGINAL_DIR` was not set, so only this server ran; see `bench/run.sh` for running "
                "the original beside it."]
    out += [
        f"The remote rows go through `bench/delay_proxy.py`, which delays every byte {delay} ms each way "
        "(a 40 ms round trip, as to a managed database elsewhere); the proxy shares the cores. "
        "`load` is the 1-minute load average before each run.",
        "",
    ]
    names = dict(c["servers"])
    head = "| scenario | " + " | ".join(
        f"{names[w]}: good/s | p50 ms | p99 ms | wrong, failed" for w, _ in c["servers"])
    out += [head + " | ours ÷ original | load |",
            "|---|" + "---:|---:|---:|---:|" * len(c["servers"]) + "---:|---|"]
    for key, label, runs in c["scenarios"]:
        cells = []
        for who, _ in c["servers"]:
            rs = runs[who]
            cells.append(" | ".join([
                med_range([r["rps"] for r in rs]),
                med_range([r["p50"] for r in rs]),
                med_range([r["p99"] for r in rs]),
                f"{sum(wrong(r) for r in rs):,}, {sum(failed(r) for r in rs):,}" if rs else "—",
            ]))
        x = ""
        ours, theirs = runs.get("ours", []), runs.get("orig", [])
        if ours and theirs:
            om, tm = spread([r["rps"] for r in ours])[0], spread([r["rps"] for r in theirs])[0]
            per_round = [a["rps"] / b["rps"] for a, b in zip(ours, theirs) if b["rps"] > 0]
            x = "no good answers from the original" if tm == 0 else ratio(om / tm)
            if per_round and tm > 0:
                x += f" ({ratio(min(per_round))})"
        loads = [r["load"] for who, _ in c["servers"] for r in runs[who]]
        load = f"{min(loads):.1f}–{max(loads):.1f}" if loads else ""
        out.append(f"| {label} | " + " | ".join(cells) + f" | {x} | {load} |")

    up, one = c["uploads"], c["singles"]
    if up["ours"]:
        first = up["ours"][0]
        out += [
            "",
            f"Uploads into `bench/storage_standin.py`, a Supabase Storage stand-in that answers as the "
            "real one does (the original stores only to Supabase), each round under fresh names: one "
            f"`/api/upload-batch` request of {first['files']} copies of a "
            f"{int(first['bytes_each']) / 1e6:.1f} MB JPEG (1560x1560, colour noise: it barely "
            f"compresses), then {one['ours'][0]['files'] if one['ours'] else '—'} single `/api/upload` "
            "requests one after another. Ours by default strips the metadata and answers once the "
            "photo and its row are stored, then writes two variants (three objects a photo) and a "
            "placeholder, for which it decodes the photo (`image.variants_after_answer`); \"all "
            "stored\" is the time until the last of them is stored, the answers' time for the "
            "original. The no-variants row turns variants and resizing off (the placeholder is "
            "still made), as the original does neither.",
            "",
            "| server | batch: photos/s, answers | batch: photos/s, all stored | uploaded, rows (all rounds) | single upload p50 ms | load |",
            "|---|---:|---:|---:|---:|---|",
        ]
        rows_for = [("ours", "portfolio-server (defaults)", "ours"),
                    ("plain", "portfolio-server, no variants or resizing", None),
                    ("orig", f"original, {orig['best_workers']} workers" if orig else "original", "orig")]
        for who, label, single in rows_for:
            runs = up[who]
            if not runs:
                continue
            singles = one.get(single, []) if single else []
            total = sum(int(u["files"]) for u in runs)
            loads = [u["load"] for u in runs + singles]
            out.append(
                f"| {label} | {med_range([float(u['photos_per_s']) for u in runs])} | "
                f"{med_range([float(u.get('all_stored_photos_per_s', u['photos_per_s'])) for u in runs])} | "
                f"{sum(int(u['uploaded']) for u in runs)} of {total}, {sum(int(u['rows']) for u in runs)} | "
                f"{med_range([float(s['p50_ms']) for s in singles]) if singles else '—'} | "
                f"{min(loads):.1f}–{max(loads):.1f} |")
        if up["orig"]:
            said = []
            tm = spread([float(u["photos_per_s"]) for u in up["orig"]])[0]
            for who, label in (("ours", "defaults"), ("plain", "no variants")):
                om = spread([float(u["photos_per_s"]) for u in up[who]])[0]
                am = spread([float(u["all_stored_photos_per_s"]) for u in up[who]])[0]
                said.append(f"Batch, ours ({label}) ÷ the original: **{ratio(om / tm)}** of the "
                            f"medians to the answers, {ratio(am / tm)} until all is stored.")
            if one["ours"] and one["orig"]:
                om = spread([float(s["p50_ms"]) for s in one["ours"]])[0]
                tm = spread([float(s["p50_ms"]) for s in one["orig"]])[0]
                said.append(f"Single upload p50: ours {om:.0f} ms, the original {tm:.0f} ms.")
            out += ["", " ".join(said)]
    out += ["", "![good answers per second, median and range of the rounds, per scenario and server](results.png)", ""]
    return out


def main():
    check = sys.argv[1] == "--check"
    raw = Path(sys.argv[-1])
    env = kv(raw / "env.txt")
    runs = wrk_runs(raw)

    def pgbench(name):
        text = Path(raw / f"{name}.txt").read_text()
        tps = float(re.search(r"tps = ([\d.]+)", text).group(1))
        m = re.search(r"latency average = ([\d.]+) ms", text)
        return tps, float(m.group(1)) if m else float("nan")

    pg_tps, pg_lat = pgbench("pgbench")
    deep_tps, deep_lat = pgbench("pgbench_deep")
    rss = kv(raw / "rss.txt")
    up = kv(raw / "upload.txt")
    storm = kv(raw / "storm.txt")
    ours, vips, img_batch = kv(raw / "image_pipeline.txt"), kv(raw / "image_vips.txt"), kv(raw / "image_batch.txt")
    signing = kv(raw / "signing.txt")
    img_ratio = float(vips["wall_median_s"]) / float(ours["wall_median_s"])
    two_growth_mib = int(ours["two_at_once_growth_kib"]) / 1024

    # The deep OFFSET is there to show what offsets cost at depth: its 503s ("database busy")
    # are reported on its own row, beside pgbench on the same query, not hidden in this sum.
    db_up = ["root", "cached", "uncached", "big_first", "big_keyset"]
    if check:
        problems = []
        for name in db_up + ["nginx", "outage", "big_offset"]:
            r = runs.get(name)
            if r is None:
                problems.append(f"{name}: did not run")
            elif r["ok"] == 0 or ((r["bad"] or r["non2xx"]) and name != "big_offset"):
                problems.append(f"{name}: ok={r['ok']} bad={r['bad']} non2xx={r['non2xx']}")
        for name in db_up:
            if name in runs and runs[name]["fallback"]:
                problems.append(f"{name}: {runs[name]['fallback']} fallback answers with the database up")
        if pg_tps <= 0:
            problems.append("pgbench: no transactions")
        if int(up["uploaded"]) != int(up["files"]) or up.get("still_waiting") != "0":
            problems.append(f"upload: {up}")
        if int(img_batch["uploaded"]) != int(img_batch["files"]):
            problems.append(f"image batch: {img_batch}")
        if ours.get("photo") != "2560x1707":
            problems.append(f"image pipeline: {ours}")
        if signing.get("urls") != "300" or not all(f"{b}_page_us" in signing for b in ("s3", "local")):
            problems.append(f"signing: {signing}")
        c = comparison(raw)
        for key, _, per in c["scenarios"]:
            if not per["ours"]:
                problems.append(f"cmp_ours_{key}: did not run")
            for k, r in enumerate(per["ours"], 1):
                if r["ok"] == 0 or r["bad"] or r["non2xx"]:
                    problems.append(f"cmp_ours_{key}_r{k}: ok={r['ok']} bad={r['bad']} non2xx={r['non2xx']}")
            if c["orig"] and not per["orig"]:
                problems.append(f"cmp_orig_{key}: did not run")
        for who in ("ours", "plain"):
            if not c["uploads"][who]:
                problems.append(f"uploads to the Supabase stand-in ({who}) did not run")
            for u in c["uploads"][who]:
                if not (u["uploaded"] == u["files"] == u["rows"]) or u.get("still_waiting") != "0":
                    problems.append(f"upload to the Supabase stand-in, {who}: {u}")
        for u in c["singles"]["ours"] or [{"files": "none ran"}]:
            if not (u.get("created") == u["files"] == u.get("rows")):
                problems.append(f"single uploads to the Supabase stand-in: {u}")
        for name in ("images_before", "images_during"):
            r = runs.get(name)
            if r is None or r["ok"] == 0 or r["bad"] or r["non2xx"]:
                problems.append(f"{name}: {r}")
        print("\n".join(problems) or "bench smoke: every scenario ran and answered correctly")
        sys.exit(1 if problems else 0)

    def row(label, name, note=""):
        r = runs[name]
        return (f"| {label} | {r['rps']:,.0f} | {r['p50']:.2f} | {r['p99']:.2f} | "
                f"{r['bad'] + r['non2xx'] + r['socket_errors']} | {r['fallback']} | {note} |")

    c, n = runs["cached"], runs["nginx"]
    ratios = {
        "cached": c["rps"] / n["rps"],
        "uncached": runs["uncached"]["rps"] / pg_tps,
        "keyset": runs["big_keyset"]["rps"] / runs["big_first"]["rps"],
        "offset": runs["big_offset"]["rps"] / runs["big_first"]["rps"],
    }
    errors_up = sum(runs[k]["bad"] + runs[k]["non2xx"] + runs[k]["socket_errors"] for k in db_up)
    fallback_up = sum(runs[k]["fallback"] for k in db_up)
    loaded_mib = int(rss["loaded_rss_kib"]) / 1024
    peak_mib = int(rss["peak_rss_kib"]) / 1024
    growth_mib = int(up["growth_kib"]) / 1024
    mb = int(up["bytes_each"]) / 1e6

    def verdict(ok):
        return "met" if ok else "**missed**"

    lines = [
        "# Benchmark results",
        "",
        f"Run by `bench/run.sh` on {env['date']}: {env['cpu']}, {env['cores']} cores, Linux {env['kernel']}.",
        f"{env['server']} ({env['rustc']}), {env['postgres']}, {env['nginx']}, {env['wrk']}.",
        f"Every load is `wrk -t2 -c{env['connections']} -d{env['duration']} --latency` with `bench/check.lua`, "
        "which counts a response only if it is a 200 with the right body (`req/s` is correct answers per "
        "second) and counts answers not from the database (`X-Data-Source` `stale` or `fallback`) in the "
        "fallback column. wrk, the server, nginx and PostgreSQL share the "
        "same cores. Raw output: `bench/raw/`.",
        "",
        "| scenario | req/s | p50 ms | p99 ms | errors | fallback | notes |",
        "|---|---:|---:|---:|---:|---:|---|",
        row("`GET /`", "root"),
        row("`GET /api/images?limit=10&offset=0`, cached", "cached", f"{ratios['cached']:.2f}× nginx"),
        row("nginx serving the same bytes from a file", "nginx", "the machine's ceiling"),
        row(f"uncached pages, offsets rotating over {int(env['rows_small']):,} rows", "uncached",
            f"{ratios['uncached']:.2f}× pgbench"),
        f"| pgbench, same SQL, {env['connections']} clients | {pg_tps:,.0f} | | | | | "
        f"latency avg {pg_lat:.2f} ms; the database's ceiling |",
        row(f"page 1 of {int(env['rows_big']):,} rows, uncached", "big_first"),
        row(f"offset {int(env['deep']):,}, uncached", "big_offset",
            f"{ratios['offset']:.3f}× page 1. The database is saturated: requests that queue past "
            "`database.queue_timeout_ms` get the page's last good copy (`stale`, counted in fallback) "
            "or a 503 (errors)"),
        f"| pgbench, offset {int(env['deep']):,}, {env['connections']} clients | {deep_tps:,.1f} | | | | | "
        f"latency avg {deep_lat:,.0f} ms; the database's ceiling for that query |",
        row(f"`after_id={int(env['deep']):,}` (keyset), uncached", "big_keyset", f"{ratios['keyset']:.2f}× page 1"),
        row("database stopped: rotating pages (stale or embedded)", "outage"),
        "",
        f"Memory: the cached server used {int(rss['idle_rss_kib']) / 1024:.1f} MiB RSS idle, "
        f"{loaded_mib:.1f} MiB at the end of scenario 1 (peak {peak_mib:.1f} MiB). "
        + memory_parts(rss, int(env["rows_small"])),
        f"Batch upload: {up['files']} JPEGs of {mb:.1f} MB ({int(up['files']) * mb:.0f} MB) in one "
        f"`/api/upload-batch` request to the local backend took {float(up['wall_s']):.1f} s "
        f"({up['uploaded']} uploaded, {up['skipped']} skipped, {up['failed']} failed), and "
        f"{float(up['all_stored_s']):.1f} s until every variant was stored; "
        f"peak RSS grew by {growth_mib:.1f} MiB.",
        f"Connection storm (`bench/storm.py`): {int(storm['connections']):,} keep-alive connections "
        f"({storm['answered']} answered): RSS {int(storm['idle_rss_kib']) / 1024:.1f} MiB idle, "
        f"{int(storm['held_rss_kib']) / 1024:.1f} MiB while they were open, "
        f"{int(storm['after_close_10s_rss_kib']) / 1024:.1f} MiB 10 s after they closed.",
        "",
        *comparison_lines(raw, env),
        "## Image pipeline",
        "",
        f"One {ours['input_width']}x{ours['input_height']} JPEG of {int(ours['input_bytes']) / 1e6:.1f} MB "
        f"(`bench/run.sh` makes it: gradients and sensor-like noise, quality 92), median of {ours['runs']} runs each.",
        "",
        "| | wall s | CPU s | outputs |",
        "|---|---:|---:|---|",
        f"| portfolio-server pipeline (`bench/pipeline.rs`: headers, decode, upright, 3 encodes, ThumbHash) | "
        f"{float(ours['wall_median_s']):.3f} | {float(ours['cpu_s']):.3f} | {ours['photo']}, {ours['variants']} |",
        f"| `vipsthumbnail` ({vips['version']}), `-s 2560`, `-s 1200`, `-s 400`, `[Q=85,strip]` | "
        f"{float(vips['wall_median_s']):.3f} | {float(vips['cpu_s']):.3f} | three runs, peak RSS "
        f"{int(vips['maxrss_kib']) / 1024:.0f} MiB |",
        "",
        f"Ratio (libvips wall / ours): **{img_ratio:.2f}**. Two photos processed at once: peak RSS grew "
        f"{two_growth_mib:.1f} MiB. A batch of {img_batch['files']} such photos in one `/api/upload-batch` "
        f"request (local storage, cache on): {float(img_batch['wall_s']):.1f} s, "
        f"{float(img_batch['photos_per_s']):.2f} photos/s, server RSS grew {int(img_batch['growth_kib']) / 1024:.1f} MiB. "
        f"The cached listing on the same server answered {runs['images_before']['rps']:,.0f} req/s before the "
        f"batch and {runs['images_during']['rps']:,.0f} req/s during it (p99 {runs['images_before']['p99']:.2f} → "
        f"{runs['images_during']['p99']:.2f} ms; each upload invalidates the cached pages).",
        "",
        "## Private mode: signing a page",
        "",
        f"`bench/signing.rs`: a page of {signing['photos']} photos, {signing['urls']} URLs (each photo and its "
        f"two variants), median of {signing['runs']} runs. Signed once per page per quarter of "
        "`storage.signed_url_secs` (15 min by default), not per request.",
        "",
        "| backend | the store signs 300 URLs | the page: rows signed and serialised |",
        "|---|---:|---:|",
        f"| S3 (SigV4 query signing, local) | {float(signing['s3_sign_us']) / 1000:.2f} ms | "
        f"{float(signing['s3_page_us']) / 1000:.2f} ms |",
        f"| local `/media` (HMAC-SHA256) | {float(signing['local_sign_us']) / 1000:.2f} ms | "
        f"{float(signing['local_page_us']) / 1000:.2f} ms |",
        "",
        "Supabase signs a page with one request to its sign endpoint: its cost is that round trip.",
        "",
        "## Targets",
        "",
        "| target | measured | |",
        "|---|---|---|",
        f"| cached page ≥ 0.8× nginx | {ratios['cached']:.2f}× | {verdict(ratios['cached'] >= 0.8)} |",
        f"| cached page p99 ≤ 2 ms | {c['p99']:.2f} ms | {verdict(c['p99'] <= 2)} |",
        f"| uncached ≥ 0.5× pgbench | {ratios['uncached']:.2f}× | {verdict(ratios['uncached'] >= 0.5)} |",
        f"| keyset at depth within 2× of page 1 | {ratios['keyset']:.2f}× | {verdict(ratios['keyset'] >= 0.5)} |",
        f"| 0 errors, 0 fallback with the database up (deep offset: see its row) | "
        f"{errors_up} errors, {fallback_up} fallback; at the deep offset {runs['big_offset']['bad'] + runs['big_offset']['non2xx']} "
        f"errors and {runs['big_offset']['fallback']} stale copies while the database was saturated | "
        f"{verdict(errors_up == 0 and fallback_up == 0 and runs['big_offset']['fallback'] == 0)} |",
        f"| fallback p99 ≤ 5 ms, no errors | {runs['outage']['p99']:.2f} ms, "
        f"{runs['outage']['bad'] + runs['outage']['non2xx']} errors | "
        f"{verdict(runs['outage']['p99'] <= 5 and runs['outage']['bad'] + runs['outage']['non2xx'] == 0)} |",
        f"| RSS under load ≤ 32 MiB | {peak_mib:.1f} MiB peak | {verdict(peak_mib <= 32)} |",
        f"| batch upload RSS growth ≤ 64 MiB | {growth_mib:.1f} MiB | {verdict(growth_mib <= 64)} |",
        f"| image pipeline at least as fast as libvips (ratio ≥ 1.0) | {img_ratio:.2f} | {verdict(img_ratio >= 1.0)} |",
        f"| two photos at once: RSS growth < 128 MiB | {two_growth_mib:.1f} MiB | {verdict(two_growth_mib < 128)} |",
        f"| memory given back 10 s after a storm (within 8 MiB of idle) | "
        f"{int(storm['after_close_10s_rss_kib']) / 1024:.1f} MiB after, {int(storm['idle_rss_kib']) / 1024:.1f} MiB idle | "
        f"{verdict(int(storm['after_close_10s_rss_kib']) - int(storm['idle_rss_kib']) <= 8 * 1024)} |",
        "",
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
