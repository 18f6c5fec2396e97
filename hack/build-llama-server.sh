#!/usr/bin/env bash
# Builds llama.cpp's llama-server once into the versioned cache and prints its path: the one
# build of llama.cpp every part uses (the real node's image, the test bed's model and
# embeddings servers, local mode). Idempotent: a binary already in the cache is not rebuilt.
#
# The source is llama.cpp of the release the operator pins (LLAMACPP_RELEASE), as the
# hash-pinned llama-cpp-python sdist vendors it (the only package registry that carries
# it); built for any x86-64 with AVX2, as upstream's CPU image is for its baseline: not
# -march=native, which on a CPU with AMX compiles in ggml's AMX kernels, and they crash on
# the first matrix multiplication.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ -x "${LLAMA_SERVER_DIR}/llama-server" ]] && { echo "${LLAMA_SERVER_DIR}/llama-server"; exit 0; }
command -v cmake >/dev/null || die "cmake and a C++ compiler are needed to build llama-server"
log "building llama-server ${LLAMACPP_RELEASE} (first run only, a few minutes)"
work="$(mktemp -d)"
trap 'rm -rf "${work}"' EXIT
download_checked "${LLAMACPP_SDIST_URL}" "${LLAMACPP_SDIST_SHA256}" "${work}/sdist.tar.gz"
tar -xzf "${work}/sdist.tar.gz" -C "${work}" --strip-components=1
# The compiler's warnings go to a log, shown when the build fails.
if ! { cmake -S "${work}/vendor/llama.cpp" -B "${work}/build" -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_UI=OFF \
    -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF \
    && cmake --build "${work}/build" --target llama-server -j "$(nproc)"; } \
    >"${work}/build.log" 2>&1; then
  tail -n 40 "${work}/build.log" >&2
  die "building llama-server failed"
fi
mkdir -p "${LLAMA_SERVER_DIR}"
install -m 0755 "${work}/build/bin/llama-server" "${LLAMA_SERVER_DIR}/llama-server.tmp"
mv "${LLAMA_SERVER_DIR}/llama-server.tmp" "${LLAMA_SERVER_DIR}/llama-server"
echo "${LLAMA_SERVER_DIR}/llama-server"
