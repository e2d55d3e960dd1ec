"""Behaviours a planted bug could slip past (issue 26's audit): resume exactness with warm-up and EMA on,
checkpoint atomicity when a save fails partway, per-tree and per-group normalisation at very
different reward scales, and gradients that do not depend on how a batch is split into chunks."""

import json
import os
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

import samplers
from flowalign.config import load_config
from flowalign.trainer import Trainer, _checkpoints
from tests.flowalign.test_train import overrides
from tests.helpers import gaussian_velocity


def _cfg(tiny, out, prompts, **kw):
    return load_config(None, overrides(tiny, str(out), prompts, **{"run.sample_every": 0, **kw}))


def test_resume_is_exact_with_warmup_and_ema(tiny_sd3_dir, tmp_path, prompts_file):
    """An uninterrupted 3-iteration run and a 1-iteration run resumed to 3 end with identical weights,
    EMA and learning rate while the warm-up is still ramping."""
    kw = {"optim.warmup_iterations": 6, "optim.ema_decay": 0.8, "run.checkpoint_every": 1}
    a = Trainer(_cfg(tiny_sd3_dir, tmp_path / "a", prompts_file, **{"run.max_iterations": 3, **kw}))
    a.train()
    Trainer(_cfg(tiny_sd3_dir, tmp_path / "b", prompts_file, **{"run.max_iterations": 1, **kw})).train()
    b = Trainer(_cfg(tiny_sd3_dir, tmp_path / "b", prompts_file, **{"run.max_iterations": 3, "run.resume": True, **kw}))
    b.train()
    for pa, pb in zip(a.params, b.params):
        assert torch.equal(pa, pb)
    for sa, sb in zip(a.ema.state_dict()["shadow"], b.ema.state_dict()["shadow"]):
        assert torch.equal(sa, sb)
    assert a.ema.steps == b.ema.steps > 0  # the EMA's warm-up resumes where it stopped
    assert a.optimizer.param_groups[0]["lr"] == b.optimizer.param_groups[0]["lr"] < 1e-2  # still warming up


def test_a_save_that_fails_partway_leaves_the_last_good_checkpoint(tiny_sd3_dir, tmp_path, prompts_file, monkeypatch):
    out = tmp_path / "run"
    t = Trainer(_cfg(tiny_sd3_dir, out, prompts_file, **{"run.max_iterations": 2, "run.checkpoint_every": 1}))
    real_save = torch.save
    calls = {"n": 0}

    def failing_save(obj, path, *a, **k):
        if str(path).endswith("scheduler.pt") and "iter_000002" in str(path):
            raise OSError(28, "No space left on device", str(path))
        calls["n"] += 1
        return real_save(obj, path, *a, **k)

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="No space left"):
        t.train()
    monkeypatch.setattr(torch, "save", real_save)
    assert [os.path.basename(c) for c in _checkpoints(str(out / "checkpoints"))] == ["iter_000001"]
    assert sorted(os.listdir(out / "checkpoints" / "iter_000001")) == [
        "config.yaml", "optimizer.pt", "rng_0.pt", "scheduler.pt", "state.json", "trainable.safetensors"]
    assert not (out / ".lock").exists()
    r = Trainer(_cfg(tiny_sd3_dir, out, prompts_file, **{"run.max_iterations": 2, "run.checkpoint_every": 1,
                                                          "run.resume": True}))
    r.resume()
    assert r.iteration == 1
    # the failed save's half-written folder is still there (never listed); the same process saving again
    # (a retry once space is freed) clears it first instead of failing on it
    assert [d for d in os.listdir(out / "checkpoints") if ".tmp" in d] == [f"iter_000002.tmp{os.getpid()}"]
    assert os.path.basename(t.save_checkpoint()) == "iter_000002"
    assert [d for d in os.listdir(out / "checkpoints") if ".tmp" in d] == []
    assert "scheduler.pt" in os.listdir(out / "checkpoints" / "iter_000002")
    # saving the same iteration again replaces the finished folder
    assert os.path.basename(t.save_checkpoint()) == "iter_000002"
    # pruning an old checkpoint that cannot be removed (another process took it) does not stop the run
    from flowalign import trainer as trainer_module

    real_rmtree = trainer_module.shutil.rmtree

    def stubborn(path, ignore_errors=False, **kw):
        if "iter_000001" in str(path) and not ignore_errors:
            raise OSError(16, "Device or resource busy", str(path))
        return real_rmtree(path, ignore_errors=ignore_errors, **kw)

    monkeypatch.setattr(trainer_module.shutil, "rmtree", stubborn)
    t.cfg.run.keep_checkpoints = 1
    assert os.path.basename(t.save_checkpoint()) == "iter_000002"


