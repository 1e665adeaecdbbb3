"""Print what scoring costs under each profile of a benchmark suite: core-seconds per workload for
one candidate, and the wall time of the whole leaderboard (every baseline) on a number of cores.

The estimate multiplies the protocol's step counts by each workload's measured seconds per step
(suite.yaml's seconds_per_step), so it is as good as those measurements.
    python scripts/benchmark_cost.py [--version vN] [--cores 2]
"""

from __future__ import annotations

import argparse

from testbed.score.candidates import baselines
from testbed.score.suite import estimated_core_seconds, load_suite


def main() -> None:
    """Parse the arguments and print the estimate per profile."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", default=None, help="suite version (default: the latest)")
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args()
    suite = load_suite(args.version)
    count = len(baselines(suite.version))
    for profile in suite.profiles:
        print(f"{profile}: {suite.profile(profile).note}")
        for workload in suite.workloads:
            one = estimated_core_seconds(suite.select([workload.name]), profile, 1)
            print(f"  {workload.name:18s} {one / 60:7.1f} core-minutes per candidate")
        one = estimated_core_seconds(suite, profile, 1)
        everything = estimated_core_seconds(suite, profile, count)
        print(f"  one candidate: {one / 60 / args.cores:.1f} min on {args.cores} cores; "
              f"{count} baselines: {everything / 3600 / args.cores:.2f} h on {args.cores} cores")


if __name__ == "__main__":
    main()
