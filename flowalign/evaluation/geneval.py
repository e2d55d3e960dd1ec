"""GenEval end to end: generate into GenEval's folder layout, then score with a detector.

    flowalign eval geneval --model PATH [--lora DIR] --metadata FILE --out DIR \
        --detector MASK2FORMER_DIR --clip OPEN_CLIP_DIR [--images-per-prompt 4 --steps 40 --guidance 4.5]
    flowalign eval geneval --score-only DIR --detector ... --clip ...

Layout (what GenEval's own evaluator reads): DIR/<NNNNN>/metadata.jsonl (the prompt's metadata row)
and DIR/<NNNNN>/samples/<NNNN>.png. Generation is resumable: a prompt folder whose metadata.jsonl
exists (written after all its images) is skipped. Each prompt's noise is drawn from seed + prompt
index, so a resumed run makes the same images as an uninterrupted one.

Scoring writes DIR/results.jsonl (one line per image: filename, tag, prompt, correct, reason,
metadata, details), DIR/summary.json (the six task accuracies, overall = their unweighted mean,
% correct images, % correct prompts = prompts with at least one correct image) and DIR/report.html."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np
import torch
from tqdm import tqdm

from reward_models.geneval_rules import METADATA_FILE, RELATIONS, TASKS, Verdict, evaluate, summarize


def check_metadata(row: dict, where: str) -> dict:
    """Validate one GenEval metadata row; one sentence naming the problem otherwise."""
    if not isinstance(row, dict) or "prompt" not in row or "tag" not in row:
        raise ValueError(f"{where}: a GenEval metadata row needs 'tag', 'prompt' and 'include'.")
    if row["tag"] not in TASKS:
        raise ValueError(f"{where}: tag {row['tag']!r} is not a GenEval task; use one of {list(TASKS)}.")
    includes = row.get("include")
    if not isinstance(includes, list) or not includes:
        raise ValueError(f"{where}: 'include' must be a non-empty list of {{class, count}} clauses.")
    for k, inc in enumerate(includes):
        if not isinstance(inc.get("class"), str) or not isinstance(inc.get("count"), int) or inc["count"] < 1:
            raise ValueError(f"{where}: include[{k}] needs a class name and a positive integer count.")
        if "position" in inc:
            rel, target = inc["position"]
            if rel not in RELATIONS or not (0 <= int(target) < k):
                raise ValueError(f"{where}: include[{k}].position {inc['position']!r} must be [relation, index of an "
                                 f"earlier clause] with relation in {list(RELATIONS)}.")
    for k, exc in enumerate(row.get("exclude", [])):
        if not isinstance(exc.get("class"), str) or not isinstance(exc.get("count"), int):
            raise ValueError(f"{where}: exclude[{k}] needs a class name and an integer count.")
    return row


def read_metadata(path: str = METADATA_FILE) -> list[dict]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"GenEval metadata file {path!r} does not exist; pass --metadata "
                                "evaluation_metadata.jsonl (GenEval's prompts).")
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n}: not valid JSON ({e.msg}).") from None
                rows.append(check_metadata(row, f"{path}:{n}"))
    return rows


GENERATION_FILE = "generation.json"


def check_generation_settings(out: str, settings: dict) -> None:
    """An --out folder holds one model's images: stop, before anything loads or is written, a run
    whose generation settings (model, LoRA, steps, guidance, seed, size, images per prompt, prompts)
    differ from those recorded in OUT/generation.json."""
    path = os.path.join(out, GENERATION_FILE)
    settings = json.loads(json.dumps(settings))  # plain JSON values, as read back
    if os.path.isfile(path):
        try:
            with open(path) as f:
                old = json.load(f)
        except (OSError, json.JSONDecodeError):
            raise ValueError(f"{path} is damaged; remove the folder {out!r} or use another --out.") from None
        diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        if diff:
            shown = "; ".join(f"{k}: {old.get(k)!r} there, {settings.get(k)!r} now" for k in diff[:3])
            raise ValueError(f"--out {out!r} holds images generated with other settings ({shown}); give a new --out, "
                             "or the same settings to finish it.")
    elif os.path.isdir(prompt_folder(out, 0)):
        raise ValueError(f"--out {out!r} holds images without {GENERATION_FILE} (an older layout); give a new --out.")


def record_generation_settings(out: str, settings: dict) -> None:
    """Write OUT/generation.json (atomically) once the model has loaded."""
    path = os.path.join(out, GENERATION_FILE)
    if os.path.isfile(path):
        return
    os.makedirs(out, exist_ok=True)
    tmp = path + f".tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(settings, f, indent=2)
    os.replace(tmp, path)


def prompt_folder(out: str, index: int) -> str:
    return os.path.join(out, f"{index:05d}")


def is_done(folder: str, images_per_prompt: int) -> bool:
    return os.path.isfile(os.path.join(folder, "metadata.jsonl")) and all(
        os.path.isfile(os.path.join(folder, "samples", f"{j:04d}.png")) for j in range(images_per_prompt))


@torch.no_grad()
def generate_layout(policy, metas: Sequence[dict], out: str, *, images_per_prompt: int = 4, num_steps: int = 40,
                    guidance: float = 4.5, seed: int = 0, batch_size: int = 16, height: int | None = None,
                    width: int | None = None, progress: bool = True) -> int:
    """Generate the prompts not yet done; returns how many prompts were generated now."""
    from flowalign.evaluation import prompt_noise
    from flowalign.images import to_pil

    todo = [i for i in range(len(metas)) if not is_done(prompt_folder(out, i), images_per_prompt)]
    per_batch = max(1, batch_size // images_per_prompt)
    bar = tqdm(total=len(todo), desc="geneval generate", unit="prompt", disable=not progress)
    for s in range(0, len(todo), per_batch):
        idx = todo[s:s + per_batch]
        noise = torch.cat([prompt_noise(policy, i, images_per_prompt, seed, height, width) for i in idx])
        prompts = [metas[i]["prompt"] for i in idx for _ in range(images_per_prompt)]
        images = policy.generate(prompts, num_steps=num_steps, guidance=guidance, height=height, width=width,
                                 noise=noise).cpu()
        for k, i in enumerate(idx):
            folder = prompt_folder(out, i)
            os.makedirs(os.path.join(folder, "samples"), exist_ok=True)
            for j in range(images_per_prompt):
                to_pil(images[k * images_per_prompt + j]).save(os.path.join(folder, "samples", f"{j:04d}.png"))
            tmp = os.path.join(folder, "metadata.jsonl.tmp")  # written last, atomically: marks the prompt done
            with open(tmp, "w") as f:
                f.write(json.dumps(metas[i]) + "\n")
            os.replace(tmp, os.path.join(folder, "metadata.jsonl"))
        bar.update(len(idx))
    bar.close()
    return len(todo)


def read_layout(out: str) -> list[tuple[dict, list[str]]]:
    """(metadata, sample paths) per prompt folder, in index order."""
    if not os.path.isdir(out):
        raise FileNotFoundError(f"GenEval image folder {out!r} does not exist; generate into it first.")
    items = []
    for name in sorted(os.listdir(out)):
        folder = os.path.join(out, name)
        meta_file = os.path.join(folder, "metadata.jsonl")
        if not (name.isdigit() and os.path.isfile(meta_file)):
            continue
        with open(meta_file) as f:
            meta = check_metadata(json.loads(f.readline()), meta_file)
        sdir = os.path.join(folder, "samples")
        samples = sorted(os.path.join(sdir, p) for p in os.listdir(sdir) if p.endswith((".png", ".jpg")))
        items.append((meta, samples))
    if not items:
        raise FileNotFoundError(f"{out!r} holds no GenEval prompt folders (NNNNN/metadata.jsonl + samples/).")
    return items


class ShapesEvaluator:
    """The shapes world's procedural detector behind the same interface as reward_models.geneval's."""

    def verdicts(self, images: np.ndarray, metadata: Sequence[dict]) -> list[tuple[Verdict, dict]]:
        from reward_models.shapes.detector import detect

        out = []
        for img, meta in zip(images, metadata):
            dets = detect(img)
            out.append((evaluate(dets, meta), dets))
        return out


def summarize_geneval(rows: Sequence[dict]) -> dict:
    """GenEval's summary: task accuracies, overall, % correct images and % correct prompts."""
    s = summarize(rows)
    by_prompt: dict[str, bool] = {}
    for r in rows:  # a prompt is its folder (GenEval groups by metadata: the same for unique prompts)
        key = os.path.dirname(os.path.dirname(r["filename"])) if "filename" in r else r["metadata"]
        by_prompt[key] = by_prompt.get(key, False) or bool(r["correct"])
    return {"overall": s["overall"], "tasks": s["tasks"], "correct_images": float(np.mean([r["correct"] for r in rows])),
            "correct_prompts": float(np.mean(list(by_prompt.values()))), "n_images": len(rows),
            "n_prompts": len(by_prompt)}


