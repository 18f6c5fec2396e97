"""The third-party images the operator renders, each pinned to a release tag (never a moving
one), in one place: `tertulia operator images` lists them for mirroring into a private
registry, and the test bed builds stand-ins under the same names."""

from __future__ import annotations

VLLM = "vllm/vllm-openai:v0.11.0"
OLLAMA = "ollama/ollama:0.12.6"
# llama.cpp's published server images: `server-bN` is the CPU build of release N, and
# `server-cuda-bN` the CUDA one (.github/workflows/docker.yml of ggml-org/llama.cpp). Release
# b11312 is the llama.cpp that llama-cpp-python 0.3.36 vendors, which the test bed builds.
LLAMACPP_RELEASE = "b11312"
LLAMACPP = f"ghcr.io/ggml-org/llama.cpp:server-{LLAMACPP_RELEASE}"
LLAMACPP_CUDA = f"ghcr.io/ggml-org/llama.cpp:server-cuda-{LLAMACPP_RELEASE}"
REDIS = "redis:7.4.6-alpine"
# The release the test bed builds from source (hack/versions.env: WEAVIATE_VERSION).
WEAVIATE = "cr.weaviate.io/semitechnologies/weaviate:1.35.2"

# By the role each plays, as `tertulia operator images` prints them.
THIRD_PARTY = {
    "model-vllm": VLLM,
    "model-ollama": OLLAMA,
    "model-llamacpp": LLAMACPP,
    "model-llamacpp-cuda": LLAMACPP_CUDA,
    "memory": REDIS,
    "knowledge-base": WEAVIATE,
}


def mirrored(image: str, registry: str) -> str:
    """`image` as pulled from `registry` (HOST or HOST/PATH): the upstream registry's host is
    replaced and the repository kept, Docker Hub's implicit `library/` made explicit, the way
    registry mirrors and pull-through caches lay images out. `image` itself when no registry."""
    if not registry:
        return image
    first, _, rest = image.partition("/")
    if not rest:
        path = f"library/{image}"
    elif "." in first or ":" in first or first == "localhost":
        path = rest
    else:
        path = image
    return f"{registry.rstrip('/')}/{path}"