def _same_state(a, b) -> bool:
    """Nested dicts/lists of tensors and plain values, equal leaf by leaf."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and set(a) == set(b) and all(_same_state(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_same_state(x, y) for x, y in zip(a, b))
    return a == b


def test_the_sharded_checkpoint_layout_holds_every_state_per_rank(tiny_sd3_dir, tmp_path, prompts_file):
    """run.sharding=fsdp2's checkpoint, written in this process by a 1-process trainer told it is sharded
    (its parameters are plain tensors then, which to_local passes through): this rank's weights,
    optimiser, EMA and algorithm state in files named by rank and no unsharded ones, with the
    scheduler, RNG and state.json beside them. The 2-process FSDP2 tests (test_fsdp2.py) resume from
    the real thing; mutation testing cannot see inside their processes."""
    from safetensors.torch import load_file

    from flowalign.trainer import load_state
    from tests.flowalign.test_nft import NFT
    from tests.flowalign.test_nft import overrides as nft_overrides

    t = Trainer(load_config(None, nft_overrides(tiny_sd3_dir, str(tmp_path / "run"), prompts_file, **{
        **NFT, "optim.ema_decay": 0.5, "optim.warmup_iterations": 2, "run.max_iterations": 1, "run.sample_every": 0})))
    t.iterate()
    t.iteration = 1
    t.sharded = True
    path = t.save_checkpoint()
    assert sorted(os.listdir(path)) == ["algorithm_rank0.pt", "config.yaml", "ema_rank0.pt", "optimizer_rank0.pt",
                                        "rng_0.pt", "scheduler.pt", "state.json", "trainable_rank0.safetensors"]
    w = load_file(os.path.join(path, "trainable_rank0.safetensors"))
    assert list(w) == sorted(t.param_names) and len(w) == len(t.params) > 1
    assert all(torch.equal(w[n], p.detach()) for n, p in zip(t.param_names, t.params))
    assert _same_state(load_state(os.path.join(path, "optimizer_rank0.pt")), t.optimizer.state_dict())
    assert _same_state(load_state(os.path.join(path, "ema_rank0.pt")), t.ema.state_dict())
    assert _same_state(load_state(os.path.join(path, "algorithm_rank0.pt")), t.algo.state_dict())
    assert json.load(open(os.path.join(path, "state.json")))["sharding"] == "fsdp2"
    # and an unsharded run refuses to resume from it (its state.json says how it was written)
    again = Trainer(load_config(None, nft_overrides(tiny_sd3_dir, str(tmp_path / "run"), prompts_file, **{
        **NFT, "optim.ema_decay": 0.5, "optim.warmup_iterations": 2, "run.max_iterations": 2, "run.sample_every": 0,
        "run.resume": True})))
    with pytest.raises(ValueError, match=r"written as FSDP2 shards by 1 process\(es\), this run is unsharded"):
        again.resume()


def test_depthwise_advantages_are_per_tree_at_any_reward_scale():
    """Two trees whose rewards differ by a factor 1000: each tree's advantages are those it has alone."""
    from flowalign.algorithms.branch_grpo import depthwise_advantages, fuse_rewards

    g = torch.Generator().manual_seed(0)
    tree = samplers.tree_rollout(gaussian_velocity(0.3, 0.5), torch.randn(2, 3, generator=g, dtype=torch.float64),
                                 samplers.linear_sigmas(6), split_steps=(0, 2), branch_factor=2, generator=g)
    leaf_r = torch.rand(tree.leaves.numel(), generator=g, dtype=torch.float64)
    first = tree.root[tree.leaves] == 0
    scaled = torch.where(first, leaf_r, 1000 * leaf_r + 7)
    both = depthwise_advantages(tree, fuse_rewards(tree, scaled), clip=float("inf"))
    alone = depthwise_advantages(tree, fuse_rewards(tree, leaf_r), clip=float("inf"))
    # per tree: the other tree's shift and scale change nothing (up to the 1e-8 in the std denominator)
    assert torch.allclose(both, alone, rtol=0, atol=1e-6)
    mixed = torch.where(first, leaf_r, 1000 * leaf_r)  # scaling one tree scales nothing of its advantages
    assert torch.allclose(depthwise_advantages(tree, fuse_rewards(tree, mixed), clip=float("inf")), alone, atol=1e-6)


