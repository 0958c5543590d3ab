#!/usr/bin/env bash
# Lints a live /metrics scrape with promtool (Prometheus' own checker): starts the debug
# dakota-server on free ports (it binds port 0 and logs the addresses it got), generates one
# article with the CLI, scrapes, runs `promtool check metrics`.
set -euo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp)
./target/debug/dakota-server --grpc-addr 127.0.0.1:0 --admin-addr 127.0.0.1:0 --log-format json 2>"$log" &
server=$!
trap 'kill -TERM $server 2>/dev/null || true; wait $server 2>/dev/null || true' EXIT
grpc="" admin=""
for _ in $(seq 1 100); do
  line=$(grep -m1 '"grpc_addr"' "$log" || true)
  if [ -n "$line" ]; then
    grpc=$(sed -E 's/.*"grpc_addr":"([^"]+)".*/\1/' <<<"$line")
    admin=$(sed -E 's/.*"admin_addr":"([^"]+)".*/\1/' <<<"$line")
    break
  fi
  sleep 0.1
done
[ -n "$grpc" ] || { echo "dakota-server did not say where it listens:"; cat "$log"; exit 1; }
for _ in $(seq 1 100); do
  ./target/debug/dakota --server "http://$grpc" health >/dev/null 2>&1 && break
  sleep 0.1
done
./target/debug/dakota --server "http://$grpc" generate "Liquidity tiers for pension funds" --json >/dev/null
./target/debug/dakota --server "http://$grpc" search "duration risk" >/dev/null
scrape=$(mktemp)
curl -fsS "http://$admin/metrics" >"$scrape"
echo "scraped $(grep -vc '^#' "$scrape") samples"
promtool check metrics <"$scrape"
echo "promtool check metrics: ok"
