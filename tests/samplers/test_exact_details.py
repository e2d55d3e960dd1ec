"""Exact values, defaults, dtypes and boundaries of the sampler maths: the details the mutation
audit (issue 26, `make mutation`) found no test pinning down."""

import math

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

import samplers
from samplers.completion import complete_on_grid, complete_trajectory, ode_complete
from tests.helpers import gaussian_velocity


@pytest.mark.parametrize("steps", [3, 10, 28, 48, 50])
def test_default_schedule_is_diffusers_bit_for_bit(steps):
    """shift defaults to 1 and the grid is built in float32 like the scheduler's."""
    for kw, sch in (({}, FlowMatchEulerDiscreteScheduler()), ({"shift": 3.0}, FlowMatchEulerDiscreteScheduler(shift=3.0))):
        sch.set_timesteps(steps)
        assert torch.equal(samplers.flow_match_sigmas(steps, **kw), sch.sigmas)


def test_linear_time_shift_closed_form_and_through_the_schedule():
    s = torch.tensor([0.9, 0.5, 0.2], dtype=torch.float64)
    mu = 0.7
    want = torch.tensor([mu / (mu + (1 / x - 1)) for x in s.tolist()], dtype=torch.float64)
    assert torch.allclose(samplers.time_shift(s, mu, "linear"), want, rtol=1e-15, atol=0)
    assert torch.allclose(samplers.time_shift(s, mu), torch.exp(torch.tensor(mu)) / (math.exp(mu) + 1 / s - 1))
    with pytest.raises(ValueError, match="'cubic'"):
        samplers.time_shift(s, mu, "cubic")
    sch = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, time_shift_type="linear")
    sch.set_timesteps(8, mu=mu)
    got = samplers.flow_match_sigmas(8, mu=mu, time_shift_kind="linear")
    assert torch.allclose(got, sch.sigmas, atol=1e-6)
    assert not torch.allclose(got, samplers.flow_match_sigmas(8, mu=mu), atol=1e-3)


def test_step_kinds_window_defaults_and_boundaries():
    from samplers.rollout import step_kinds

    assert step_kinds(3) == ["flow_sde"] * 3
    assert step_kinds(4, "cps", (0, 4)) == ["cps"] * 4  # end == num_steps is allowed
    assert step_kinds(4, "cps", (3, 4)) == ["ode", "ode", "ode", "cps"]
    with pytest.raises(ValueError, match="SDE window"):
        step_kinds(4, "cps", (2, 2))  # empty window
    with pytest.raises(ValueError, match="SDE window"):
        step_kinds(4, "cps", (0, 5))


def test_noise_level_conversions_are_float64_from_python_floats_and_allow_zero():
    from samplers.flow_sde import flow_sde_std_scale, psi_to_noise_levels

    grid = [1.0, 0.7, 0.3, 0.0]
    scale = flow_sde_std_scale(grid)
    s = torch.tensor(grid, dtype=torch.float64)
    want = torch.sqrt(s[:-1] / (1 - torch.where(s[:-1] == 1, s[1:], s[:-1])))
    assert scale.dtype == torch.float64 and torch.allclose(scale, want, rtol=1e-15, atol=0)
    psi = [0.0, 0.1, 0.3]  # 0 is a valid std (that step is an ODE step)
    levels = psi_to_noise_levels(psi, grid)
    assert torch.equal(levels, torch.tensor(psi, dtype=torch.float64) / scale)
    with pytest.raises(ValueError, match="negative"):
        psi_to_noise_levels([0.1, -1e-9, 0.2], grid)