def test_group_advantages_are_per_group_at_any_reward_scale():
    from flowalign.advantages import group_advantages

    r = torch.rand(8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ids = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    scaled = torch.where(ids == 0, r, 1000 * r - 3)
    a = group_advantages(scaled, ids, std_scope="group", clip=float("inf"))
    b = group_advantages(r, ids, std_scope="group", clip=float("inf"))
    assert torch.allclose(a, b, atol=1e-3)  # (the 1e-4 in the std denominator is the only scale effect)


class Accumulate:
    """An update that only accumulates gradients (no optimiser step), to compare chunkings."""

    def backward(self, loss, last=True):
        loss.backward()

    def step(self):
        return {"grad_norm": 0.0}


@pytest.mark.parametrize("chunk", [1, 2, 3, 100])
def test_branch_epoch_gradient_does_not_depend_on_the_chunking(chunk):
    """update_schedule=epoch: the accumulated gradient is the mean over all kept edges whatever
    train_batch_size (parents per forward) is."""
    from flowalign.algorithms.base import Advantages
    from flowalign.algorithms.branch_grpo import BranchGRPO, BranchGRPOConfig, TreeRollout, stochastic_edges
    from flowalign.config import SamplerConfig
    from flowalign.losses import grpo_objective

    g = torch.Generator().manual_seed(3)
    tree = samplers.tree_rollout(gaussian_velocity(0.3, 0.5), torch.randn(2, 3, generator=g, dtype=torch.float64),
                                 samplers.linear_sigmas(5), split_steps=(0, 2), branch_factor=2, generator=g)
    adv = torch.randn(tree.num_nodes, generator=g, dtype=torch.float64)
    coef = torch.randn(tree.num_nodes, generator=g, dtype=torch.float64)

    def grad_with(train_batch_size):
        cfg = OmegaConf.merge(OmegaConf.structured(BranchGRPOConfig), {
            "update_schedule": "epoch", "split_steps": [0, 2], "group_size": 4, "train_batch_size": train_batch_size,
            "clip_range": 0.2})
        algo = BranchGRPO(cfg, OmegaConf.structured(SamplerConfig(num_steps=5)))
        theta = torch.zeros((), dtype=torch.float64, requires_grad=True)
        algo._edges_loss = lambda policy, ro, parents, child, a: grpo_objective(
            tree.log_probs[child] + theta * coef[child], tree.log_probs[child], a[child], 0.2)
        ro = TreeRollout(["p", "q"], [{}, {}], torch.tensor([0, 1]), None, tree, algo.kinds, torch.ones(5))
        algo.policy_step(None, ro, Advantages(None, adv, stochastic_edges(tree)), Accumulate(),
                         torch.Generator().manual_seed(0))
        return float(theta.grad)

    edges = torch.nonzero(stochastic_edges(tree)).flatten()
    want = float(-(adv[edges] * coef[edges]).mean())  # d/dtheta of mean(-A ratio) at ratio 1
    assert grad_with(chunk) == pytest.approx(want, rel=1e-12, abs=1e-12)


def test_resume_restores_every_global_rng_and_the_checkpoints_keep_count(tiny_sd3_dir, tmp_path, prompts_file):
    """The torch, python and numpy global generators come back exactly as they were when the
    checkpoint was written, whatever ran in between; run.keep_checkpoints keeps the newest ones."""
    import random

    import numpy as np

    from flowalign.trainer import load_state

    out = tmp_path / "run"
    kw = {"run.checkpoint_every": 1, "run.keep_checkpoints": 2}
    Trainer(_cfg(tiny_sd3_dir, out, prompts_file, **{"run.max_iterations": 3, **kw})).train()
    assert [os.path.basename(c) for c in _checkpoints(str(out / "checkpoints"))] == ["iter_000002", "iter_000003"]
    saved = load_state(str(out / "checkpoints" / "iter_000003" / "rng_0.pt"))
    torch.manual_seed(12345), random.seed(12345), np.random.seed(12345)  # anything could have run since
    t = Trainer(_cfg(tiny_sd3_dir, out, prompts_file, **{"run.max_iterations": 4, "run.resume": True, **kw}))
    t.resume()
    assert torch.equal(torch.get_rng_state(), saved["torch"])
    assert random.getstate() == saved["python"]
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    assert (kind, pos, has_gauss, cached) == (saved["numpy"]["kind"], saved["numpy"]["pos"],
                                              saved["numpy"]["has_gauss"], saved["numpy"]["cached_gaussian"])
    assert np.array_equal(keys, saved["numpy"]["keys"].numpy().astype(np.uint32))
    assert t.iteration == 3
    state = json.load(open(out / "checkpoints" / "iter_000003" / "state.json"))
    assert state == {"iteration": 3, "data_position": 3, "seed": t.cfg.run.seed, "world_size": 1, "sharding": "none"}


def test_group_noise_is_one_seeded_draw_per_group_at_the_asked_size(sd3_policy):
    """Flow-GRPO's shared noise: row i is the policy's noise from a generator seeded by
    (seed, iteration, group_ids[i]), at the requested height and width; the same on every call."""
    from flowalign.algorithms.flow_grpo import group_noise
    from flowalign.seeds import group_noise_seed

    ids = torch.tensor([4, 9, 4])
    # neither side is the policy's default, so dropping either one changes the shape
    a = group_noise(sd3_policy, ids, 3, 2, 48, 64)
    shape = sd3_policy.latent_shape(48, 64)
    assert a.shape == (3, *shape) and shape not in (sd3_policy.latent_shape(None, 64), sd3_policy.latent_shape(48, None))
    assert torch.equal(a, group_noise(sd3_policy, ids, 3, 2, 48, 64))
    assert torch.equal(a[0], a[2]) and not torch.equal(a[0], a[1])
    want = sd3_policy.initial_noise(1, 48, 64, torch.Generator().manual_seed(group_noise_seed(3, 2, 9)))
    assert torch.equal(a[1:2], want)


def test_final_prompts_pair_each_final_latent_with_its_own_prompt():
    """The learned reward's update gets one prompt per final image, in the final latents' order:
    the rollout's prompts (Flow-GRPO, NFT), each leaf's tree's prompt (BranchGRPO)."""
    from omegaconf import OmegaConf

    import samplers
    from flowalign.algorithms.branch_grpo import BranchGRPO, BranchGRPOConfig, TreeRollout
    from flowalign.algorithms.flow_grpo import FlowGRPO, FlowGRPOConfig, Rollout
    from flowalign.algorithms.nft import NFT, NFTConfig
    from flowalign.config import SamplerConfig

    sampler = OmegaConf.structured(SamplerConfig(num_steps=4))
    traj = samplers.rollout(lambda x, s, rows=None: -x, torch.randn(3, 2), samplers.linear_sigmas(4), kinds="ode")
    ro = Rollout(["a", "b", "a"], [{}] * 3, torch.tensor([0, 1, 0]), None, traj)
    for algo in (FlowGRPO(OmegaConf.structured(FlowGRPOConfig), sampler), NFT(OmegaConf.structured(NFTConfig), sampler)):
        assert algo.final_prompts(ro) == ["a", "b", "a"] and algo.final_latents(ro).shape[0] == 3
    cfg = OmegaConf.merge(OmegaConf.structured(BranchGRPOConfig), {"split_steps": [1], "group_size": 2})
    tree = samplers.tree_rollout(lambda x, s, rows=None: -x, torch.randn(2, 2), samplers.linear_sigmas(4),
                                 split_steps=(1,), branch_factor=2, generator=torch.Generator().manual_seed(0))
    branch = BranchGRPO(cfg, sampler)
    tro = TreeRollout(["p", "q"], [{}, {}], torch.tensor([0, 1]), None, tree, branch.kinds, torch.ones(4))
    assert branch.final_prompts(tro) == [["p", "q"][r] for r in tree.root[tree.leaves].tolist()]
    assert sorted(branch.final_prompts(tro)) == ["p", "p", "q", "q"]


class _Served:
    """A reward scored in the background, as a served one is: submit() returns a future."""

    def __init__(self, reward):
        from concurrent.futures import ThreadPoolExecutor

        self.reward, self.pool, self.calls, self.prompts = reward, ThreadPoolExecutor(1), [], []

    def submit(self, images, prompts, **context):
        self.calls.append(len(images))
        self.prompts.append(prompts)
        return self.pool.submit(self.reward, images, prompts, **context)

    def __call__(self, images, prompts, **context):
        raise AssertionError("a served reward is submitted, not called")


def test_decode_rewards_scores_each_chunk_with_its_own_prompts_and_metadata(sd3_policy):
    """Rewards of latents decoded in chunks equal the reward of all the images at once, row for row
    (prompts and metadata sliced with the chunk), as float32; a served reward is submitted chunk by
    chunk; with parts (Flow-GRPO's reward_aggregation=advantage) each part's column comes before the
    weighted total."""
    from flowalign.algorithms import build_algorithm
    from flowalign.algorithms.base import decode_rewards
    from flowalign.config import SamplerConfig
    from reward_models import build_reward

    latents = sd3_policy.initial_noise(5, generator=torch.Generator().manual_seed(0))
    colours = ["red", "blue", "green", "yellow", "purple"]
    metas = [{"prompt": f"{1 + i % 2} {c} circles", "include": [{"class": "circle", "count": 1 + i % 2, "color": c}]}
             for i, c in enumerate(colours)]
    prompts = [m["prompt"] for m in metas]
    images = sd3_policy.decode(latents)
    soft = build_reward("shapes_soft", temperature=0.5)
    want = soft(images, prompts, metadata=metas).float()
    assert want.unique().numel() == 5  # rows differ, so a misaligned chunk shows
    got = decode_rewards(sd3_policy, soft, latents, prompts, metas, chunk=2)
    assert got.dtype == torch.float32 and got.shape == (5,)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    served = _Served(soft)
    torch.testing.assert_close(decode_rewards(sd3_policy, served, latents, prompts, metas, chunk=2), want,
                               rtol=1e-5, atol=1e-6)
    assert served.calls == [2, 2, 1] and served.prompts == [prompts[:2], prompts[2:4], prompts[4:]]

    weighted = build_reward("weighted", weights={"shapes_soft": 2.0, "jpeg_compressibility": 0.5},
                            args={"shapes_soft": {"temperature": 0.5}})
    jpeg = build_reward("jpeg_compressibility")(images, prompts).float()
    cols = torch.stack([want, jpeg, 2.0 * want + 0.5 * jpeg], dim=1)
    torch.testing.assert_close(decode_rewards(sd3_policy, weighted, latents, prompts, metas, chunk=2, parts=True),
                               cols, rtol=1e-5, atol=1e-6)
    # Flow-GRPO scores the parts exactly when its advantages are per reward
    ro = SimpleNamespace(traj=SimpleNamespace(final=latents), prompts=prompts, metadata=metas)
    sampler = OmegaConf.structured(SamplerConfig)
    for aggregation, shape in (("advantage", (5, 3)), ("sum", (5,))):
        algo = build_algorithm(OmegaConf.create({"name": "flow_grpo", **_flow_grpo_defaults(),
                                                 "reward_aggregation": aggregation}), sampler, part_weights=[2.0, 0.5])
        assert algo.score(sd3_policy, ro, weighted).shape == shape


def test_decode_rewards_default_chunk_is_64_images():
    """Without `chunk`, latents are decoded and scored 64 at a time (each chunk with its prompts)."""
    from flowalign.algorithms.base import decode_rewards

    class Count:
        def __init__(self):
            self.calls = []

        def __call__(self, images, prompts, metadata):
            self.calls.append((len(images), prompts[0], len(prompts)))
            return images.flatten(1).sum(1)

    latents = torch.arange(130, dtype=torch.float32)[:, None]
    prompts = [f"p{i}" for i in range(130)]
    reward = Count()
    got = decode_rewards(SimpleNamespace(decode=lambda x: x * 2), reward, latents, prompts, [{}] * 130)
    assert reward.calls == [(64, "p0", 64), (64, "p64", 64), (2, "p128", 2)]
    assert torch.equal(got, latents[:, 0] * 2)


def _flow_grpo_defaults():
    from flowalign.algorithms.flow_grpo import FlowGRPOConfig

    return OmegaConf.to_container(OmegaConf.structured(FlowGRPOConfig))


def test_flow_grpo_advantages_use_the_scope_the_clip_and_the_part_weights():
    """Flow-GRPO's advantages over the gathered batch (this process is rank 1 of 2) equal the group
    advantages with the config's std scope and clip; with per-part rewards [N, P + 1] they are the
    weighted per-reward advantages of the parts (the total column is not used)."""
    from flowalign.advantages import group_advantages, multi_reward_advantages
    from flowalign.algorithms import build_algorithm
    from flowalign.config import SamplerConfig
    from tests.helpers import SecondOfTwo

    g = torch.Generator().manual_seed(5)
    ids = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2])
    total = torch.randn(8, generator=g, dtype=torch.float64) * torch.tensor([1.0] * 3 + [20.0] * 3 + [0.1] * 2,
                                                                             dtype=torch.float64)
    parts = torch.stack([total, torch.randn(8, generator=g, dtype=torch.float64), total * 3 + 1], dim=1)
    sampler = OmegaConf.structured(SamplerConfig)
    seen = set()
    for scope, clip in (("group", 0.8), ("batch", 1.3), ("batch", 50.0)):
        cfg = OmegaConf.create({**_flow_grpo_defaults(), "std_scope": scope, "adv_clip_max": clip})
        algo = build_algorithm(cfg, sampler)
        ro = SimpleNamespace(group_ids=ids[4:])
        got = algo.advantages(ro, total[4:], SecondOfTwo(total[:4], ids[:4]))
        want = group_advantages(total, ids, std_scope=scope, clip=clip)
        assert torch.equal(got.all_rewards, total) and torch.equal(got.local, want[4:])
        seen.add(tuple(want.tolist()))
        per = build_algorithm(OmegaConf.merge(cfg, {"reward_aggregation": "advantage"}), sampler, part_weights=[2.0, 0.5])
        want = multi_reward_advantages(parts[:, :2], [2.0, 0.5], ids, std_scope=scope, clip=clip)
        assert torch.equal(per.group_advantages(parts, ids), want)
        seen.add(tuple(want.tolist()))
    assert len(seen) == 6  # every setting, and the per-part path, changes the advantages


