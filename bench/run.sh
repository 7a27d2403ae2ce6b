#!/usr/bin/env bash
# Benchmarks portfolio-server beside the ceilings of the same machine, in one run:
# nginx serving the identical bytes, and pgbench running the same SQL. Writes bench/results.md
# and keeps the raw wrk/pgbench output in bench/raw/.
#
#   bench/run.sh            the full run (about 8 minutes after the release build)
#   QUICK=1 bench/run.sh    a smoke test of every part: 1 s runs, small tables (CI)
#   ORIGINAL_DIR=path bench/run.sh
#                           also runs the original Python server (a checkout of
#                           Tydos/portfolio-backend-server) on the same database and scenarios,
#                           taking turns with ours for ROUNDS rounds (default 3)
#
# Needs root (apt-get for wrk/nginx/PostgreSQL when missing; PostgreSQL runs as `postgres`).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then
  DUR=1s; ROWS_SMALL=2000; ROWS_BIG=20000; BATCH=5; STORM=300; IMG_RUNS=1; IMG_BATCH=3; SIGN_RUNS=20
  PROBE_DUR=1s; ORIG_WORKERS="2"; ROUNDS=${ROUNDS:-1}; CMP_BATCH=3; CMP_SINGLES=3
else
  DUR=10s; ROWS_SMALL=10000; ROWS_BIG=1000000; BATCH=100; STORM=5000; IMG_RUNS=5; IMG_BATCH=20; SIGN_RUNS=500
  PROBE_DUR=5s; ORIG_WORKERS="2 4 8"; ROUNDS=${ROUNDS:-3}; CMP_BATCH=20; CMP_SINGLES=20
