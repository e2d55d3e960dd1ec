"""Prompt sources and the per-iteration prompt draw."""

from __future__ import annotations

import json
import os
import random

from .seeds import iteration_seed


def load_prompt_rows(path: str, key: str = "data.train_prompts") -> list[dict]:
    """A GenEval-format JSONL file (one object with a 'prompt' string per line) or a text file with
    one prompt a line. Every line is checked; a bad one stops with a sentence naming the file, the
    line and the fix. `key` names the config key or option in error messages."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{key}={path!r} does not exist; give a .jsonl or .txt prompt file.")
    try:
        with open(path, encoding="utf-8") as f:
            lines = [(n, line.strip()) for n, line in enumerate(f, 1) if line.strip()]
    except UnicodeDecodeError as e:
        raise ValueError(f"{key}={path!r} is not UTF-8 text (byte {e.start}); save it as UTF-8.") from None
    if not lines:
        raise ValueError(f"{key}={path!r} holds no prompt; write one prompt a line (.txt) or one JSON object a "
                         "line (.jsonl).")
    if not path.endswith(".jsonl"):
        return [{"prompt": line} for _, line in lines]
    rows = []
    for n, line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not valid JSON ({e.msg}); each line of a .jsonl prompt file is one "
                             'object such as {"prompt": "a red circle"}.') from None
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
            raise ValueError(f"{path}:{n}: a row needs a non-empty 'prompt' string, got {line[:80]!r}; write "
                             'e.g. {"prompt": "a red circle"}.')
        rows.append(row)
    return rows


def iteration_prompts(rows: list[dict], iteration: int, n: int, seed: int) -> list[dict]:
    """The n prompts of an iteration: a pure function of (seed, iteration), so a resumed run draws
    exactly what the uninterrupted run would have drawn."""
    rng = random.Random(iteration_seed(seed, iteration))
    return [rows[rng.randrange(len(rows))] for _ in range(n)]
