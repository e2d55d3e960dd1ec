"""Do the rewards carry signal on the testbed? The AUROC of each reward for telling GenEval-shapes-
correct generated images from incorrect ones.

    python -m benchmarks.shapes.reward_signal [--images-per-prompt 4] [--disc-steps 300]

The committed shapes model generates images for the held-out prompts (ODE, its default steps and
guidance); the procedural detector labels each image correct or not under GenEval's strict rules.
Rewards scored on the same images:
- shapes_geneval (partial): the share of the prompt's clauses satisfied;
- prompt_echo: PromptEcho with the trained captioner (flowalign/shapes/captioner);
- adversarial_dino: the DINO discriminator after co-training its head (`--disc-steps` hinge
  steps, references = flowalign/shapes/references as positives, images generated for *training*
  prompts as negatives, as in Adv-GRPO's co-training) on the random-feature encoder
  (flowalign/shapes/dino);
- adversarial_vision_tower: the same on the trained captioner's CLIP vision tower
  (flowalign/shapes/captioner_vision);
- adversarial_dino_ssl (when that folder exists): the same on the self-supervised encoder (flowalign/shapes/dino_ssl,
  benchmarks.shapes.dino);
- clip / adversarial_pickscore: the shapes CLIP's text-image score (flowalign/shapes/clip,
  benchmarks.shapes.clip) before and after co-training it as Adv-GRPO's PickScore discriminator
  (`--disc-steps` steps, each training-prompt image against a reference of its own prompt,
  flowalign/shapes/references_matched).
`--rewards` picks a subset (comma-separated names as above; default all). `--prompts` scores images of
another prompt set ('train' or a GenEval-format JSONL, e.g. flowalign/shapes/prompts/train_hard.jsonl)
instead of the held-out prompts.
AUROC = P(reward of a correct image > reward of an incorrect one), ties counted half, over all
pairs, and within prompts (only pairs of images of one prompt: what a group-relative advantage
compares, since GRPO normalises rewards per prompt), overall and per task. Writes
benchmarks/results/reward_signal.json."""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

from flowalign.evaluation.shapes import load_prompts, score_images
from flowalign.report import write_json
from flowalign.shapes import (
    CAPTIONER_DIR,
    CAPTIONER_VISION_DIR,
    CLIP_DIR,
    DINO_SSL_DIR,
    MATCHED_REFERENCES_DIR,
    REFERENCE_MAP,
)
from flowalign.shapes import MODEL_DIR as DEFAULT_MODEL
from reward_models import build_reward

from .captioner import auroc, grouped_auroc
from .companions import DINO, REFERENCES

CAPTIONER = CAPTIONER_DIR
RESULTS = os.path.join(os.path.dirname(__file__), "..", "results", "reward_signal.json")