def test_tree_edges_paths_and_leaf_log_probs_by_hand():
    g = torch.Generator().manual_seed(0)
    t = samplers.tree_rollout(gaussian_velocity(0.5, 0.3), torch.randn(2, 3, generator=g, dtype=torch.float64),
                              samplers.linear_sigmas(6), split_steps=(0, 2, 4), branch_factor=2, generator=g)
    assert t.edges().tolist() == [n for n in range(t.num_nodes) if int(t.parent[n]) != -1]
    assert 0 in t.parent.tolist()  # node 0 has children: an edge out of node 0 is an edge
    t.log_probs = torch.randn(t.num_nodes, generator=g, dtype=torch.float64)  # every edge its own value
    want = []
    for leaf in t.leaves.tolist():
        path = t.leaf_path(leaf)
        assert int(t.parent[path[0]]) == -1 and path[-1] == leaf  # root first, leaf last
        assert all(int(t.parent[b]) == a for a, b in zip(path, path[1:]))
        want.append(sum(float(t.log_probs[n]) for n in path))
    assert t.leaf_log_prob().tolist() == pytest.approx(want, rel=1e-12)


def test_gaussian_kls_with_a_nonzero_reference_at_float64_precision():
    g = torch.Generator().manual_seed(1)
    m, ref = (torch.randn(2, 3, generator=g, dtype=torch.float64) for _ in range(2))
    want = [sum((a - b) ** 2 for a, b in zip(m[i].tolist(), ref[i].tolist())) / 3 / (2 * 0.3 ** 2) for i in range(2)]
    assert samplers.gaussian_mean_kl(m, ref, 0.3).tolist() == pytest.approx(want, rel=1e-14)
    from samplers.gaussian import flow_grpo_kl

    # Flow-GRPO divides by the std before the noise scale: std_t = std / noise_scale
    got = flow_grpo_kl(m, ref, 0.3, 0.5)
    want = [sum((a - b) ** 2 for a, b in zip(m[i].tolist(), ref[i].tolist())) / 3 / (2 * 0.6 ** 2) for i in range(2)]
    assert got.tolist() == pytest.approx(want, rel=1e-14)


def test_euler_step_computes_low_precision_inputs_in_float32():
    x = torch.tensor([[0.3, -1.2]], dtype=torch.bfloat16)
    v = torch.tensor([[0.7, 0.1]], dtype=torch.bfloat16)
    out = samplers.euler_step(x, v, 0.8, 0.55)
    assert out.prev_sample.dtype == torch.float32
    assert torch.equal(out.prev_sample, x.float() + (0.55 - 0.8) * v.float())


def _row_velocity(c):
    """v = c[row] x: a velocity that depends on which conditioning row a latent belongs to."""
    def vel(x, s, rows):
        return c[rows].view(-1, *([1] * (x.ndim - 1))).to(x.dtype) * x
    return vel


def _euler_product(c, s0, n):
    return math.prod(1 + (s0 * (1 - (j + 1) / n) - s0 * (1 - j / n)) * c for j in range(n))


def test_ode_complete_with_one_step_and_a_scalar_sigma():
    """num_steps=1 is one Euler step; a python float sigma applies to every latent, in float64."""
    x = torch.tensor([[1.0, -2.0], [0.5, 0.25], [3.0, 0.0]], dtype=torch.float64)
    out = ode_complete(lambda x, s, rows: 0.3 * x, x, 0.7, 1)
    assert torch.equal(out, x + (0.0 - 0.7) * (0.3 * x))
    out2 = ode_complete(lambda x, s, rows: 0.3 * x, x, 0.7, 2)
    assert torch.equal(out2, (x + (0.35 - 0.7) * 0.3 * x) * (1 + (0.0 - 0.35) * 0.3))
    with pytest.raises(ValueError, match="num_steps=0"):
        ode_complete(lambda x, s, rows: x, x, 0.7, 0)


