# Sourced by scripts/test and scripts/chaos: installs and starts what the cross-process tests and
# the crash trials need on a fresh machine, reusing $HOME/.cache/tributary (or $TRIBUTARY_CACHE).
#   - a Python virtualenv with numpy and pyarrow (the reference workload's generator, verify.py);
#   - a virtualenv with moto[server], started on 127.0.0.1 (local SQS and S3) and stopped when the
#     calling script exits;
#   - the machine's PostgreSQL at 127.0.0.1:5432 (already running on these machines);
#   - prometheus and promtool, unpacked from Debian's package;
#   - the machine's MariaDB at 127.0.0.1:3306 (already running), for the MySQL source's tests;
#   - Debian's chromium, for the status page's headless browser test.
# Exports the TRIBUTARY_* variables the tests read. The caller has `set -euo pipefail` and is in
# the repository root.

CACHE="${TRIBUTARY_CACHE:-$HOME/.cache/tributary}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"
mkdir -p "$CACHE"

VENV="$CACHE/venv-test"
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import numpy, pyarrow' 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q 'numpy==2.4.6' 'pyarrow==26.0.1'
fi
export TRIBUTARY_PYTHON="$VENV/bin/python"
if [ -z "${TRIBUTARY_BENCH_DIR:-}" ] && [ -d ../shared/bench ]; then
  TRIBUTARY_BENCH_DIR="$(cd ../shared/bench && pwd)"
  export TRIBUTARY_BENCH_DIR
fi

# Prometheus and promtool from Debian's package, unpacked (no service is installed or started).
PROM="$CACHE/prometheus"
if [ ! -x "$PROM/usr/bin/prometheus" ]; then
  mkdir -p "$PROM"
  (cd "$PROM" && apt-get download prometheus >/dev/null 2>&1 && dpkg-deb -x prometheus_*.deb . && rm -f prometheus_*.deb)
fi
export TRIBUTARY_PROMETHEUS="$PROM/usr/bin/prometheus"
export TRIBUTARY_PROMTOOL="$PROM/usr/bin/promtool"

AWS_VENV="$CACHE/venv-aws"
if [ ! -x "$AWS_VENV/bin/moto_server" ]; then
  python3 -m venv "$AWS_VENV"
  "$AWS_VENV/bin/pip" install -q 'moto[server]==5.2.5'
fi
MOTO_PORT="$("$AWS_VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
MOTO_LOG="$(mktemp -t tributary-moto.XXXXXX)"
"$AWS_VENV/bin/moto_server" -H 127.0.0.1 -p "$MOTO_PORT" >"$MOTO_LOG" 2>&1 &
MOTO_PID=$!
trap 'kill "$MOTO_PID" 2>/dev/null || true; wait "$MOTO_PID" 2>/dev/null || true; rm -f "$MOTO_LOG"' EXIT
for _ in $(seq 1 100); do
  if "$AWS_VENV/bin/python" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$MOTO_PORT/moto-api/')" 2>/dev/null; then
    break
  fi
  sleep 0.1
done
export TRIBUTARY_TEST_AWS_ENDPOINT="http://127.0.0.1:$MOTO_PORT"
export TRIBUTARY_TEST_POSTGRES="${TRIBUTARY_TEST_POSTGRES:-host=127.0.0.1 port=5432 user=postgres dbname=test}"
# The machine's MariaDB (root, no password): the MySQL source's tests make a database each.
export TRIBUTARY_TEST_MYSQL="${TRIBUTARY_TEST_MYSQL:-mysql://root@127.0.0.1:3306/test}"
# Headless Chromium for the status page's browser test (Debian's package; no sandbox as root).
if [ -z "${TRIBUTARY_CHROMIUM:-}" ]; then
  if ! command -v chromium >/dev/null 2>&1; then
    apt-get install -y -q --no-install-recommends chromium >/dev/null
  fi
  TRIBUTARY_CHROMIUM="$(command -v chromium)"
  export TRIBUTARY_CHROMIUM
fi
# A missing service fails the tests that need it instead of skipping them.
export TRIBUTARY_REQUIRE_SERVICES=1
