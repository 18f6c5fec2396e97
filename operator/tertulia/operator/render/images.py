"""The third-party images the operator renders, each pinned to a release tag (never a moving
one) and by digest where it is known, in one place with the evidence that each exists:
`tertulia operator images` lists them for mirroring into a private registry, and the test
bed builds stand-ins under the same names (by tag: a stand-in cannot have the upstream
digest, so the test bed installs the chart with `imageDigests: false`, as a mirror that
re-pushes images must)."""

from __future__ import annotations

# vLLM's CUDA 12.9 build of release v0.30.0, by its Docker Hub index digest: the release's
# default tag (v0.30.0) is built for CUDA 13 and needs NVIDIA driver 580 or newer, which
# managed clusters' GPU images do not all have yet.
VLLM = (
    "vllm/vllm-openai:v0.30.0-cu129"
    "@sha256:a67f8f186d4567612ac37a55bd82295006002b18858eb12a8af2f05f86c2ae3f"
)
OLLAMA = "ollama/ollama:0.24.0"
# llama.cpp's published server images: `server-bN` is the CPU build of release N, and
# `server-cuda-bN` the CUDA one (.github/workflows/docker.yml of ggml-org/llama.cpp), pushed
# by a daily build, so not every release has them: b11312 does. It is also the llama.cpp that
# llama-cpp-python 0.3.36 vendors, which the test bed builds.
LLAMACPP_RELEASE = "b11312"
LLAMACPP = f"ghcr.io/ggml-org/llama.cpp:server-{LLAMACPP_RELEASE}"
LLAMACPP_CUDA = f"ghcr.io/ggml-org/llama.cpp:server-cuda-{LLAMACPP_RELEASE}"
# The 7.4 line's latest patch, past the remote-code-execution fixes that 7.4.6 lacks, by its
# Docker Hub index digest (the same for 7.4.11-alpine3.21).
REDIS = (
    "redis:7.4.11-alpine@sha256:ff02b58f971e7d7d156a1267e283fcbbeee91773b6aa36c49dac28ecfe28eadf"
)
# The 1.35 line's latest patch, the release the test bed builds from source
# (hack/versions.env: WEAVIATE_VERSION).
WEAVIATE = "cr.weaviate.io/semitechnologies/weaviate:1.35.19"

# By the role each plays, as `tertulia operator images` prints them.
THIRD_PARTY = {
    "model-vllm": VLLM,
    "model-ollama": OLLAMA,
    "model-llamacpp": LLAMACPP,
    "model-llamacpp-cuda": LLAMACPP_CUDA,
    "memory": REDIS,
    "knowledge-base": WEAVIATE,
}

# Why each pin is an image that exists (llama.cpp, for one, publishes images for some builds
# only): where it was seen published, as `tertulia operator images` prints it beside each,
# and the digest where it is known (an image pinned by tag alone has its digest named here
# when it is known, so a mirror can be checked).
EVIDENCE = {
    "model-vllm": "Docker Hub vllm/vllm-openai, tag v0.30.0-cu129, its index digest as public "
    "deployments pin it (v0.30.0 for CUDA 13: sha256:8a69ffad015f...)",
    "model-ollama": "Docker Hub ollama/ollama, tag 0.24.0 as public deployments pin it; "
    "digest not recorded",
    "model-llamacpp": "ghcr.io/ggml-org/llama.cpp, tag server-b11312 of the daily docker "
    "workflow, as public deployments pin it; the test bed builds this release",
    "model-llamacpp-cuda": "ghcr.io/ggml-org/llama.cpp, tag server-cuda-b11312 seen through "
    "GHCR's registry API by a public project (sha256:6cdf9529..., digest not recorded whole)",
    "memory": "Docker Hub redis, tag 7.4.11-alpine, its index digest as public deployments "
    "pin it (also as 7.4.11-alpine3.21); the test bed runs a stand-in of Redis 7.4.1 under "
    "its tag, with imageDigests off",
    "knowledge-base": "cr.weaviate.io semitechnologies/weaviate, tag 1.35.19 as public "
    "deployments pin it, the release of the Go module github.com/weaviate/weaviate v1.35.19 "
    "that the test bed builds",
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


# The digests of the pins above: what an installation with `imageDigests: false` leaves out.
PINNED_DIGESTS = frozenset(
    image.partition("@")[2] for image in THIRD_PARTY.values() if "@" in image
)


def unpinned(image: str) -> str:
    """`image` without its digest when it is one of the pins above (mirrored or not); any
    other image, a user's own pinned by digest included, as it is."""
    name, _, digest = image.partition("@")
    return name if digest in PINNED_DIGESTS else image
