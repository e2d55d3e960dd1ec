"""Pure torch maths of flow-matching sampling: sigma schedules, ODE/SDE steps with
log-probabilities, flat and tree rollouts, and ODE completions. Imports no diffusers."""

from .completion import complete_on_grid, complete_trajectory, ode_complete
from .cps import cps_step
from .dance_sde import dance_sde_step
from .dpm import dpm2_rollout
from .euler import euler_step
from .flow_sde import flow_sde_std_scale, flow_sde_step, psi_to_noise_levels
from .gaussian import StepOutput, flow_grpo_kl, gaussian_log_prob, gaussian_mean_kl
from .rollout import STEP_KINDS, Trajectory, VelocityFn, rollout, step_fn, step_kinds, transition_noise_scale
from .schedules import dynamic_shift_mu, flow_match_sigmas, linear_sigmas, shift_sigmas, time_shift
from .tree import TreeTrajectory, tree_rollout

__all__ = [
    "STEP_KINDS", "StepOutput", "Trajectory", "TreeTrajectory", "VelocityFn",
    "complete_on_grid", "complete_trajectory", "cps_step", "dance_sde_step", "dpm2_rollout", "dynamic_shift_mu",
    "euler_step",
    "flow_grpo_kl", "flow_match_sigmas", "flow_sde_std_scale", "flow_sde_step", "gaussian_log_prob", "gaussian_mean_kl",
    "linear_sigmas", "ode_complete", "psi_to_noise_levels", "rollout", "shift_sigmas", "step_fn", "step_kinds",
    "time_shift", "transition_noise_scale", "tree_rollout",
]
