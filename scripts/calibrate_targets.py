"""Print each workload's target calibrated from a baseline results file (testbed/score/calibration.py
says the rule): how suite v2's targets were set from suite v1's shipped full-profile results.

    python scripts/calibrate_targets.py testbed/score/benchmark/v1/baselines-full.json
"""

from __future__ import annotations

import argparse

from testbed.score.calibration import DEFAULT_FRACTION, calibrate
from testbed.score.leaderboard import read_baselines
from testbed.score.suite import load_suite


def main() -> None:
    """Read the results, calibrate, print one line per workload."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", help="a baselines-<profile>.json")
    parser.add_argument("--fraction", type=float, default=DEFAULT_FRACTION,
                        help="of the budget's steps, by which the best baseline's loss counts")
    args = parser.parse_args()
    results = read_baselines(args.results)
    suite = load_suite(results.version)
    steps = {w.name: w.budgets[results.profile].steps for w in suite.workloads}
    targets = {w.name: w.target_for(results.profile) for w in suite.workloads}
    print(f"suite {results.version}, {results.profile} profile: best baseline's median lowest eval loss by "
          f"{args.fraction:g} of the budget")
    for c in calibrate(results.records, steps, args.fraction):
        print(f"{c.workload:18s} target {c.target:<8g} ({c.label} reaches {c.loss:.3g} by step {c.by_step}; "
              f"{results.version}'s target: {targets[c.workload]:g})")


if __name__ == "__main__":
    main()
