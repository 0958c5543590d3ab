#!/usr/bin/env bash
# The Python client, clients/python (issue 25), without building anything: it runs no cargo and
# uses the binaries already built in target/debug (or $DAKOTA_BIN_DIR).
#
#   1. a fresh venv (target/python-client-venv, or $DAKOTA_PY_VENV): pip install ./clients/python
#      as a user would, and the tools to check it
#   2. codegen.py --check: the committed content_pb2.py/.pyi are what proto/ generates
#   3. pytest clients/python/tests: against dakota-server (and the dakota CLI) on free ports
#   4. mypy --strict: the example against the installed package, then the package, tests and tools
#
# Needs python3 (3.10+) with venv and pip, and PyPI; openssl for the TLS test.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${DAKOTA_PY_VENV:-target/python-client-venv}
bin_dir=${DAKOTA_BIN_DIR:-target/debug}
if [ ! -x "$bin_dir/dakota-server" ] || [ ! -x "$bin_dir/dakota" ]; then
  echo "no $bin_dir/dakota-server or $bin_dir/dakota: build them first (cargo build --workspace)"
  exit 1
fi
DAKOTA_BIN_DIR=$(cd "$bin_dir" && pwd)
export DAKOTA_BIN_DIR
started=$(date +%s)

echo "-- venv and pip install ./clients/python"
python3 -m venv --clear "$venv"
py="$PWD/$venv/bin/python"
"$py" -m pip install -q --disable-pip-version-check ./clients/python
# grpcio-tools only for the generated-code check, pinned as codegen.py says; tqdm for the bar.
tools_version=$(sed -n 's/^GRPCIO_TOOLS = "\(.*\)"$/\1/p' clients/python/codegen.py)
"$py" -m pip install -q --disable-pip-version-check pytest mypy types-grpcio types-protobuf tqdm \
  "grpcio-tools==$tools_version"
"$py" -m pip list --disable-pip-version-check 2>/dev/null \
  | grep -iE '^(dakota-client|grpcio|grpcio-tools|protobuf|googleapis-common-protos|pytest|mypy) ' | tr -s ' ' | paste -sd, -

# Caches under target/, not in the source tree.
export MYPY_CACHE_DIR="$PWD/target/python-client-cache/mypy"
pytest_cache="$PWD/target/python-client-cache/pytest"

echo "-- generated code is current"
"$py" clients/python/codegen.py --check

echo "-- pytest"
(cd clients/python && "$py" -m pytest -q -o cache_dir="$pytest_cache" tests)

echo "-- mypy --strict"
# The example as a user's script: against the installed package (py.typed, .pyi), from a
# folder that has no source of it.
(cd clients/python/examples && "$py" -m mypy --strict --config-file ../pyproject.toml generate.py)
(cd clients/python && "$py" -m mypy --strict src/dakota_client tests tools)

echo "check-python-client: all steps passed in $(( $(date +%s) - started )) s"
