#!/usr/bin/env bash
# A first look at the proxies' cost, side by side with a direct connection, on this machine:
# idle RSS per proxy, then wrk through the client proxy → server proxy pair (mTLS, HTTP/2
# between the proxies, authorization and metrics on) against wrk straight to the same demo
# app. The thorough harness (Envoy, nginx, fixed-rate latency) is issue 5's bench/.
#
# The example's DestinationRule for orders sets `maxRequestsPerConnection: 2` (a new mTLS
# connection, so a full handshake on both proxies, every 2 requests), so the pair is measured
# twice: as the example configures it, and with that limit removed (pooled: one HTTP/2
# connection between the proxies carries every request).
#
# Needs: wrk (Debian package `wrk`), a release build (`cargo build --release -p trustmesh`),
# and the example mesh's addresses free (127.0.1.2-5, 127.0.0.1:15012/15014).
set -euo pipefail
cd "$(dirname "$0")/.."
tm=target/release/trustmesh
dur=${DURATION:-8s}
state=$(mktemp -d)
config="$state/config"
cp -r examples/teei "$config"
trap 'kill -TERM $up_pid 2>/dev/null; wait $up_pid 2>/dev/null; rm -rf "$state"' EXIT

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
$tm up "$config" --state "$state" --plain > "$state/up.log" 2>&1 &
up_pid=$!
for a in 2 3 4 5; do
  for _ in $(seq 100); do
    curl -sf "http://127.0.1.$a:15000/ready" >/dev/null && break
    sleep 0.2
  done
done
sleep 2

rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
echo
echo "idle RSS (KiB):"
for pid in $(pgrep -f "trustmesh proxy --workload"); do
  printf '  proxy %-24s %6s\n' "$(tr '\0' ' ' < /proc/$pid/cmdline | awk '{print $4}')" "$(rss "$pid")"
done
cp=$(pgrep -f "trustmesh control-plane --config" | head -1)
printf '  control plane                  %6s\n' "$(rss "$cp")"

lua=$(mktemp --suffix .lua)
echo 'wrk.path = "http://orders.production.svc.cluster.local:8080/api/orders"' > "$lua"
direct=http://127.0.2.3:8080/api/orders

run() { # label, wrk args...
  local label=$1; shift
  local out; out=$(wrk "$@" 2>&1)
  local rps p50 p99
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  local non2xx; non2xx=$(awk '/Non-2xx/ {print $4}' <<<"$out")
  printf '  %-44s %10s req/s   p50 %8s   p99 %8s   non-2xx %s\n' "$label" "$rps" "$p50" "$p99" "${non2xx:-0}"
}

echo
echo "one connection, closed loop (latency):"
run "direct → app" -t1 -c1 -d"$dur" --latency "$direct"
run "app → proxy → mTLS → proxy → app" -t1 -c1 -d"$dur" --latency -s "$lua" http://127.0.1.2:15001
echo
echo "16 connections (throughput):"
run "direct → app" -t1 -c16 -d"$dur" --latency "$direct"
run "pair, maxRequestsPerConnection: 2" -t1 -c16 -d"$dur" --latency -s "$lua" http://127.0.1.2:15001

# The same pair pooled: drop the limit; the running proxies pick the change up (no restart).
sed -i '/maxRequestsPerConnection: 2/d' "$config/destination-rules.yaml"
sleep 2
echo
echo "pooled (maxRequestsPerConnection removed from the running config):"
run "pair, one connection, closed loop" -t1 -c1 -d"$dur" --latency -s "$lua" http://127.0.1.2:15001
run "pair, 16 connections" -t1 -c16 -d"$dur" --latency -s "$lua" http://127.0.1.2:15001
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
gw=$(pgrep -f "trustmesh proxy --workload production/api-gateway")
od=$(pgrep -f "trustmesh proxy --workload production/orders")
before=$(( $(cpu "$gw") + $(cpu "$od") ))
out=$(wrk -t1 -c16 -d"$dur" -s "$lua" http://127.0.1.2:15001 2>&1)
after=$(( $(cpu "$gw") + $(cpu "$od") ))
reqs=$(awk '/requests in/ {print $1}' <<<"$out")
hz=$(getconf CLK_TCK)
awk -v t=$((after - before)) -v hz="$hz" -v n="$reqs" 'BEGIN {printf "  CPU of the pair: %.2f CPU-s per 100k requests (%d requests)\n", t / hz / n * 100000, n}'
echo
echo "RSS after load (KiB):"
for pid in $(pgrep -f "trustmesh proxy --workload"); do
  printf '  proxy %-24s %6s\n' "$(tr '\0' ' ' < /proc/$pid/cmdline | awk '{print $4}')" "$(rss "$pid")"
done
rm -f "$lua"
