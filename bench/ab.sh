#!/usr/bin/env bash
# A/B of two builds in one run, so that the machine's drift between runs (about ±10 % here) does
# not decide the answer: both binaries serve the same throwaway database (10,000 rows) and take
# turns under the same wrk load.
#
#   bench/ab.sh OLD_BINARY NEW_BINARY [ROUNDS]     (default 3 rounds of 10 s each)
#
#   SCENARIO=cached (default)  the first page, from the page cache
#   SCENARIO=remote            pages at rotating offsets with the page cache off, the database
#                              DELAY_MS (20) away each way through bench/delay_proxy.py
#   SCENARIO=upload_remote     20 single /api/upload requests of a 3 MB JPEG (run.sh's colour
#                              noise) per round, into bench/storage_standin.py DELAY_MS away each
#                              way: the median time of an upload, in ms (lower is better)
#   CONNS=100                  wrk connections
#   A_ENV="K=V ..." B_ENV=...  extra settings for one side (e.g. B_ENV=APP_DATABASE__POOL_MAX_SIZE=16)
#
# Needs what bench/run.sh installs (wrk, PostgreSQL); run that once first. Prints each round and
# the median and range of each build. Only answers from the database count as good.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
A=$(realpath "$1"); B=$(realpath "$2"); ROUNDS=${3:-3}
SCENARIO=${SCENARIO:-cached}; CONNS=${CONNS:-100}; DELAY_MS=${DELAY_MS:-20}
A_ENV=${A_ENV:-}; B_ENV=${B_ENV:-}
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
WORK=$(mktemp -d /tmp/portfolio-ab.XXXXXX)
chmod 755 "$WORK"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  runuser -u postgres -- "$PGBIN/pg_ctl" -D "$WORK/pg" stop -m immediate >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PGPORT=$(free_port)
mkdir -p "$WORK/pg" && chown postgres "$WORK/pg"
runuser -u postgres -- "$PGBIN/initdb" -D "$WORK/pg" -U postgres --auth=trust -E UTF8 >/dev/null
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$WORK/pg" -l "$WORK/pg/log" -w \
  -o "-p $PGPORT -k $WORK/pg -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null
URL=postgres://postgres@127.0.0.1:$PGPORT/postgres
DATABASE_URL=$URL "$B" migrate 2>/dev/null
psql -h 127.0.0.1 -p "$PGPORT" -U postgres -q -c "INSERT INTO photographs (filename, url, category, width, height)
  SELECT 'photo-' || i || '.jpg', 'https://cdn.example/photo-' || i || '.jpg', 'nature', 4000, 3000
  FROM generate_series(1, 10000) AS i"

SERVE_URL=$URL
EXTRA=()
JWT=eyJhbGciOiJIUzI1NiJ9.eyJyb2xlIjoic2VydmljZV9yb2xlIn0.YmVuY2g # supabase-style, as run.sh's
if [ "$SCENARIO" = upload_remote ]; then
  PSTORE=$(free_port); PPROXY=$(free_port)
  python3 "$ROOT/bench/storage_standin.py" "$PSTORE" images >"$WORK/store.log" 2>&1 &
  PIDS+=($!)
  python3 "$ROOT/bench/delay_proxy.py" "$PPROXY" "$PSTORE" "$DELAY_MS" >"$WORK/proxy.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PPROXY") 2>/dev/null && break; sleep 0.1; done
  EXTRA=(ADMIN_API_KEY=bench-key SUPABASE_URL="http://127.0.0.1:$PPROXY" SUPABASE_KEY="$JWT"
    APP_CACHE__MAX_BYTES=0 APP_STORAGE__TIMEOUT_SECS=30)
  python3 - "$WORK/photo.jpg" <<'PY'
import sys
from PIL import Image
img = Image.merge("RGB", [Image.effect_noise((1560, 1560), 100) for _ in range(3)])
img.save(sys.argv[1], quality=95)
PY
elif [ "$SCENARIO" = remote ]; then
  PPROXY=$(free_port)
  python3 "$ROOT/bench/delay_proxy.py" "$PPROXY" "$PGPORT" "$DELAY_MS" >"$WORK/proxy.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PPROXY") 2>/dev/null && break; sleep 0.1; done
  SERVE_URL=postgres://postgres@127.0.0.1:$PPROXY/postgres
  EXTRA=(APP_CACHE__MAX_BYTES=0)
