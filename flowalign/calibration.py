"""DenseGRPO's exploration calibration (its Algorithm 1) as a recipe: roll out the base model with
the current per-step std psi(t), count positive and negative step gains, move psi per step
(`calibrate_psi`), repeat; write run.output_dir/psi.json for `sampler.psi`. `flowalign calibrate`."""

from __future__ import annotations

import json
import os

import torch
from torch import Tensor
from tqdm import tqdm

import samplers
from reward_models.base import default_device

from .algorithms.dense_grpo import DenseGRPO, calibrate_psi, step_gains
from .config import build_train_reward
from .data import iteration_prompts, load_prompt_rows
from .policies import load_policy
from .seeds import CALIBRATION_PROMPT_OFFSET, iteration_seed


def initial_psi(algo_cfg, sampler_cfg, sigmas: Tensor) -> Tensor:
    """calib_initial_psi: a float (every step), a list (one per step), or None: Flow-GRPO's
    std_t = noise_level * sqrt(sigma / (1 - sigma))."""
    K = sigmas.numel() - 1
    init = algo_cfg.calib_initial_psi
    if init is None:
        return sampler_cfg.noise_level * samplers.flow_sde_std_scale(sigmas)
    psi = torch.as_tensor(list(init) if not isinstance(init, (int, float)) else [float(init)] * K, dtype=torch.float64)
    if psi.numel() != K:
        raise ValueError(f"algorithm.calib_initial_psi has {psi.numel()} values for sampler.num_steps={K}; "
                         "give one value or one per step.")
    return psi


def calibrate(cfg, progress: bool = True) -> str:
    """Run DenseGRPO's exploration calibration for `cfg` (algorithm.name=dense_grpo) with the base
    model (no LoRA) and write run.output_dir/psi.json. Returns its path."""
    if cfg.algorithm.name != "dense_grpo":
        raise ValueError(f"calibrate needs algorithm.name=dense_grpo, got {cfg.algorithm.name!r}.")
    if cfg.sampler.kind != "flow_sde":
        raise ValueError(f"calibrate tunes flow_sde's std; sampler.kind={cfg.sampler.kind!r} must be flow_sde.")
    a, m = cfg.algorithm, cfg.model
    device = default_device(cfg.run.device)
    policy = load_policy(m.path, dtype=m.dtype, device=device, attention_backend=m.attention_backend,
                         max_sequence_length=m.max_sequence_length)
    policy.sigma_shift = cfg.sampler.shift
    height, width = m.height or policy.defaults.get("height"), m.width or policy.defaults.get("width")
    reward = build_train_reward(cfg)
    algo = DenseGRPO(a, cfg.sampler)
    rows = load_prompt_rows(cfg.data.train_prompts)
    sigmas = policy.sigmas(cfg.sampler.num_steps, height, width).to(torch.float64)
    psi = initial_psi(a, cfg.sampler, sigmas)
    history = [psi.tolist()]
    counts = []
    for r in tqdm(range(a.calib_rounds), desc="flowalign calibrate", disable=not progress):
        metas = iteration_prompts(rows, r, a.calib_trajectories, cfg.run.seed + CALIBRATION_PROMPT_OFFSET)
        gen = torch.Generator().manual_seed(iteration_seed(cfg.run.seed, r))
        gids = torch.arange(len(metas))
        ro = algo.rollout(policy, metas, gids, gen, height, width, seed=cfg.run.seed, iteration=r,
                          noise_level=samplers.psi_to_noise_levels(psi, sigmas))  # fresh shared noise per round
        with torch.no_grad():
            gains = step_gains(algo.latent_rewards(policy, ro, reward).cpu())
        counts.append({"positive": (gains > 0).sum(0).tolist(), "negative": (gains < 0).sum(0).tolist()})
        psi = calibrate_psi(psi, gains, algo.train_steps, eps1=a.calib_eps1, eps2=a.calib_eps2)
        history.append(psi.tolist())
    os.makedirs(cfg.run.output_dir, exist_ok=True)
    path = os.path.join(cfg.run.output_dir, "psi.json")
    with open(path + ".tmp", "w") as f:
        json.dump({"psi": psi.tolist(), "sigmas": sigmas.tolist(),
                   "noise_levels": samplers.psi_to_noise_levels(psi, sigmas).tolist(), "history": history,
                   "gain_counts": counts, "rounds": a.calib_rounds, "trajectories": a.calib_trajectories,
                   "eps1": a.calib_eps1, "eps2": a.calib_eps2, "model": m.path}, f, indent=1)
    os.replace(path + ".tmp", path)
    return path
