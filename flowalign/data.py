"""Prompt sources and the per-iteration prompt draw."""

from __future__ import annotations

import json
import os
import random

from .seeds import iteration_seed


def load_prompt_rows(path: str, key: str = "data.train_prompts") -> list[dict]:
    """A GenEval-format JSONL file (rows with 'prompt') or a text file with one prompt a line. `key`
    names the config key in error messages."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{key}={path!r} does not exist; give a .jsonl or .txt prompt file.")
    with open(path) as f:
        lines = [line.strip() for line in f if line.strip()]
    if path.endswith(".jsonl"):
        rows = [json.loads(line) for line in lines]
        if not all("prompt" in r for r in rows):
            raise ValueError(f"{key}={path!r} has rows without a 'prompt' field.")
        return rows
    return [{"prompt": line} for line in lines]


def iteration_prompts(rows: list[dict], iteration: int, n: int, seed: int) -> list[dict]:
    """The n prompts of an iteration: a pure function of (seed, iteration), so a resumed run draws
    exactly what the uninterrupted run would have drawn."""
    rng = random.Random(iteration_seed(seed, iteration))
    return [rows[rng.randrange(len(rows))] for _ in range(n)]
