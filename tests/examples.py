"""The files in manifests/examples/: each holds one ChatBot, and may hold the other objects it
needs (a ConfigMap of documents) beside it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

EXAMPLES = Path(__file__).resolve().parents[1] / "manifests" / "examples"


def documents(path: Path) -> list[dict[str, Any]]:
    return [document for document in yaml.safe_load_all(path.read_text()) if document]


def chatbot_document(path: Path) -> dict[str, Any]:
    """The ChatBot of an example file."""
    (found,) = [document for document in documents(path) if document["kind"] == "ChatBot"]
    return found


def companions(path: Path) -> list[dict[str, Any]]:
    """The objects an example file holds besides its ChatBot."""
    return [document for document in documents(path) if document["kind"] != "ChatBot"]