def test_completions_pass_each_latents_conditioning_row():
    c = torch.tensor([0.5, -1.0, 2.0, 7.0], dtype=torch.float64)  # more rows than latents: rows must be passed
    x = torch.ones(3, 2, dtype=torch.float64)
    out = ode_complete(_row_velocity(c), x, torch.tensor([0.9, 0.6, 0.3]), 3)  # rows default to 0..N-1
    for i, s0 in enumerate([0.9, 0.6, 0.3]):
        s0 = float(torch.tensor(s0, dtype=torch.float32))
        assert out[i].tolist() == pytest.approx([_euler_product(float(c[i]), s0, 3)] * 2, rel=1e-12)
    # trajectories: state (b, k) belongs to row b
    lat = torch.ones(3, 4, 2, dtype=torch.float64)
    sig = samplers.linear_sigmas(3)
    traj = complete_trajectory(_row_velocity(c), lat, sig, 2, steps=[1, 2])
    assert traj.shape == (3, 2, 2)
    for b in range(3):
        for j, k in enumerate([1, 2]):
            assert traj[b, j, 0].item() == pytest.approx(_euler_product(float(c[b]), float(sig[k]), 2), rel=1e-12)
    grid = complete_on_grid(_row_velocity(c), lat, sig.tolist(), [1, 2])
    for b in range(3):
        for j, k in enumerate([1, 2]):
            want = math.prod(1 + (float(sig[i + 1]) - float(sig[i])) * float(c[b]) for i in range(k, 3))
            assert grid[b, j, 0].item() == pytest.approx(want, rel=1e-12)
    assert complete_on_grid(_row_velocity(c), lat, sig, []).shape == (3, 0, 2)


def _root_velocity(x, s, rows):
    """A velocity that depends on the latent, the noise level and the conditioning row."""
    return (0.3 + 0.2 * rows.to(x.dtype)).view(-1, *([1] * (x.ndim - 1))) * x - 0.1 * s.to(x.dtype).view(-1, 1)


def test_tree_rollout_equals_a_hand_replay_of_its_steps_and_noise():
    """R=2 roots, K=3 steps, one correlated split at step 1: the same generator, replayed by hand
    through the step functions, gives every node."""
    sig = samplers.linear_sigmas(3)
    noise = torch.randn(2, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    t = samplers.tree_rollout(_root_velocity, noise, sig, split_steps=(1,), branch_factor=2, noise_level=0.4,
                              split_noise_scale=0.5, generator=torch.Generator().manual_seed(9))
    g = torch.Generator().manual_seed(9)
    rows = torch.arange(2)
    x = samplers.flow_sde_step(noise, _root_velocity(noise, torch.full((2,), float(sig[0])), rows), float(sig[0]),
                               float(sig[1]), noise_level=0.4, generator=g).prev_sample
    v = _root_velocity(x, torch.full((2,), float(sig[1])), rows)
    eta = torch.randn(4, 4, generator=g, dtype=torch.float64)
    xi0 = torch.randn(2, 4, generator=g, dtype=torch.float64).repeat_interleave(2, 0)
    xi = (xi0 + 0.5 * eta) / math.sqrt(1 + 0.25)
    x2 = samplers.flow_sde_step(x.repeat_interleave(2, 0), v.repeat_interleave(2, 0), float(sig[1]), float(sig[2]),
                                noise_level=0.4, noise=xi)
    rows = rows.repeat_interleave(2)
    x3 = samplers.flow_sde_step(x2.prev_sample, _root_velocity(x2.prev_sample, torch.full((4,), float(sig[2])), rows),
                                float(sig[2]), float(sig[3]), noise_level=0.4, generator=g)
    assert torch.equal(t.latents, torch.cat([noise, x, x2.prev_sample, x3.prev_sample]))
    assert torch.equal(t.log_probs[4:8], x2.log_prob.float()) and torch.equal(t.log_probs[8:], x3.log_prob.float())
    assert t.step.dtype == t.depth.dtype == t.parent.dtype == torch.long and t.sde_mask.dtype == torch.bool
    assert t.log_probs.dtype == torch.float32 and t.latents.dtype == torch.float64
    assert t.depth.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1]
    assert t.root.tolist() == [0, 1, 0, 1, 0, 0, 1, 1, 0, 0, 1, 1]


