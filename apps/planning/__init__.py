"""Planning an experiment at real size without a GPU: `uv run apps/plan --config configs/X.yaml`.

The config's model is built by the apps' own builders under FakeTensorMode (no weights, no download), one
training step is measured with MemTracker and FLOP formulas, and the plan says per component what it holds
and computes, per GPU kind whether the configured batch fits, the largest batch that does, and the step and
epoch time at an assumed MFU. `model_flops_per_sample(config)` gives the model FLOPs of one training
sample (for MFU in training logs). Modules: architectures (published dimensions, GPUs), offline (configs
whose backbones build weightless), fake (the fake-tensor modes), int8 (bitsandbytes' layers as they hold
memory), model (build and batch), measure (the step), plan (fit, verification, times), report, cli.
"""

from apps.planning.plan import Plan, make_plan, model_flops_per_sample

__all__ = ["Plan", "make_plan", "model_flops_per_sample"]
