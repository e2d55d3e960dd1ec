"""ReNO (Eyring et al. 2024): reward-based noise optimisation at inference time.

The initial noise eps of a one- or few-step flow-matching model is a parameter in N(0, I) space.
Each iteration generates with a differentiable Euler sampler (gradient checkpointing through the
transformer and the VAE decode), scores the image with one or several differentiable rewards and
takes a step on
    loss = sum_i w_i L_i(image, prompt) + lambda * (0.5 ||eps||^2 - (d - 1) log ||eps||)
where L_i = offset_i - R_i is ReNO's per-reward transform (HPS 1 - cos, PickScore 30 - scaled cos,
CLIP 100 - scaled cos; other rewards: -R) and the regulariser is the negative log-density of the
chi distribution of ||eps|| (d = numel per sample; minimum at ||eps|| = sqrt(d - 1)). SGD with
Nesterov momentum (Adam optional) and gradient-norm clipping; the returned image is the best one
seen by the weighted reward (without the regulariser). `best_of_n` is the baseline with the same
number of transformer evaluations."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint
from tqdm import tqdm

from reward_models.weighted import weighted_sum

# ReNO's per-reward loss offsets: L = offset - R (the offset changes the reported loss, not the gradient)
RENO_OFFSETS = {"hps": 1.0, "pickscore": 30.0, "clip": 100.0, "shapes_soft": 1.0}


@dataclass
class RenoSettings:
    iters: int = 50  # reward evaluations; the last one is not followed by an update (ReNO's n_iters)
    lr: float = 5.0
    optimizer: str = "sgd"  # sgd (Nesterov momentum) | adam
    momentum: float = 0.9
    nesterov: bool = True
    adam_eps: float = 1e-2  # ReNO's Adam epsilon (training/optim.py)
    grad_clip: float = 0.1  # max gradient norm of the noise
    reg_weight: float = 0.01  # lambda of the chi regulariser
    steps: int = 1  # Euler steps of the differentiable sampler
    guidance: float = 1.0  # CFG scale (1 = off; few-step models run without)
    height: int | None = None
    width: int | None = None
    gradient_checkpointing: bool = True
    weights: dict[str, float] = field(default_factory=dict)  # reward name -> weight

    def __post_init__(self):  # values from YAML or flags: 5 for 5.0, "true" for True
        for name in ("iters", "steps"):
            setattr(self, name, int(getattr(self, name)))
        for name in ("lr", "momentum", "adam_eps", "grad_clip", "reg_weight", "guidance"):
            setattr(self, name, float(getattr(self, name)))
        self.nesterov, self.gradient_checkpointing = bool(self.nesterov), bool(self.gradient_checkpointing)
        if self.iters < 1:
            raise ValueError(f"iters={self.iters} must be at least 1 (the number of reward evaluations).")


def chi_regulariser(eps: Tensor) -> Tensor:
    """Per sample [B]: 0.5 ||eps||^2 - (d - 1) log ||eps||, d = numel per sample."""
    flat = eps.flatten(1)
    d = flat.shape[1]
    norm = flat.norm(dim=1)
    return 0.5 * norm**2 - (d - 1) * torch.log(norm)


def parse_reward_weights(spec: str | dict[str, float]) -> dict[str, float]:
    """'hps=5,pickscore=0.05' (or a dict) -> {name: weight}; names must be registered rewards."""
    from reward_models import REWARDS

    if isinstance(spec, dict):
        weights = {str(k): float(v) for k, v in spec.items()}
    else:
        weights = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            name, _, w = part.partition("=")
            try:
                weights[name.strip()] = float(w) if w else 1.0
            except ValueError:
                raise ValueError(f"reward weight {part!r} is not name=number; write e.g. hps=5,pickscore=0.05.") from None
    if not weights:
        raise ValueError("no reward given; pass e.g. --reward shapes_soft=1.")
    unknown = [n for n in weights if n not in REWARDS]
    if unknown:
        raise ValueError(f"reward {unknown[0]!r} is unknown; use one of {sorted(REWARDS)}.")
    return weights


def build_rewards(weights: dict[str, float], args: dict[str, dict] | None = None) -> dict[str, object]:
    """Instantiate the rewards; each must be differentiable."""
    from reward_models import build_reward

    rewards = {}
    for name in weights:
        r = build_reward(name, **(args or {}).get(name, {}))
        if not getattr(r, "differentiable", False):
            raise ValueError(f"reward {name!r} is not differentiable; ReNO needs gradients through the reward "
                             "(the shapes testbed has shapes_soft).")
        rewards[name] = r
    return rewards


def make_optimizer(params, settings: RenoSettings) -> torch.optim.Optimizer:
    """SGD with (Nesterov) momentum, ReNO's choice, or Adam."""
    if settings.optimizer == "sgd":
        return torch.optim.SGD(params, lr=settings.lr, momentum=settings.momentum,
                               nesterov=settings.nesterov and settings.momentum > 0)
    if settings.optimizer == "adam":
        return torch.optim.Adam(params, lr=settings.lr, eps=settings.adam_eps)
    raise ValueError(f"optimizer {settings.optimizer!r} is unknown; use sgd or adam.")


def differentiable_sample(policy, eps: Tensor, cond, sigmas: Tensor, *, guidance: float,
                          gradient_checkpointing: bool = True) -> Tensor:
    """Euler ODE from eps along `sigmas` and decode, keeping the graph -> images [B, 3, H, W]."""
    x = eps
    B = eps.shape[0]
    for k in range(sigmas.numel() - 1):
        s, s_next = float(sigmas[k]), float(sigmas[k + 1])
        sig = torch.full((B,), s, device=eps.device)

        def vel(x, sig=sig):
            return policy.velocity(x, sig, cond, guidance=guidance)

        v = checkpoint(vel, x, use_reentrant=False) if gradient_checkpointing else vel(x)
        x = x + (s_next - s) * v
    return checkpoint(policy.decode, x, use_reentrant=False) if gradient_checkpointing else policy.decode(x)