fi
start() { # binary port extra-settings
  # shellcheck disable=SC2086 # the extra settings are words on purpose
  (cd "$WORK" && exec env -i PATH="$PATH" HOME="$WORK" PORT="$2" APP_SERVER__HOST=127.0.0.1 \
     DATABASE_URL="$SERVE_URL" APP_DATABASE__MIGRATE_ON_START=false "${EXTRA[@]}" $3 "$1" \
     >>"$WORK/server.log" 2>&1) &
  PIDS+=($!)
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$2/api/health" >/dev/null && return 0; sleep 0.1; done
  echo "$1 did not start" >&2; cat "$WORK/server.log" >&2; exit 1
}
PA=$(free_port); PB=$(free_port)
start "$A" "$PA" "$A_ENV"; start "$B" "$PB" "$B_ENV"
PAGE="/api/images?limit=10&offset=0"
curl -sf "http://127.0.0.1:$PA$PAGE" >"$WORK/a.json"; curl -sf "http://127.0.0.1:$PB$PAGE" >"$WORK/b.json"
uploads() { # port: 20 single uploads under fresh names; prints "p50_ms max_ms created"
  local dir; dir=$(mktemp -d "$WORK/up.XXXXXX")
  for i in $(seq 20); do
    cp "$WORK/photo.jpg" "$dir/${dir##*.}-$i.jpg"
    curl -s -o /dev/null -w '%{http_code} %{time_total}\n' -X POST "http://127.0.0.1:$1/api/upload" \
      -H "X-API-Key: bench-key" -F category=nature -F "file=@$dir/${dir##*.}-$i.jpg"
  done | python3 -c 'import statistics,sys; r=[l.split() for l in sys.stdin]; ms=sorted(1000*float(t) for _,t in r); n=sum(c == str(201) for c,_ in r); print(f"{statistics.median(ms):.1f} {ms[-1]:.1f} {n}"); sys.exit(n != len(r))' \
    || { echo "uploads to port $1 failed: see $WORK/server.log" >&2; tail -5 "$WORK/server.log" >&2; exit 1; }
}
round() { # port expected
  if [ "$SCENARIO" = upload_remote ]; then uploads "$1"; return; fi
  local url="http://127.0.0.1:$1$PAGE" rotate="" expect=$2
  if [ "$SCENARIO" = remote ]; then url="http://127.0.0.1:$1/"; rotate=9990; expect=""; fi
  # Good: a 200 with the right body from the database (fallback and stale answers do not count).
  EXPECT_FILE=$expect ROTATE=$rotate wrk -t2 -c"$CONNS" -d10s --latency -s "$ROOT/bench/check.lua" "$url" \
    | python3 -c 'import re,sys; t=sys.stdin.read(); ok=int(re.search(r"ok=(\d+)",t).group(1)); fb=int(re.search(r"fallback=(\d+)",t).group(1)); s=float(re.search(r"in ([\d.]+)s",t).group(1)); bad=re.search(r"bad=(\d+)",t).group(1); p99=re.search(r"^\s+99%\s+(\S+)",t,re.M).group(1); print(f"{(ok-fb)/s:.0f} {p99} {bad} {fb}")'
}
ra=(); rb=()
for i in $(seq "$ROUNDS"); do
  a=$(round "$PA" "$WORK/a.json"); b=$(round "$PB" "$WORK/b.json")
  what="good req/s, p99, bad, not from the database"
  [ "$SCENARIO" = upload_remote ] && what="upload p50 ms, max ms, created of 20"
  echo "round $i: A $a | B $b   ($what) load $(cut -d' ' -f1 /proc/loadavg)"
  ra+=("${a%% *}"); rb+=("${b%% *}")
done
median() { printf '%s\n' "$@" | sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
range() { printf '%s\n' "$@" | sort -n | sed -n '1p;$p' | paste -sd- -; }
ma=$(median "${ra[@]}"); mb=$(median "${rb[@]}")
unit="good req/s"; [ "$SCENARIO" = upload_remote ] && unit="ms, an upload's p50"
label="$SCENARIO, c$CONNS"; [ "$SCENARIO" = upload_remote ] && label="$SCENARIO, storage ${DELAY_MS} ms away"
echo "$label: median A $ma ($(range "${ra[@]}")), B $mb ($(range "${rb[@]}")) $unit; B/A $(python3 -c "print(f'{$mb/$ma:.3f}')")"
