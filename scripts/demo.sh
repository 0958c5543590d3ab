#!/usr/bin/env bash
# The quick start: build, start dakota-server on the embedded offline defaults, generate one
# article with the CLI (progress on stderr, the article folder under ./out), stop the server.
#   bash scripts/demo.sh ["topic"] [extra `dakota generate` flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
topic=${1:-"Private credit and liquidity for pension funds"}
shift || true
addr=${DAKOTA_DEMO_ADDR:-127.0.0.1:50051}

cargo build --quiet --bin dakota-server --bin dakota
./target/debug/dakota-server --grpc-addr "$addr" --admin-addr "${DAKOTA_DEMO_ADMIN_ADDR:-127.0.0.1:8000}" 2>server.log &
server=$!
trap 'kill -TERM $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT

export DAKOTA_SERVER="http://$addr"
for _ in $(seq 1 100); do
  ./target/debug/dakota health >/dev/null 2>&1 && break
  sleep 0.1
done
./target/debug/dakota generate "$topic" --out out "$@"
