"""Shipped models: files under Resources/Models with a JSON model card holding their SHA-256 checksum.

A card (``<task>.json``) records: task, file, sha256, data, split, held-out metrics, the command that
reproduces the model, and training settings. Loading verifies the checksum before torch reads the file.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from .errors import MedAIModelError
from .paths import resources_dir


def models_dir() -> Path:
    return Path(os.environ.get("MEDAI_MODELS", resources_dir() / "Models"))


def sha256_of(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_card(task: str, folder=None) -> dict:
    card_path = Path(folder or models_dir()) / f"{task}.json"
    if not card_path.exists():
        raise MedAIModelError(f"no model card for task '{task}' at {card_path}: the model is not installed "
                              f"(train it with training/, which writes the model and its card)")
    try:
        return json.loads(card_path.read_text())
    except json.JSONDecodeError as exc:
        raise MedAIModelError(f"{card_path}: model card is not valid JSON ({exc})") from exc


def load_state(task: str, folder=None) -> tuple[dict, dict]:
    """(state_dict, card) of a shipped model, after checking that the file matches the card's checksum."""
    card = read_card(task, folder)
    path = Path(folder or models_dir()) / card["file"]
    if not path.exists():
        raise MedAIModelError(f"model file missing for task '{task}': {path}")
    actual = sha256_of(path)
    if actual != card["sha256"]:
        raise MedAIModelError(f"model file {path} is corrupted or was replaced: SHA-256 {actual[:12]}... "
                              f"does not match the card's {card['sha256'][:12]}...")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a file that passed the checksum but does not load: wrong format
        raise MedAIModelError(f"model file {path} could not be loaded: {exc}") from exc
    return state, card


def save_model(task: str, state_dict: dict, card: dict, folder=None) -> Path:
    """Write ``<task>.pt`` and its card (with the checksum) into the models folder."""
    folder = Path(folder or models_dir())
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{task}.pt"
    torch.save({k: v.detach().cpu().contiguous() for k, v in state_dict.items()}, path)
    card = {**card, "task": task, "file": path.name, "sha256": sha256_of(path),
            "size_mb": round(path.stat().st_size / 1e6, 2)}
    (folder / f"{task}.json").write_text(json.dumps(card, indent=2) + "\n")
    return path