@torch.no_grad()
def generate(policy, metas, n: int, seed: int, batch: int = 64) -> tuple[torch.Tensor, list[dict]]:
    rows = [m for m in metas for _ in range(n)]
    gen = torch.Generator().manual_seed(seed)
    imgs = []
    for s in range(0, len(rows), batch):
        chunk = rows[s:s + batch]
        noise = policy.initial_noise(len(chunk), None, None, gen)
        imgs.append(policy.generate([m["prompt"] for m in chunk], noise=noise).cpu())
    return torch.cat(imgs), rows


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--captioner", default=CAPTIONER)
    ap.add_argument("--prompts", default="held-out", help="'held-out', 'train' or a prompt file (.jsonl)")
    ap.add_argument("--images-per-prompt", type=int, default=4)
    ap.add_argument("--dino", default=DINO, help="the random-feature encoder (adversarial_dino)")
    ap.add_argument("--vision-tower", default=CAPTIONER_VISION_DIR,
                    help="the captioner's vision tower (adversarial_vision_tower); '' skips it")
    ap.add_argument("--dino-ssl", default=DINO_SSL_DIR,
                    help="the self-supervised encoder (adversarial_dino_ssl; benchmarks.shapes.dino); '' skips it")
    ap.add_argument("--clip", default=CLIP_DIR, help="the shapes CLIP (clip, adversarial_pickscore)")
    ap.add_argument("--rewards", default="all", help="comma-separated subset of shapes_geneval_partial, prompt_echo, "
                    "adversarial_dino, adversarial_vision_tower, adversarial_dino_ssl, adversarial_pickscore")
    ap.add_argument("--disc-steps", type=int, default=300, help="discriminator head steps of the co-training")
    ap.add_argument("--disc-fakes", type=int, default=8, help="images per training prompt for the co-training")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=RESULTS)
    args = ap.parse_args(argv)

    from flowalign.policies import load_policy

    policy = load_policy(args.model, device="cpu")
    metas = load_prompts(args.prompts)
    t0 = time.time()
    images, rows = generate(policy, metas, args.images_per_prompt, args.seed)
    labels = np.array([r["correct"] for r in score_images(images, rows)])
    prompts = [r["prompt"] for r in rows]
    tags = np.array([r["tag"] for r in rows])
    print(f"{len(rows)} images of the {args.prompts} prompts, {labels.mean():.3f} correct ({time.time() - t0:.0f} s)")

    def report(name: str, scores) -> dict:
        s = np.asarray(scores, dtype=float)
        a = auroc(s[labels], s[~labels])
        w, pairs = grouped_auroc(s, labels, prompts)  # a prompt string repeated in the file is one group
        per_task = {}
        for tag in sorted(set(tags.tolist())):
            m = tags == tag
            tw, tp = grouped_auroc(s[m], labels[m], np.asarray(prompts)[m])
            per_task[tag] = {"auroc_within_prompt": tw, "within_prompt_pairs": tp}
        print(f"{name:>18}: AUROC {a:.3f}, within prompts {w:.3f} over {pairs} pairs "
              f"(mean on correct {s[labels].mean():.3f}, incorrect {s[~labels].mean():.3f}); within prompts by task: "
              + ", ".join(f"{t} {v['auroc_within_prompt']:.3f} ({v['within_prompt_pairs']})" for t, v in per_task.items()))
        return {"auroc": a, "auroc_within_prompt": w, "within_prompt_pairs": pairs,
                "mean_correct": float(s[labels].mean()), "mean_incorrect": float(s[~labels].mean()),
                "within_prompt_by_task": per_task}

    wanted = set(args.rewards.split(",")) if args.rewards != "all" else None
    use = lambda name: wanted is None or name in wanted  # noqa: E731
    out = {"n_images": len(rows), "fraction_correct": float(labels.mean()), "rewards": {}}
    if use("shapes_geneval_partial"):
        partial = build_reward("shapes_geneval", mode="partial")(images, prompts, metadata=rows)
        out["rewards"]["shapes_geneval_partial"] = report("shapes partial", partial)

    if use("prompt_echo"):
        t0 = time.time()
        echo = build_reward("prompt_echo", model=args.captioner, device="cpu", batch_size=64)(images, prompts)
        out["rewards"]["prompt_echo"] = {**report("prompt_echo", echo), "seconds": time.time() - t0}

    encoders = {"adversarial_dino": args.dino}
    if args.vision_tower:
        encoders["adversarial_vision_tower"] = args.vision_tower
    if args.dino_ssl and os.path.isdir(args.dino_ssl):
        encoders["adversarial_dino_ssl"] = args.dino_ssl
    encoders = {name: path for name, path in encoders.items() if use(name)}
    pickscore = use("adversarial_pickscore") and os.path.isdir(args.clip)
    if not encoders and not pickscore:
        out["settings"] = vars(args)
        write_json(args.out, out)
        return out
    # Adv-GRPO's discriminators, co-trained on fakes from training prompts
    fakes, fake_rows = generate(policy, load_prompts("train"), args.disc_fakes, args.seed + 1)
    if pickscore:
        t0 = time.time()
        disc = build_reward("adversarial_pickscore", model=args.clip, processor=None,
                            reference_dir=MATCHED_REFERENCES_DIR, reference_map=REFERENCE_MAP, schedule="k_steps",
                            k=1, device="cpu", batch_size=64)
        with torch.no_grad():
            out["rewards"]["clip"] = report("clip", disc(images, prompts).numpy())
        g = torch.Generator().manual_seed(args.seed)
        losses = []
        for step in range(args.disc_steps):
            idx = torch.randint(len(fakes), (32,), generator=g)
            losses.append(disc.update(fakes[idx], [fake_rows[i]["prompt"] for i in idx.tolist()],
                                      iteration=step)["disc_loss"])
        with torch.no_grad():
            adv = disc(images, prompts)
        out["rewards"]["adversarial_pickscore"] = {
            **report("adversarial_pickscore", adv.numpy()), "clip": os.path.relpath(args.clip),
            "disc_loss_first": losses[0], "disc_loss_last": float(np.mean(losses[-20:])),
            "co_training_seconds": time.time() - t0, "disc_steps": args.disc_steps}
    for name, backbone in encoders.items():
        t0 = time.time()
        disc = build_reward("adversarial_dino", backbone=backbone, reference_dir=REFERENCES, k=1, lr=1e-3,
                            device="cpu", batch_size=64, seed=args.seed)
        g = torch.Generator().manual_seed(args.seed)
        losses = []
        for _ in range(args.disc_steps):
            idx = torch.randint(len(fakes), (32,), generator=g)
            losses.append(disc.update(fakes[idx])["disc_loss"])
        with torch.no_grad():
            adv = disc(images, prompts)
        out["rewards"][name] = {**report(name, adv.numpy()), "backbone": os.path.relpath(backbone),
                                "disc_loss_first": losses[0], "disc_loss_last": float(np.mean(losses[-20:])),
                                "co_training_seconds": time.time() - t0, "disc_steps": args.disc_steps}
    out["settings"] = vars(args)
    write_json(args.out, out)
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
    sys.exit(0)
