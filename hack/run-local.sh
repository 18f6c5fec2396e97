#!/usr/bin/env bash
# `make run`: the local stack of manifests/examples/local.yaml (`tertulia up`), offline, and
# `tertulia chat` in this terminal. Leaving the chat (/quit, Ctrl-D) stops the stack.
#   TERTULIA_GATEWAY_PORT (8080), TERTULIA_MODEL_PORT (8000; embeddings and Weaviate take
#   the next three), TERTULIA_DATA_DIR (Weaviate's data; ~/.local/share/tertulia/local)
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

TERTULIA="${REPO_ROOT}/.venv/bin/tertulia"
GATEWAY_PORT="${TERTULIA_GATEWAY_PORT:-8080}"
MODEL_PORT="${TERTULIA_MODEL_PORT:-8000}"
LOG="$(mktemp -t tertulia-up.XXXXXX.log)"
# This run's key for the terminal chat: `tertulia up` makes a new one each run.
KEYS="$(mktemp -d -t tertulia-keys.XXXXXX)"
args=(up -f "${REPO_ROOT}/manifests/examples/local.yaml" --port "${GATEWAY_PORT}"
  --model-port "${MODEL_PORT}" --docs "${REPO_ROOT}/docs" --docs "${REPO_ROOT}/README.md"
  --key-file "${KEYS}/api-key")
[[ -n "${TERTULIA_DATA_DIR:-}" ]] && args+=(--data-dir "${TERTULIA_DATA_DIR}")

# The model and embeddings servers are llama.cpp's llama-server: a llama.cpp install's, or
# built once from the pinned release (a few minutes, cached by release).
if [[ -z "${TERTULIA_LLAMA_SERVER:-}" ]] && ! command -v llama-server >/dev/null; then
  bash "${REPO_ROOT}/hack/build-llama-server.sh" >/dev/null
fi

# The knowledge base needs Weaviate's server: built once from its Go module when Go is here
# (a few minutes, cached by version); without it the stack runs with the knowledge base off.
if [[ -z "${TERTULIA_WEAVIATE_BIN:-}" ]] && ! command -v weaviate-server >/dev/null \
  && [[ ! -x "${WEAVIATE_DIR}/weaviate-server" ]] && command -v go >/dev/null; then
  log "building Weaviate ${WEAVIATE_VERSION} once for the knowledge base (a few minutes)"
  bash "${REPO_ROOT}/hack/build-testbed.sh" weaviate >/dev/null \
    || log "Weaviate could not be built (offline?): the knowledge base stays off"
fi

# A wide console: the log is read back line by line below.
COLUMNS=500 "${TERTULIA}" "${args[@]}" >"${LOG}" 2>&1 &
up=$!
stop() {
  trap - INT TERM EXIT
  kill -INT "${up}" 2>/dev/null && wait "${up}" 2>/dev/null
  rm -rf "${KEYS}"
  log "stopped; the stack's log was ${LOG}"
}
trap stop INT TERM EXIT

log "starting the local stack (model, Redis, Weaviate, embeddings, gateway); log: ${LOG}"
until grep -q '^ready: ' "${LOG}"; do
  if ! kill -0 "${up}" 2>/dev/null; then
    tail -n 40 "${LOG}" >&2
    die "tertulia up stopped before the stack was ready"
  fi
  sleep 0.5
done
grep -E '^(warning|knowledge base):' "${LOG}" >&2 || true
# The web chat's address carries this run's web key (after #, so it never reaches a log).
web="$(grep -o 'http://127\.0\.0\.1:[0-9]*/#key=[A-Za-z0-9_-]*' "${LOG}" | head -n 1)"
log "web chat: ${web} · API: http://127.0.0.1:${GATEWAY_PORT}/docs"
"${TERTULIA}" chat --url "http://127.0.0.1:${GATEWAY_PORT}" --key-file "${KEYS}/api-key"
