"""A static HTML report of an evaluation: the summary table and a grid of every image with its
verdict, failures first. Images are written next to the page (images/NNNNN.png), so the folder opens
in a browser as is."""

from __future__ import annotations

import html
import os
from collections.abc import Sequence

import torch

STYLE = """body{font-family:sans-serif;margin:20px}table{border-collapse:collapse;margin-bottom:20px}
td,th{border:1px solid #bbb;padding:4px 8px;text-align:left}.grid{display:flex;flex-wrap:wrap;gap:8px}
.card{width:160px;font-size:12px;border:2px solid #ccc;padding:4px}.fail{border-color:#c33}.pass{border-color:#3a3}
.card img{width:152px;image-rendering:pixelated}"""


def write_json(path: str, obj, announce: bool = True) -> str:
    """A benchmark's results file: create its folder, write indented JSON, say where."""
    import json

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
    if announce:
        print(f"wrote {path}")
    return path


def write_results(out: str, summary: dict, rows: Sequence[dict]) -> None:
    """OUT/summary.json and OUT/results.jsonl (one JSON line per row)."""
    import json

    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    with open(os.path.join(out, "results.jsonl"), "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def _rows(summary: dict) -> list[tuple[str, str]]:
    out = []
    for k, v in summary.items():
        if isinstance(v, dict):
            out += [(f"{k}: {kk}", f"{vv:.3f}" if isinstance(vv, float) else str(vv)) for kk, vv in v.items()]
        elif isinstance(v, float):
            out.append((k, f"{v:.3f}"))
        else:
            out.append((k, str(v)))
    return out


def write_report(out: str, title: str, summary: dict, images: torch.Tensor | None, items: Sequence[dict]) -> str:
    """images [N, 3, H, W] in [0, 1], written to out/images/; or None when every item has 'src', the
    path of its image relative to `out`. items: one dict per image with 'caption', 'correct' (bool) and
    optional 'details' (str). Writes out/report.html; returns the page's path."""
    from flowalign.images import to_pil

    if images is None and not all("src" in it for it in items):
        raise ValueError("write_report needs images, or a 'src' path in every item.")
    if images is not None and len(items) != images.shape[0]:
        raise ValueError(f"{len(items)} items for {images.shape[0]} images; give one item per image.")
    if images is not None:
        os.makedirs(os.path.join(out, "images"), exist_ok=True)
    order = sorted(range(len(items)), key=lambda i: (bool(items[i]["correct"]), i))  # failures first
    cards = []
    for i in order:
        it = items[i]
        if images is None:
            name = it["src"]
        else:
            name = f"images/{i:05d}.png"
            to_pil(images[i]).save(os.path.join(out, name))
        cls = "pass" if it["correct"] else "fail"
        cards.append(f'<div class="card {cls}"><img src="{html.escape(name)}" alt="{html.escape(it["caption"])}">'
                     f'<div><b>{"correct" if it["correct"] else "wrong"}</b> {html.escape(it["caption"])}</div>'
                     f'<div>{html.escape(str(it.get("details", "")))}</div></div>')
    table = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in _rows(summary))
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<table><tr><th>metric</th><th>value</th></tr>{table}</table>"
            f"<h2>Images ({sum(not it['correct'] for it in items)} wrong first, then {sum(bool(it['correct']) for it in items)} correct)</h2>"
            f"<div class='grid'>{''.join(cards)}</div></body></html>")
    path = os.path.join(out, "report.html")
    with open(path, "w") as f:
        f.write(page)
    return path