def score_layout(out: str, evaluator, *, progress: bool = True, report: bool = True) -> dict:
    """Score every image under `out` and write results.jsonl, summary.json and report.html."""
    from PIL import Image

    from ..report import write_report, write_results

    rows = []
    for meta, samples in tqdm(read_layout(out), desc="geneval score", unit="prompt", disable=not progress):
        arr = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in samples])
        for path, (v, dets) in zip(samples, evaluator.verdicts(arr, [meta] * len(samples))):
            details = {c: [[round(x, 1) for x in d.box] + [round(d.score, 3)] for d in ds if d.score > 0.3]
                       for c, ds in dets.items()}
            rows.append({"filename": os.path.relpath(path, out), "tag": meta["tag"], "prompt": meta["prompt"],
                         "correct": bool(v.correct), "reason": "\n".join(v.reasons), "partial": v.partial,
                         "metadata": json.dumps(meta), "details": json.dumps({k: v for k, v in details.items() if v})})
    summary = summarize_geneval(rows)
    write_results(out, summary, rows)
    if report:  # the page links the sample files in place
        write_report(out, "GenEval evaluation", summary, None,
                     [{"caption": r["prompt"], "correct": r["correct"], "details": r["reason"], "src": r["filename"]}
                      for r in rows])
    return summary