def test_tree_rollout_defaults_and_split_boundary():
    sig = samplers.linear_sigmas(3)
    noise = torch.randn(2, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    default = samplers.tree_rollout(_root_velocity, noise, sig, split_steps=(0,),
                                    generator=torch.Generator().manual_seed(1))
    explicit = samplers.tree_rollout(_root_velocity, noise, sig, split_steps=(0,), branch_factor=2, kinds="flow_sde",
                                     noise_level=0.7, split_noise_scale=1.0, mode="correlated",
                                     generator=torch.Generator().manual_seed(1))
    assert torch.equal(default.latents, explicit.latents) and default.latents.shape[0] == 2 + 4 * 3
    with pytest.raises(ValueError, match="split_steps"):
        samplers.tree_rollout(_root_velocity, noise, sig, split_steps=(3,))  # a split needs a step after it
    low = samplers.tree_rollout(_root_velocity, noise.to(torch.bfloat16), samplers.linear_sigmas(1), split_steps=(0,))
    assert low.latents.dtype == torch.float32  # roots cast to the steps' compute dtype


def test_transition_noise_scale_of_every_kind():
    assert samplers.transition_noise_scale("cps", 0.8, 0.6) == 1.0
    for kind in ("flow_sde", "dance_sde"):
        assert samplers.transition_noise_scale(kind, 0.8, 0.6) == math.sqrt(0.8 - 0.6)
    with pytest.raises(ValueError, match="no transition noise"):
        samplers.transition_noise_scale("ode", 0.8, 0.6)
    with pytest.raises(ValueError, match="unknown"):
        samplers.transition_noise_scale("sde", 0.8, 0.6)


def test_dpm2_trajectory_fields_rows_and_dtypes():
    """x0 predictions x - sigma v at every step, each row's own conditioning, float32 latents from
    float64 noise, ODE bookkeeping (zero log-probs, no stochastic step, zero noise levels)."""
    c = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)  # more rows than latents: rows must be passed
    sig = samplers.flow_match_sigmas(4, shift=3.0)
    seen = []

    def vel(x, s, rows):
        seen.append(x.clone())
        return _row_velocity(c)(x, s, rows).float()

    noise = torch.randn(2, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t = samplers.dpm2_rollout(vel, noise, sig)
    assert t.latents.dtype == torch.float32 and t.latents.shape == (2, 5, 3)
    assert torch.equal(t.latents[:, 0], noise.float())
    for k in range(4):
        v = vel(t.latents[:, k], None, torch.arange(2))
        assert torch.allclose(t.x0_preds[:, k], t.latents[:, k] - float(sig[k]) * v, rtol=0, atol=1e-7)
    # step 0 is Euler with each row's own velocity
    assert torch.allclose(t.latents[:, 1], noise.float() * (1 + (float(sig[1]) - float(sig[0])) * c[:2].float()[:, None]),
                          rtol=1e-6)
    assert torch.equal(t.log_probs, torch.zeros(2, 4)) and torch.equal(t.sde_mask, torch.zeros(4, dtype=torch.bool))
    assert t.kinds == ("ode",) * 4 and torch.equal(t.sigmas, sig)
    assert torch.equal(t.noise_level, torch.zeros(4, dtype=torch.float64))
    assert (t.sde_mask.dtype, t.noise_level.dtype, t.log_probs.dtype) == (torch.bool, torch.float64, torch.float32)
    # explicit rows reach the velocity
    r = samplers.dpm2_rollout(vel, noise, sig, rows=torch.tensor([2, 0]))
    assert torch.allclose(r.latents[:, 1], noise.float() * (1 + (float(sig[1]) - float(sig[0])) * c[[2, 0]].float()[:, None]),
                          rtol=1e-6)


@pytest.mark.parametrize("step", ["euler", "cps", "dance_sde", "flow_sde"])
def test_low_precision_steps_use_float32_sigmas_and_velocities(step):
    """bf16 inputs: the step's sigmas and product are float32 (0.7 and 0.33 are not bf16 numbers)."""
    x = torch.tensor([[0.3, -1.2]], dtype=torch.bfloat16)
    v = torch.tensor([[0.7, 0.1]], dtype=torch.bfloat16)
    fn = {"euler": samplers.euler_step, "cps": samplers.cps_step, "dance_sde": samplers.dance_sde_step,
          "flow_sde": samplers.flow_sde_step}[step]
    noise = torch.tensor([[0.5, -0.25]])
    kw = {} if step == "euler" else {"noise": noise}
    low = fn(x, v, 0.7, 0.33, **kw)
    ref = fn(x.float(), v.float(), 0.7, 0.33, **kw)
    assert low.prev_sample.dtype == torch.float32 and torch.equal(low.prev_sample, ref.prev_sample)
    assert torch.equal(low.mean, ref.mean)


def test_euler_rescoring_returns_the_given_sample_in_the_compute_dtype():
    x, v = torch.zeros(1, 2), torch.ones(1, 2)
    given = torch.tensor([[0.25, 0.5]], dtype=torch.bfloat16)
    out = samplers.euler_step(x, v, 0.8, 0.5, prev_sample=given)
    assert out.prev_sample.dtype == torch.float32 and torch.equal(out.prev_sample, given.float())
    assert out.log_prob.dtype == torch.float32
    d = samplers.euler_step(x.double(), v.double(), 0.8, 0.5)
    assert d.log_prob.dtype == d.std.dtype == torch.float64
    assert torch.equal(out.mean, torch.full((1, 2), -0.30000001192092896)) and out.log_prob.tolist() == [0.0]


@pytest.mark.parametrize("step, default_level", [("cps_step", 0.7), ("dance_sde_step", 0.3)])
def test_step_defaults_and_their_generator(step, default_level):
    fn = getattr(samplers, step)
    g = torch.Generator().manual_seed(0)
    x, v = torch.randn(2, 3, generator=g), torch.randn(2, 3, generator=g)
    a = fn(x, v, 0.8, 0.6, generator=torch.Generator().manual_seed(4))
    b = fn(x, v, 0.8, 0.6, noise_level=default_level, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a.prev_sample, b.prev_sample)  # the documented default noise level
    torch.manual_seed(123)  # the global generator is not the one given
    c = fn(x, v, 0.8, 0.6, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a.prev_sample, c.prev_sample)


def test_finish_step_adds_the_scaled_noise_in_the_means_dtype():
    """x' = mean + std * noise exactly (the references' sign: Flow-GRPO's prev_sample = mean +
    std_dev_t * variance_noise); float64 noise on a float32 mean is cast first, a bf16 prev_sample is
    re-scored in the mean's dtype; std comes back in the mean's dtype."""
    from samplers.gaussian import finish_step

    mean = torch.tensor([[0.25, -1.0]])
    noise = torch.tensor([[0.1, -2.0]], dtype=torch.float64)
    out = finish_step(mean, 0.3, noise=noise, generator=None, prev_sample=None)
    assert out.prev_sample.dtype == torch.float32
    assert torch.equal(out.prev_sample, mean + 0.3 * noise.float())
    given = torch.tensor([[0.5, 0.75]], dtype=torch.bfloat16)
    re = finish_step(mean, 0.3, noise=None, generator=None, prev_sample=given)
    assert re.prev_sample.dtype == torch.float32 and torch.equal(re.prev_sample, given.float())
    d = finish_step(mean.double(), 0.3, noise=noise, generator=None, prev_sample=None)
    assert d.std.dtype == torch.float64 and d.std.item() == 0.3  # not 0.3 rounded to float32
    assert torch.equal(d.prev_sample, mean.double() + 0.3 * noise)


def test_finish_step_draws_noise_in_the_means_dtype_from_the_generator():
    from samplers.gaussian import finish_step

    mean = torch.zeros(3, 4, dtype=torch.float64)
    out = finish_step(mean, 1.0, noise=None, generator=torch.Generator().manual_seed(4), prev_sample=None)
    want = torch.randn(3, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    assert torch.equal(out.prev_sample, want)


def test_gaussian_log_prob_takes_a_python_std_in_the_means_precision():
    from samplers.gaussian import gaussian_log_prob

    mean = torch.zeros(1, 2, dtype=torch.float64)
    sample = torch.tensor([[0.1, -0.2]], dtype=torch.float64)
    got = gaussian_log_prob(sample, mean, 0.3)
    want = -(0.1 ** 2 + 0.2 ** 2) / 2 / (2 * 0.3 ** 2) - math.log(0.3) - 0.5 * math.log(2 * math.pi)
    assert got.dtype == torch.float64 and got.item() == pytest.approx(want, rel=1e-15)


def test_randn_from_a_generator_on_another_device_keeps_the_dtype():
    """A CPU generator for a tensor elsewhere (the meta device stands in for a GPU here): drawn on the
    CPU in the requested dtype, then moved."""
    from samplers.gaussian import randn

    g = torch.Generator().manual_seed(0)
    out = randn((2, 3), g, "meta", torch.float64)
    assert out.device.type == "meta" and out.dtype == torch.float64
    assert torch.equal(randn((2, 3), torch.Generator().manual_seed(0), "cpu", torch.float64),
                       torch.randn(2, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64))


def test_rollout_defaults_rows_and_progress():
    """kinds defaults to the ODE, noise_level to 0.7; the velocity gets each sample's conditioning
    row (arange(B) by default, the given rows otherwise); `progress` wraps the steps."""
    seen = []

    def vel(x, s, rows):
        seen.append(rows.tolist())
        return -x

    noise = torch.randn(3, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sig = samplers.linear_sigmas(2)
    t = samplers.rollout(vel, noise, sig)
    assert t.kinds == ("ode", "ode") and torch.equal(t.log_probs, torch.zeros(3, 2, dtype=torch.float64))
    assert seen == [[0, 1, 2]] * 2
    seen.clear()
    wrapped = []

    def progress(it):
        wrapped.append(list(it))
        return iter(wrapped[-1])

    sde = samplers.rollout(vel, noise, sig, "flow_sde", rows=torch.tensor([2, 2, 0]), progress=progress,
                           generator=torch.Generator().manual_seed(1))
    assert seen == [[2, 2, 0]] * 2 and wrapped == [[0, 1]]
    assert torch.equal(sde.noise_level, torch.full((2,), 0.7, dtype=torch.float64))


def test_dpm2_computes_its_coefficients_in_float64_from_float32_sigmas():
    """float32 sigmas give the same trajectory as the same values in float64 (the solver's
    coefficients are float64 either way)."""
    sig = samplers.flow_match_sigmas(8, shift=3.0).float()
    noise = torch.randn(2, 8, generator=torch.Generator().manual_seed(3))
    vel = gaussian_velocity(0.5, 0.3)
    a = samplers.dpm2_rollout(lambda x, s, rows: vel(x.double(), s).float(), noise, sig)
    b = samplers.dpm2_rollout(lambda x, s, rows: vel(x.double(), s).float(), noise, sig.double())
    assert torch.equal(a.latents, b.latents)


def test_linear_sigmas_dtype_and_shift():
    """float64 by default, and the static shift for any shift other than 1 (shift 1 is the plain grid)."""
    plain = samplers.linear_sigmas(4)
    assert plain.dtype == torch.float64 and plain.tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert samplers.linear_sigmas(4, dtype=torch.float32).dtype == torch.float32
    for shift in (2.0, 3.0):
        want = [shift * s / (1 + (shift - 1) * s) for s in (1.0, 0.75, 0.5, 0.25, 0.0)]
        assert samplers.linear_sigmas(4, shift=shift).tolist() == pytest.approx(want, rel=1e-15)


def test_rollout_draws_from_its_generator_and_keeps_x0_in_the_velocitys_dtype():
    """The same generator seed gives the same SDE rollout (the global RNG is not used); the x0
    predictions are x - sigma v in the velocity's dtype."""
    noise = torch.randn(2, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sig = samplers.linear_sigmas(3)

    def run(seed):
        return samplers.rollout(lambda x, s, rows: (-x).float(), noise, sig, "flow_sde",
                                generator=torch.Generator().manual_seed(seed))

    a, b = run(1), run(1)
    assert torch.equal(a.latents, b.latents) and not torch.equal(a.latents, run(2).latents)
    assert a.x0_preds.dtype == torch.float32
    assert torch.equal(a.x0_preds[:, 0], noise.float() - 1.0 * (-noise).float())