def weighted_reward(rewards: dict, weights: dict[str, float], images: Tensor, prompts, metadata):
    """(sum_i w_i R_i [B], sum_i w_i L_i [B], {name: R_i [B]}) with ReNO's L_i = offset_i - R_i."""
    total_r, parts = weighted_sum(rewards, weights, images, prompts, metadata=metadata)
    offset = sum(w * RENO_OFFSETS.get(name, 0.0) for name, w in weights.items())
    return total_r, offset - total_r, parts


def optimize_noise(policy, prompt: str, rewards: dict, settings: RenoSettings, *, seed: int = 0,
                   metadata: dict | None = None, progress: bool = True) -> dict:
    """Run ReNO for one prompt. Returns initial/best images [1, 3, H, W], the metric trace (one row per
    iteration: reward, loss, regulariser, noise norm, grad norm, per-reward values), the best
    iteration, NFE and seconds per iteration."""
    st = settings
    meta = [metadata or {"prompt": prompt}]
    cond = policy.encode([prompt])
    sigmas = policy.sigmas(st.steps, st.height, st.width)
    g = torch.Generator().manual_seed(seed)
    eps = torch.nn.Parameter(policy.initial_noise(1, st.height, st.width, g))
    opt = make_optimizer([eps], st)
    trace, best, initial = [], None, None
    nfe0, t0 = policy.nfe, time.time()
    bar = tqdm(range(st.iters), desc="flowalign reno", disable=not progress)
    for it in bar:
        images = differentiable_sample(policy, eps, cond, sigmas, guidance=st.guidance,
                                       gradient_checkpointing=st.gradient_checkpointing)
        r, loss_r, parts = weighted_reward(rewards, st.weights, images, [prompt], meta)
        reg = chi_regulariser(eps)
        value = float(r.detach()[0])
        if initial is None:
            initial = images.detach().clone()
        if best is None or value > best["reward"]:
            best = {"reward": value, "iteration": it, "image": images.detach().clone()}
        row = {"iteration": it, "reward": value, "loss": float((loss_r + st.reg_weight * reg).detach()[0]),
               "regulariser": float(reg.detach()[0]), "noise_norm": float(eps.detach().norm()),
               **{f"reward_{k}": float(v.detach()[0]) for k, v in parts.items()}}
        bar.set_postfix(reward=f"{value:.3f}", best=f"{best['reward']:.3f}")
        if it == st.iters - 1:  # the last evaluation only scores the final noise (ReNO: iters - 1 updates)
            trace.append(row)
            break
        opt.zero_grad(set_to_none=True)
        (loss_r + st.reg_weight * reg).sum().backward()
        row["grad_norm"] = float(torch.nn.utils.clip_grad_norm_([eps], st.grad_clip))
        opt.step()
        trace.append(row)
    elapsed = time.time() - t0
    return {"prompt": prompt, "initial_image": initial, "best_image": best["image"], "best_reward": best["reward"],
            "initial_reward": trace[0]["reward"], "best_iteration": best["iteration"], "trace": trace,
            "nfe": policy.nfe - nfe0, "seconds_per_iteration": elapsed / st.iters}


@torch.no_grad()
def best_of_n(policy, prompt: str, rewards: dict, settings: RenoSettings, n: int, *, seed: int = 0,
              metadata: dict | None = None, batch_size: int = 16) -> dict:
    """The baseline: n independent noises, the best image by the weighted reward."""
    st = settings
    cond = policy.encode([prompt])
    sigmas = policy.sigmas(st.steps, st.height, st.width)
    g = torch.Generator().manual_seed(seed)
    best, values = None, []
    nfe0 = policy.nfe
    for lo in range(0, n, batch_size):
        m = min(batch_size, n - lo)
        eps = policy.initial_noise(m, st.height, st.width, g)
        rows = torch.zeros(m, dtype=torch.long)
        c = cond.select(rows)
        images = differentiable_sample(policy, eps, c, sigmas, guidance=st.guidance, gradient_checkpointing=False)
        r, _, _ = weighted_reward(rewards, st.weights, images, [prompt] * m, [metadata or {"prompt": prompt}] * m)
        values.extend(r.tolist())
        i = int(torch.argmax(r))
        if best is None or float(r[i]) > best["reward"]:
            best = {"reward": float(r[i]), "image": images[i:i + 1].clone()}
    return {"prompt": prompt, "best_image": best["image"], "best_reward": best["reward"], "rewards": values,
            "nfe": policy.nfe - nfe0}


def write_result(res: dict, out_dir: str, scale: int = 4) -> None:
    """initial_final.png (side by side), trace.jsonl and trace.png into `out_dir`."""
    import json
    import os

    from .images import save_grid

    os.makedirs(out_dir, exist_ok=True)
    save_grid(torch.cat([res["initial_image"], res["best_image"]]), os.path.join(out_dir, "initial_final.png"),
              nrow=2, scale=scale)
    with open(os.path.join(out_dir, "trace.jsonl"), "w") as f:
        for row in res["trace"]:
            f.write(json.dumps(row) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot([r["iteration"] for r in res["trace"]], [r["reward"] for r in res["trace"]], label="weighted reward")
    ax.axhline(res["best_reward"], ls="--", c="gray", label="best")
    ax.set_xlabel("ReNO iteration")
    ax.set_ylabel("reward")
    ax.set_title(res["prompt"][:60], fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "trace.png"), dpi=100)
    plt.close(fig)