def test_the_engines_shared_helpers_on_hand_built_inputs(tmp_path):
    """expand_groups: each prompt repeated group_size times, each process a contiguous share (a group
    may span two), an uneven split refused; gathered: the whole batch's function, this rank's rows;
    sde_noise_levels: the constant noise level, or psi from a list or a psi.json, converted as
    samplers.psi_to_noise_levels does; the registry builds each algorithm with its weights."""
    from flowalign.algorithms import ALGORITHMS, build_algorithm, registered
    from flowalign.algorithms.base import expand_groups, gathered, sde_noise_levels
    from flowalign.config import SamplerConfig
    from tests.helpers import FirstOfTwo, SecondOfTwo

    metas = [{"prompt": p} for p in "abc"]
    shares = [expand_groups(metas, 4, rank, 3) for rank in range(3)]
    assert [[m["prompt"] for m in mine] for mine, _ in shares] == [list("aaaa"), list("bbbb"), list("cccc")]
    shares = [expand_groups(metas, 2, rank, 2) for rank in range(2)]
    assert [[m["prompt"] for m in mine] for mine, _ in shares] == [list("aab"), list("bcc")]
    assert [ids.tolist() for _, ids in shares] == [[0, 0, 1], [1, 2, 2]] and shares[0][1].dtype == torch.long
    with pytest.raises(ValueError, match="= 6 samples must divide evenly over 4 processes"):
        expand_groups(metas, 2, 0, 4)

    r, ids = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 7.0]), torch.tensor([0, 0, 1, 1, 2, 2])
    all_r, all_out, mine = gathered(SecondOfTwo(r[:3], ids[:3]), r[3:], ids[3:], lambda x, g: x * 10 + g)
    assert torch.equal(all_r, r) and torch.equal(all_out, r * 10 + ids) and torch.equal(mine, (r * 10 + ids)[3:])
    # rank 0 of two: its own rows are the first half
    _, _, mine = gathered(FirstOfTwo(r[3:], ids[3:]), r[:3], ids[:3], lambda x, g: x * 10 + g)
    assert torch.equal(mine, (r * 10 + ids)[:3])

    sigmas = torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0], dtype=torch.float64)
    cfg = OmegaConf.structured(SamplerConfig(noise_level=0.65))
    levels = sde_noise_levels(cfg, sigmas)
    assert levels.dtype == torch.float64 and torch.equal(levels, torch.full((4,), 0.65, dtype=torch.float64))
    psi = [0.2, 0.4, 0.6, 0.8]
    want = samplers.psi_to_noise_levels(psi, sigmas)
    cfg.psi = psi
    assert torch.equal(sde_noise_levels(cfg, sigmas), want) and not torch.equal(want, levels)
    (tmp_path / "psi.json").write_text(json.dumps({"psi": psi, "history": [psi]}))
    cfg.psi = str(tmp_path / "psi.json")
    assert torch.equal(sde_noise_levels(cfg, sigmas), want)

    sampler = OmegaConf.structured(SamplerConfig)
    for name, reg in ALGORITHMS.items():
        assert registered(name) is reg
        algo = build_algorithm(OmegaConf.structured(reg.schema), sampler, part_weights=[1.0, 2.0])
        assert type(algo) is reg.algorithm and getattr(algo, "part_weights", [1.0, 2.0]) == [1.0, 2.0]