fi
DELAY_MS=${DELAY_MS:-20}       # each way, for the remote-database scenario
ORIGINAL_DIR=${ORIGINAL_DIR:-}
DEEP=$((ROWS_BIG * 9 / 10))
CONNS=100
RAW=$ROOT/bench/raw
if [ "$QUICK" = 1 ]; then RAW=$(mktemp -d /tmp/portfolio-bench-raw.XXXXXX); fi
mkdir -p "$RAW"
rm -f "$RAW"/*.txt

log() { printf '\n== %s\n' "$*" >&2; }

# --- tools a fresh machine lacks ------------------------------------------------------------
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql-15)
command -v pgbench >/dev/null || missing+=(postgresql-contrib)
command -v curl >/dev/null || missing+=(curl)
command -v vipsthumbnail >/dev/null || missing+=(libvips-tools)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
python3 -c 'import PIL' 2>/dev/null || pip install -q pillow
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

# --- Python environments, made once and kept in $BENCH_CACHE ----------------------------------
CACHE=${BENCH_CACHE:-$HOME/.cache/portfolio-bench}
mkdir -p "$CACHE"
venv() { # dir pip-arguments...: a virtual environment with these packages
  local dir=$1; shift
  [ -f "$dir/.ready" ] && return 0
  rm -rf "$dir"
  python3 -m venv "$dir" 2>/dev/null || {
    apt-get install -y -qq python3-venv >/dev/null && python3 -m venv "$dir"; }
  "$dir/bin/pip" install -q "$@"
  touch "$dir/.ready"
}
log "matplotlib for the chart"
venv "$CACHE/chart-venv" matplotlib
if [ -n "$ORIGINAL_DIR" ]; then
  ORIGINAL_DIR=$(cd "$ORIGINAL_DIR" && pwd)
  if [ ! -f "$ORIGINAL_DIR/main.py" ] || [ ! -f "$ORIGINAL_DIR/requirements.txt" ]; then
    echo "ORIGINAL_DIR=$ORIGINAL_DIR has no main.py and requirements.txt:" \
      "give a checkout of Tydos/portfolio-backend-server with /api/images and /api/upload-batch" >&2
    exit 1
  fi
  ORIG_VENV=$CACHE/original-venv-$(sha256sum "$ORIGINAL_DIR/requirements.txt" | cut -c1-12)
  log "the original's requirements into $ORIG_VENV"
  venv "$ORIG_VENV" -r "$ORIGINAL_DIR/requirements.txt"
else
  log "ORIGINAL_DIR is not set: skipping the comparison with the original Python server"
fi
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)

log "building the release binary"
cargo build --release --locked --bins --example pipeline --example signing 2>&1 | tail -1
BIN=$ROOT/target/release/portfolio-server

# --- a throwaway PostgreSQL ---------------------------------------------------------------
WORK=$(mktemp -d /tmp/portfolio-bench.XXXXXX)
chmod 755 "$WORK"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$WORK/nginx/nginx.pid" ] && kill "$(cat "$WORK/nginx/nginx.pid")" 2>/dev/null || true
  runuser -u postgres -- "$PGBIN/pg_ctl" -D "$WORK/pg" stop -m immediate >/dev/null 2>&1 || true
  rm -rf "$WORK"
  if [ "$QUICK" = 1 ]; then rm -rf "$RAW"; fi
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PGPORT=$(free_port)
mkdir -p "$WORK/pg" && chown postgres "$WORK/pg"
log "starting PostgreSQL on port $PGPORT"
runuser -u postgres -- "$PGBIN/initdb" -D "$WORK/pg" -U postgres --auth=trust -E UTF8 >/dev/null
pg_ctl() { runuser -u postgres -- "$PGBIN/pg_ctl" -D "$WORK/pg" -l "$WORK/pg/log" "$@" >/dev/null; }
PGOPTS="-p $PGPORT -k $WORK/pg -c listen_addresses=127.0.0.1 -c max_connections=300 -c shared_buffers=256MB -c fsync=off -c synchronous_commit=off"
pg_ctl -o "$PGOPTS" -w start
PSQL=(psql -h 127.0.0.1 -p "$PGPORT" -U postgres -q -v ON_ERROR_STOP=1)
URL_SMALL=postgres://postgres@127.0.0.1:$PGPORT/small
URL_BIG=postgres://postgres@127.0.0.1:$PGPORT/big

seed() { # db rows
  "${PSQL[@]}" -c "CREATE DATABASE $1"
  DATABASE_URL=postgres://postgres@127.0.0.1:$PGPORT/$1 "$BIN" migrate 2>/dev/null
  "${PSQL[@]}" -d "$1" -c "INSERT INTO photographs (filename, url, category, width, height)
    SELECT 'photo-' || i || '.jpg', 'https://cdn.example/photos/photo-' || i || '.jpg',
           (ARRAY['nature','city','travel','street'])[1 + i % 4], 4000, 3000
    FROM generate_series(1, $2) AS i" -c "VACUUM ANALYZE photographs"
}
log "seeding $ROWS_SMALL and $ROWS_BIG rows"
seed small "$ROWS_SMALL"
seed big "$ROWS_BIG"

# --- the servers ----------------------------------------------------------------------------
start_server() { # name port url [VAR=value ...]
  local name=$1 port=$2 url=$3; shift 3
  # exec: $! is the server's own pid.
  (cd "$WORK" && exec env -i PATH="$PATH" HOME="$WORK" PORT="$port" APP_SERVER__HOST=127.0.0.1 \
     DATABASE_URL="$url" "$@" "$BIN" >"$WORK/$name.log" 2>&1) &
  PIDS+=($!)
  eval "PID_$name=$!"
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$port/api/health" >/dev/null && return 0
    sleep 0.1
  done
  echo "server $name did not start:" >&2; cat "$WORK/$name.log" >&2; exit 1
}
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
hwm_kib() { awk '/^VmHWM/ {print $2}' "/proc/$1/status"; }

# The Supabase stand-in both servers' uploads go to in scenario 11 (the original stores only
# there), and the original's own copy: without its .env, which python-dotenv would otherwise
# load over our settings (override=True) and so reach whatever database it names.
P_STORE=$(free_port)
python3 "$ROOT/bench/storage_standin.py" "$P_STORE" images >"$WORK/store.log" 2>&1 &
PIDS+=($!)
FAKE_JWT=eyJhbGciOiJIUzI1NiJ9.eyJyb2xlIjoic2VydmljZV9yb2xlIn0.YmVuY2g # supabase-py wants JWT-shaped
if [ -n "$ORIGINAL_DIR" ]; then
  mkdir -p "$WORK/original"
  tar -C "$ORIGINAL_DIR" --exclude=.git --exclude=.env --exclude='.venv' -cf - . | tar -C "$WORK/original" -xf -
fi
start_original() { # name port database-url workers
  local name=$1 port=$2 url=$3 workers=$4
  (cd "$WORK/original" && exec env -i PATH="$PATH" HOME="$WORK" DATABASE_URL="$url" \
     SUPABASE_URL="http://127.0.0.1:$P_STORE" SUPABASE_KEY="$FAKE_JWT" SUPABASE_BUCKET=images \
     ADMIN_API_KEY=bench-key "$ORIG_VENV/bin/uvicorn" main:app --host 127.0.0.1 --port "$port" \
     --workers "$workers" --log-level warning >"$WORK/$name.log" 2>&1) &
  PIDS+=($!)
  eval "PID_$name=$!"
  for _ in $(seq 300); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/api/health")" = 200 ] && return 0
    sleep 0.1
  done
  echo "the original ($name) did not start:" >&2; cat "$WORK/$name.log" >&2; exit 1
}
stop() { # name: a server started above, and its workers
  local pid; pid=$(eval "echo \$PID_$1")
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

P_CACHED=$(free_port); P_UNCACHED=$(free_port); P_BIG=$(free_port); P_UPLOAD=$(free_port)
start_server cached "$P_CACHED" "$URL_SMALL"
start_server uncached "$P_UNCACHED" "$URL_SMALL" APP_CACHE__MAX_BYTES=0
start_server big "$P_BIG" "$URL_BIG" APP_CACHE__MAX_BYTES=0
start_server upload "$P_UPLOAD" "$URL_SMALL" ADMIN_API_KEY=bench-key \
  APP_STORAGE__LOCAL_DIR="$WORK/media" APP_CACHE__MAX_BYTES=0
PID_CACHED=$PID_cached

# --- wrk ------------------------------------------------------------------------------------
run_wrk() { # name url [VAR=value ...]: wrk with the checking script, output kept in raw/
  local name=$1 url=$2; shift 2
  local load; load=$(cut -d' ' -f1 /proc/loadavg)
  env "$@" wrk -t2 -c"$CONNS" -d"${WRK_DUR:-$DUR}" --timeout 10s --latency -s "$ROOT/bench/check.lua" "$url" \
    >"$RAW/$name.txt" 2>&1
  echo "loadavg_before=$load" >>"$RAW/$name.txt"
  grep -E 'Requests/sec|checked:' "$RAW/$name.txt" | tr '\n' ' ' >&2; echo >&2
}

echo "idle_rss_kib=$(rss_kib "$PID_CACHED")" >"$RAW/rss.txt"

log "1. cached: GET / and GET /api/images?limit=10&offset=0"
PAGE="/api/images?limit=10&offset=0"
curl -sf "http://127.0.0.1:$P_CACHED/" >"$WORK/root.json"
curl -sf "http://127.0.0.1:$P_CACHED$PAGE" >"$WORK/page.json"
run_wrk root "http://127.0.0.1:$P_CACHED/" EXPECT_FILE="$WORK/root.json"
run_wrk cached "http://127.0.0.1:$P_CACHED$PAGE" EXPECT_FILE="$WORK/page.json"
echo "loaded_rss_kib=$(rss_kib "$PID_CACHED")" >>"$RAW/rss.txt"
echo "peak_rss_kib=$(hwm_kib "$PID_CACHED")" >>"$RAW/rss.txt"
# What that RSS is made of (bench/smaps.py), and the same load on a server without the copy of
# the table kept for outages, the one part that grows with the table.
python3 "$ROOT/bench/smaps.py" "$PID_CACHED" | sed 's/^/loaded_/' >>"$RAW/rss.txt"
P_NOCOPY=$(free_port)
start_server nocopy "$P_NOCOPY" "$URL_SMALL" APP_CACHE__COPY_MAX_ROWS=0
run_wrk cached_nocopy "http://127.0.0.1:$P_NOCOPY$PAGE" EXPECT_FILE="$WORK/page.json"
python3 "$ROOT/bench/smaps.py" "$PID_nocopy" | sed 's/^/nocopy_/' >>"$RAW/rss.txt"
stop nocopy

log "2. nginx serving the same bytes"
mkdir -p "$WORK/www/api" "$WORK/nginx"
cp "$WORK/page.json" "$WORK/www/api/images"
P_NGINX=$(free_port)
cat >"$WORK/nginx/nginx.conf" <<CONF
worker_processes auto;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 10000000;
  # Tuned as a user would: every core (worker_processes auto) and the open-file cache.
  open_file_cache max=1000 inactive=60s;
  open_file_cache_valid 60s;
  open_file_cache_errors on;
  client_body_temp_path $WORK/nginx; proxy_temp_path $WORK/nginx; fastcgi_temp_path $WORK/nginx;
  uwsgi_temp_path $WORK/nginx; scgi_temp_path $WORK/nginx;
  server {
    listen 127.0.0.1:$P_NGINX;
    root $WORK/www;
    location / { default_type "application/json; charset=utf-8"; }
  }
}
CONF
"$NGINX" -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx"
sleep 0.5
run_wrk nginx "http://127.0.0.1:$P_NGINX$PAGE" EXPECT_FILE="$WORK/page.json"

# The server's own page statement (sql/queries/page.sql) for pgbench: limit $1, offset $2, no
# keyset or category filter (both NULL, as for a plain `?limit=&offset=` request).
page_script() {
  sed -e '/^--/d' -e "s/\$1/$1/; s/\$2/$2/; s/\$3/NULL/g; s/\$4/NULL/g" "$ROOT/sql/queries/page.sql"
  echo ';'
}

log "3. uncached pages, rotating offsets over $ROWS_SMALL rows; pgbench on the same SQL"
run_wrk uncached "http://127.0.0.1:$P_UNCACHED/" ROTATE=$((ROWS_SMALL - 10))
{
  printf '%s\n' "\\set off random(0, $((ROWS_SMALL - 11)))"
  page_script "10" ":off"
} >"$WORK/page.sql"
pgbench -h 127.0.0.1 -p "$PGPORT" -U postgres -n -M extended -c "$CONNS" -j 2 -T "${DUR%s}" \
  -f "$WORK/page.sql" small >"$RAW/pgbench.txt" 2>&1
grep -E '^tps' "$RAW/pgbench.txt" >&2

log "4. depth $DEEP of $ROWS_BIG rows: keyset and offset (cache off); pgbench on the deep offset"
run_wrk big_first "http://127.0.0.1:$P_BIG/api/images?limit=10&offset=0"
run_wrk big_keyset "http://127.0.0.1:$P_BIG/api/images?after_id=$DEEP&limit=10"
# Last: a deep OFFSET reads $DEEP rows per query, and requests still queued when wrk stops run on
# (up to database.queue_timeout_ms) until they are answered.
run_wrk big_offset "http://127.0.0.1:$P_BIG/api/images?limit=10&offset=$DEEP"
page_script "10" "$DEEP" >"$WORK/deep.sql"
wait_idle() {
  for _ in $(seq 300); do
    [ "$("${PSQL[@]}" -Atc "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND pid <> pg_backend_pid()")" = 0 ] && return 0
    sleep 0.1
  done
}
# Until every upload named $1* has its variants (ours makes them after the answer by default),
# for at most 60 s; polled inside PostgreSQL, so no process is started per check. Prints the
# time it ended and how many are still waiting.
wait_variants() {
  "${PSQL[@]}" -d small -q -c "DO \$\$ BEGIN FOR i IN 1..3000 LOOP
    EXIT WHEN NOT EXISTS (SELECT 1 FROM photographs WHERE filename LIKE '$1%' AND variants_pending);
    PERFORM pg_sleep(0.02); END LOOP; END \$\$"
  echo "$(date +%s.%N) $("${PSQL[@]}" -d small -Atc \
    "SELECT count(*) FROM photographs WHERE filename LIKE '$1%' AND variants_pending")"
}
wait_idle
pgbench -h 127.0.0.1 -p "$PGPORT" -U postgres -n -M extended -c "$CONNS" -j 2 -T "${DUR%s}" \
  -f "$WORK/deep.sql" big >"$RAW/pgbench_deep.txt" 2>&1
grep -E '^tps' "$RAW/pgbench_deep.txt" >&2
wait_idle

good_rps() { python3 -c 'import sys; sys.path.insert(0, sys.argv[1]); from report import wrk; print(round(wrk(sys.argv[2])["rps"]))' "$ROOT/bench" "$1"; }

log "11. PostgreSQL ${DELAY_MS} ms away each way, through a loopback proxy"
P_PROXY=$(free_port)
python3 "$ROOT/bench/delay_proxy.py" "$P_PROXY" "$PGPORT" "$DELAY_MS" >"$WORK/proxy.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$P_PROXY") 2>/dev/null && break; sleep 0.1; done
URL_REMOTE=postgres://postgres@127.0.0.1:$P_PROXY/small
P_RC=$(free_port); P_RU=$(free_port)
# Ours as deployed (the page cache on) for the first page; with the cache off for rotating pages,
# where only the pool and the driver's round trips count.
start_server remote_c "$P_RC" "$URL_REMOTE"
start_server remote_u "$P_RU" "$URL_REMOTE" APP_CACHE__MAX_BYTES=0

log "6. batch upload of $BATCH generated JPEGs (local storage)"
python3 - "$WORK/jpegs" "$BATCH" <<'PY'
import os, sys
from PIL import Image
out, n = sys.argv[1], int(sys.argv[2])
os.makedirs(out, exist_ok=True)
# Colour noise barely compresses: about 3 MB at this size and quality.
img = Image.merge("RGB", [Image.effect_noise((1560, 1560), 100) for _ in range(3)])
img.save(os.path.join(out, "p0.jpg"), quality=95)
data = open(os.path.join(out, "p0.jpg"), "rb").read()
for i in range(1, n):
    open(os.path.join(out, f"p{i}.jpg"), "wb").write(data)
print(f"jpeg_bytes={len(data)}")
PY
PID_UPLOAD=$PID_upload
BASE_RSS=$(rss_kib "$PID_UPLOAD")
echo 5 >"/proc/$PID_UPLOAD/clear_refs" # reset the peak-RSS mark
args=()
for f in "$WORK"/jpegs/*.jpg; do args+=(-F "files=@$f"); done
T0=$(date +%s.%N)
curl -sf -X POST "http://127.0.0.1:$P_UPLOAD/api/upload-batch" -H "X-API-Key: bench-key" \
  -F category=bench "${args[@]}" >"$WORK/batch.json"
T1=$(date +%s.%N)
read -r T2 WAITING < <(wait_variants p) # the peak includes the variants made after the answers
python3 - "$WORK/batch.json" "$T0" "$T1" "$BASE_RSS" "$(hwm_kib "$PID_UPLOAD")" "$(du -b "$WORK/jpegs/p0.jpg" | cut -f1)" "$BATCH" "$T2" "$WAITING" >"$RAW/upload.txt" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
t0, t1, base, peak, size, n = float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
t2, waiting = float(sys.argv[8]), int(sys.argv[9])
print(f"files={n} bytes_each={size} uploaded={len(report['uploaded'])} skipped={len(report['skipped'])} failed={len(report['failed'])}")
print(f"wall_s={t1 - t0:.2f} all_stored_s={max(t1, t2) - t0:.2f} still_waiting={waiting} base_rss_kib={base} peak_rss_kib={peak} growth_kib={peak - base}")
PY
cat "$RAW/upload.txt" >&2

# --- against the original, in interleaved rounds -------------------------------------------
# Every scenario runs ROUNDS times, ours then the original's, round after round, so that the
# machine's drift (the load average is written beside every run) falls on both servers alike;
# the report gives the median and range of each and the ratio of the medians.
if [ -n "$ORIGINAL_DIR" ]; then
  # More workers are more connections (10 each): 20 ms from the database that is what counts,
  # so the remote scenarios get their own best count, probed on rotating pages there.
  log "10. the original Python server: its best worker count, local (cached first page) and remote"
  best_rps=-1; best_remote_rps=-1
  for w in 1 $ORIG_WORKERS; do
    port=$(free_port)
    start_original "probe$w" "$port" "$URL_SMALL" "$w"
    curl -sf "http://127.0.0.1:$port$PAGE" >"$WORK/orig_page.json"
    WRK_DUR=$PROBE_DUR run_wrk "probe_w$w" "http://127.0.0.1:$port$PAGE" EXPECT_FILE="$WORK/orig_page.json"
    stop "probe$w"
    rps=$(good_rps "$RAW/probe_w$w.txt")
    if [ "$rps" -gt "$best_rps" ]; then BEST=$w; best_rps=$rps; fi
    start_original "probe_r$w" "$port" "$URL_REMOTE" "$w"
    WRK_DUR=$PROBE_DUR run_wrk "probe_remote_w$w" "http://127.0.0.1:$port/" ROTATE=$((ROWS_SMALL - 10))
    stop "probe_r$w"
    rps=$(good_rps "$RAW/probe_remote_w$w.txt")
    if [ "$rps" -gt "$best_remote_rps" ]; then BEST_R=$w; best_remote_rps=$rps; fi
  done
  log "the original's best worker count here: $BEST local, $BEST_R remote"
  P_ORIG=$(free_port); P_ORIG_R=$(free_port)
  start_original orig "$P_ORIG" "$URL_SMALL" "$BEST"
  start_original orig_r "$P_ORIG_R" "$URL_REMOTE" "$BEST_R"
  curl -sf "http://127.0.0.1:$P_ORIG/" >"$WORK/orig_root.json"
  curl -sf "http://127.0.0.1:$P_ORIG$PAGE" >"$WORK/orig_page.json"
  if [ "$(head -c 9 "$WORK/orig_page.json")" != '[{"id":1,' ]; then
    echo "the original's first page is not the database's rows:" >&2; cat "$WORK/orig_page.json" >&2; exit 1
  fi
  {
    echo "best_workers=$BEST"
    echo "best_workers_remote=$BEST_R"
    echo "candidates=1 $ORIG_WORKERS"
    echo "commit=$(git -C "$ORIGINAL_DIR" rev-parse --short HEAD 2>/dev/null || echo "not a git checkout")"
    echo "python=$("$ORIG_VENV/bin/python" --version 2>&1)"
    echo "packages=$("$ORIG_VENV/bin/pip" freeze 2>/dev/null | grep -iE '^(fastapi|uvicorn|psycopg2-binary|pydantic)==' | sed 's/==/ /' | paste -sd, - | sed 's/,/, /g')"
  } >"$RAW/original.txt"
  wait_idle
fi
SERVERS="ours"; [ -n "$ORIGINAL_DIR" ] && SERVERS="ours orig"
compare() { # server scenario round: one wrk run of the comparison
  local who=$1 s=$2 k=$3 port url pre="" conns=$CONNS args=()
  [ "$who" = orig ] && pre=orig_
  case "$who:$s" in
    ours:root | ours:cached) port=$P_CACHED ;;
    ours:uncached | ours:outage) port=$P_UNCACHED ;;
    ours:remote_cached) port=$P_RC ;;
    ours:remote_uncached*) port=$P_RU ;;
    orig:remote_*) port=$P_ORIG_R ;;
    orig:*) port=$P_ORIG ;;
  esac
  case $s in
    root) url=/; args=(EXPECT_FILE="$WORK/${pre}root.json") ;;
    cached | remote_cached) url=$PAGE; args=(EXPECT_FILE="$WORK/${pre}page.json") ;;
    *) url=/; args=(ROTATE=$((ROWS_SMALL - 10))) ;;
  esac
  [ "$s" = remote_uncached_c10 ] && conns=10
  CONNS=$conns run_wrk "cmp_${who}_${s}_r$k" "http://127.0.0.1:$port$url" "${args[@]}"
}

# Uploads: scenario 6's JPEG (about 3 MB, 1560x1560, no EXIF) into the Supabase stand-in, under
# fresh names each time, category `nature` (the original accepts six categories only).
P_SB=$(free_port); P_SBP=$(free_port)
SB_ENV=(ADMIN_API_KEY=bench-key SUPABASE_URL="http://127.0.0.1:$P_STORE" SUPABASE_KEY="$FAKE_JWT"
  APP_CACHE__MAX_BYTES=0)
start_server sb "$P_SB" "$URL_SMALL" "${SB_ENV[@]}"
# Like the original: no variants, no resizing (its metadata is still removed).
start_server sb_plain "$P_SBP" "$URL_SMALL" "${SB_ENV[@]}" APP_IMAGE__MAX_DIMENSION=0 \
  APP_IMAGE__THUMB_PX=0 APP_IMAGE__MEDIUM_PX=0
rows_named() { "${PSQL[@]}" -d small -Atc "SELECT count(*) FROM photographs WHERE filename LIKE '$1%'"; }
upload_batch() { # name port prefix: one /api/upload-batch of CMP_BATCH photos
  local dir=$WORK/cmp-$3 t0 t1 load; mkdir -p "$dir"
  local args=()
  for i in $(seq 0 $((CMP_BATCH - 1))); do
    cp "$WORK/jpegs/p0.jpg" "$dir/$3$i.jpg"; args+=(-F "files=@$dir/$3$i.jpg")
  done
  load=$(cut -d' ' -f1 /proc/loadavg)
  t0=$(date +%s.%N)
  curl -s -X POST "http://127.0.0.1:$2/api/upload-batch" -H "X-API-Key: bench-key" \
    -F category=nature "${args[@]}" >"$WORK/$1.json"
  t1=$(date +%s.%N)
  if [[ $1 == *_orig_* ]]; then t2=$t1 waiting=0; else read -r t2 waiting < <(wait_variants "$3"); fi
  python3 - "$WORK/$1.json" "$t0" "$t1" "$CMP_BATCH" "$(rows_named "$3")" \
    "$(du -b "$WORK/jpegs/p0.jpg" | cut -f1)" "$load" "$t2" "$waiting" >"$RAW/$1.txt" <<'PY'
import json, sys
path, t0, t1, n, rows, size, load = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), sys.argv[7]
t2, waiting = float(sys.argv[8]), int(sys.argv[9])
try:
    r = json.load(open(path))
    up, sk, fa = len(r["uploaded"]), len(r["skipped"]), len(r["failed"])
except (ValueError, KeyError, TypeError):
    up, sk, fa = 0, 0, n
print(f"files={n} bytes_each={size} uploaded={up} skipped={sk} failed={fa} rows={rows}")
print(f"wall_s={t1 - t0:.2f} photos_per_s={n / (t1 - t0):.2f} loadavg_before={load}")
# Until the last variant is stored: the answers' time for a server that makes them before.
done = max(t1, t2)
print(f"all_stored_s={done - t0:.2f} all_stored_photos_per_s={n / (done - t0):.2f} still_waiting={waiting}")
PY
  echo "$1: $(tr '\n' ' ' <"$RAW/$1.txt")" >&2
}
upload_single() { # name port prefix: CMP_SINGLES /api/upload requests, one after another
  local dir=$WORK/one-$3 load; mkdir -p "$dir"
  load=$(cut -d' ' -f1 /proc/loadavg)
  for i in $(seq 0 $((CMP_SINGLES - 1))); do
    cp "$WORK/jpegs/p0.jpg" "$dir/$3$i.jpg"
    curl -s -o /dev/null -w '%{http_code} %{time_total}\n' -X POST "http://127.0.0.1:$2/api/upload" \
      -H "X-API-Key: bench-key" -F category=nature -F "file=@$dir/$3$i.jpg"
  done >"$WORK/$1.times"
  wait_variants "$3" >/dev/null # none left to compete with the next scenario
  python3 - "$WORK/$1.times" "$(rows_named "$3")" "$load" >"$RAW/$1.txt" <<'PY'
import statistics, sys
runs = [line.split() for line in open(sys.argv[1])]
rows, load = sys.argv[2], sys.argv[3]
ms = sorted(1000 * float(t) for _, t in runs)
created = sum(code == "201" for code, _ in runs)
print(f"files={len(runs)} created={created} rows={rows}")
print(f"p50_ms={statistics.median(ms):.1f} min_ms={ms[0]:.1f} max_ms={ms[-1]:.1f} loadavg_before={load}")
PY
  echo "$1: $(tr '\n' ' ' <"$RAW/$1.txt")" >&2
}
SCENARIOS="root cached uncached remote_cached remote_uncached remote_uncached_c10"
for k in $(seq "$ROUNDS"); do
  log "12. round $k of $ROUNDS: $SCENARIOS, then uploads (${SERVERS// /, })"
  for s in $SCENARIOS; do
    for who in $SERVERS; do compare "$who" "$s" "$k"; done
  done
  wait_idle
  upload_batch "upcmp_ours_r$k" "$P_SB" "ours$k-"
  upload_batch "upcmp_plain_r$k" "$P_SBP" "plain$k-"
  [ -n "$ORIGINAL_DIR" ] && upload_batch "upcmp_orig_r$k" "$P_ORIG" "orig$k-"
  upload_single "upone_ours_r$k" "$P_SB" "one$k-"
  [ -n "$ORIGINAL_DIR" ] && upload_single "upone_orig_r$k" "$P_ORIG" "origone$k-"
  # The next round's pages are the seeded rows again (`check.lua` checks them).
  "${PSQL[@]}" -d small -c "DELETE FROM photographs WHERE id > $ROWS_SMALL"
done
stop sb; stop sb_plain; stop remote_c; stop remote_u
[ -n "$ORIGINAL_DIR" ] && stop orig_r
wait_idle

log "9. image pipeline: one 6000x4000 photo beside vipsthumbnail, then a batch of $IMG_BATCH"
python3 - "$WORK/photos" "$IMG_BATCH" <<'PY'
import os, sys
from PIL import Image
out, n = sys.argv[1], int(sys.argv[2])
os.makedirs(out, exist_ok=True)
# Photo-like: smooth gradients with sensor-like noise, quality 92: about 8 MB, as from a camera.
grad = Image.linear_gradient("L").resize((6000, 4000))
bands = [Image.blend(grad, Image.effect_noise((6000, 4000), 18), 0.5) for _ in range(3)]
Image.merge("RGB", bands).save(os.path.join(out, "big.jpg"), quality=92)
data = open(os.path.join(out, "big.jpg"), "rb").read()
os.makedirs(os.path.join(out, "batch"), exist_ok=True)
for i in range(n):
    open(os.path.join(out, "batch", f"img{i}.jpg"), "wb").write(data)
PY
"$ROOT/target/release/examples/pipeline" "$WORK/photos/big.jpg" "$IMG_RUNS" >"$RAW/image_pipeline.txt"
# libvips: the three sizes the server makes, metadata stripped, each a run of vipsthumbnail.
python3 - "$WORK/photos/big.jpg" "$IMG_RUNS" "$WORK" >"$RAW/image_vips.txt" <<'PY'
import resource, statistics, subprocess, sys, time
src, runs, work = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def once():
    for size in (2560, 1200, 400):
        subprocess.run(["vipsthumbnail", src, "-s", str(size), "-o", f"{work}/vips{size}.jpg[Q=85,strip]"], check=True)
once()  # warm-up: the file in the page cache, as for the server
walls = []
before = resource.getrusage(resource.RUSAGE_CHILDREN)
for _ in range(runs):
    t = time.perf_counter(); once(); walls.append(time.perf_counter() - t)
after = resource.getrusage(resource.RUSAGE_CHILDREN)
cpu = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / runs
version = subprocess.run(["vipsthumbnail", "--vips-version"], capture_output=True, text=True).stdout.strip()
print(f"version={version}")
print(f"runs={runs} wall_median_s={statistics.median(walls):.3f} cpu_s={cpu:.3f} maxrss_kib={after.ru_maxrss}")
PY
cat "$RAW/image_pipeline.txt" "$RAW/image_vips.txt" >&2
P_IMG=$(free_port)
start_server images "$P_IMG" "$URL_SMALL" ADMIN_API_KEY=bench-key APP_STORAGE__LOCAL_DIR="$WORK/media-img"
run_wrk images_before "http://127.0.0.1:$P_IMG$PAGE"
args=()
for f in "$WORK"/photos/batch/*.jpg; do args+=(-F "files=@$f"); done
IMG_BASE=$(rss_kib "$PID_images")
echo 5 >"/proc/$PID_images/clear_refs"
T0=$(date +%s.%N)
curl -sf -X POST "http://127.0.0.1:$P_IMG/api/upload-batch" -H "X-API-Key: bench-key" \
  -F category=bench "${args[@]}" >"$WORK/img-batch.json" &
CURL=$!
sleep 0.5
run_wrk images_during "http://127.0.0.1:$P_IMG$PAGE"
wait "$CURL"
T1=$(date +%s.%N)
python3 - "$WORK/img-batch.json" "$T0" "$T1" "$IMG_BASE" "$(hwm_kib "$PID_images")" "$IMG_BATCH" >"$RAW/image_batch.txt" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
t0, t1, base, peak, n = float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
print(f"files={n} uploaded={len(report['uploaded'])} failed={len(report['failed'])} skipped={len(report['skipped'])}")
print(f"wall_s={t1 - t0:.2f} photos_per_s={n / (t1 - t0):.2f} base_rss_kib={base} peak_rss_kib={peak} growth_kib={peak - base}")
PY
cat "$RAW/image_batch.txt" >&2

log "10. private mode: signing a page of 100 photos (300 URLs), S3 and local"
"$ROOT/target/release/examples/signing" "$SIGN_RUNS" >"$RAW/signing.txt"
cat "$RAW/signing.txt" >&2

log "8. connection storm: $STORM keep-alive connections, RSS before, during, 10 s after"
P_STORM=$(free_port)
# A long header deadline, so that no connection is closed while the storm is still opening.
start_server storm "$P_STORM" "$URL_SMALL" APP_SERVER__HEADER_READ_TIMEOUT_SECS=120
python3 "$ROOT/bench/storm.py" "$PID_storm" "$P_STORM" "$STORM" >"$RAW/storm.txt"
cat "$RAW/storm.txt" >&2

log "5. the database stopped: rotating pages from what each server has left"
pg_ctl stop -m fast
curl -s "http://127.0.0.1:$P_UNCACHED/api/images?limit=10&offset=1" >/dev/null || true # notices
run_wrk outage "http://127.0.0.1:$P_UNCACHED/" ROTATE=$((ROWS_SMALL - 10))
for k in $(seq "$ROUNDS"); do
  for who in $SERVERS; do compare "$who" outage "$k"; done
done
[ -n "$ORIGINAL_DIR" ] && stop orig

log "7. versions and the report"
{
  echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -1)"
  echo "cores=$(nproc)"
  echo "kernel=$(uname -r)"
  echo "rustc=$(rustc --version)"
  echo "server=$("$BIN" --version)"
  echo "postgres=$("$PGBIN/postgres" --version)"
  echo "nginx=$("$NGINX" -v 2>&1)"
  echo "wrk=$(wrk -v 2>&1 | head -1)"
  echo "vips=$(vipsthumbnail --vips-version)"
  echo "duration=$DUR connections=$CONNS rows_small=$ROWS_SMALL rows_big=$ROWS_BIG deep=$DEEP quick=$QUICK"
  echo "rounds=$ROUNDS cmp_batch=$CMP_BATCH cmp_singles=$CMP_SINGLES"
  echo "command=$([ "$QUICK" = 1 ] && printf 'QUICK=1 ')$([ -n "$ORIGINAL_DIR" ] && printf 'ORIGINAL_DIR=%s ' "$ORIGINAL_DIR")bench/run.sh"
  echo "delay_ms=$DELAY_MS"
} >"$RAW/env.txt"
python3 "$ROOT/bench/report.py" "$RAW" >"$RAW/results.md"
"$CACHE/chart-venv/bin/python" "$ROOT/bench/chart.py" "$RAW" "$RAW/results.png"
if [ "$QUICK" = 1 ]; then
  cat "$RAW/results.md"
  python3 "$ROOT/bench/report.py" --check "$RAW"
else
  cp "$RAW/results.md" "$ROOT/bench/results.md"
  cp "$RAW/results.png" "$ROOT/bench/results.png"
  cat "$ROOT/bench/results.md"
fi
