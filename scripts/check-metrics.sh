#!/usr/bin/env bash
# Lints a live /metrics scrape with promtool (Prometheus' own checker): starts the debug
# dakota-server, generates one article with the CLI, scrapes, runs `promtool check metrics`.
set -euo pipefail
cd "$(dirname "$0")/.."
grpc=127.0.0.1:${DAKOTA_CHECK_GRPC_PORT:-50071}
admin=127.0.0.1:${DAKOTA_CHECK_ADMIN_PORT:-8071}
./target/debug/dakota-server --grpc-addr "$grpc" --admin-addr "$admin" 2>/tmp/dakota-check-metrics.log &
server=$!
trap 'kill -TERM $server 2>/dev/null || true; wait $server 2>/dev/null || true' EXIT
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
