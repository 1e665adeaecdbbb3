"""The benchmark: a versioned suite of workloads, one tuning protocol, paired metrics and verdicts,
performance profiles and the leaderboard (``testbed score``).

The suite's data (workloads, budgets, targets, baselines) is package data under
``benchmark/<version>/``. Like ``paper/``, this layer may name standard plugins: its baselines are
standard optimizers."""
