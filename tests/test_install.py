"""What an install of testbed must contain, checked on whichever install the tests run against.

CI (.ci/run) installs the built wheel, not the working tree, and sets TESTBED_EXPECT_INSTALLED=1:
then testbed and the standard plugins must come from site-packages, or the suite would be testing
the repository instead of what users get. In a developer's editable install the same checks run on
the working tree."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import testbed
import testbed_std
from testbed.model import kernel as kernels
from testbed.model.kernel import feature_map, softmax_attention
from testbed.native import checksum, optimizer, sampling
from testbed.paper.reproduce import SUITE

EXPECT_INSTALLED = os.environ.get("TESTBED_EXPECT_INSTALLED") == "1"
PACKAGE = Path(testbed.__file__).resolve().parent
REPOSITORY = Path(__file__).resolve().parent.parent


def _installed(module) -> bool:
    return "site-packages" in Path(module.__file__).resolve().parts


def test_testbed_and_its_standard_plugins_come_from_one_install():
    assert _installed(testbed) == _installed(testbed_std)
    if EXPECT_INSTALLED:
        assert _installed(testbed), f"testbed imported from {testbed.__file__}, not from the installed wheel"


def test_the_package_holds_the_kernel_source_and_the_report():
    # every C++ source a library is compiled from: without one its callers fall back to torch, slowly
    sources = [kernels.SOURCE, sampling.SOURCE, softmax_attention.SOURCE, feature_map.SOURCE, checksum.SOURCE,
               optimizer.SOURCE]
    assert all(source.is_file() and source.is_relative_to(PACKAGE) for source in sources), sources
    # and no source of the repository is left out of that list (nor, then, of the package)
    repository_sources = {p.relative_to(REPOSITORY / "testbed") for p in (REPOSITORY / "testbed").rglob("*.cpp")}
    assert repository_sources <= {source.relative_to(PACKAGE) for source in sources}
    import testbed.report

    assert Path(testbed.report.__file__).resolve().parent == PACKAGE / "report"


def test_the_paper_suite_ships_inside_the_package():
    # A wheel user has no repository: `testbed reproduce` must find its suite in the package.
    assert SUITE.resolve().is_relative_to(PACKAGE)
    shipped = {p.name for p in SUITE.glob("*.yaml")}
    assert {"setting1.yaml", "setting2.yaml", "setting3.yaml", "larger_model.yaml"} <= shipped
    examples = REPOSITORY / "examples" / "paper"
    if examples.exists() and not _installed(testbed):
        # Run from a checkout (editable), examples/paper is the user-facing view of the same single copy;
        # an install from the directory (README's test command) has its own copy in site-packages.
        assert examples.resolve() == SUITE.resolve()


def test_the_entry_points_name_the_standard_plugins_and_the_built_in_executors():
    points = metadata.entry_points(group="testbed")
    ours = {p.name: p.value for p in points if p.dist is not None and p.dist.name == "testbed"}
    assert ours == {"optimizers": "testbed_std.optimizers", "tasks": "testbed_std.tasks",
                    "diagnostics": "testbed_std.diagnostics",
                    "executors": "testbed.experiment.executors.builtin"}


def test_the_command_starts_outside_the_repository(tmp_path):
    command = Path(sys.executable).with_name("testbed")
    assert command.exists(), f"no testbed console script beside {sys.executable}"
    started = subprocess.run([str(command), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert started.returncode == 0, started.stderr
    assert "reproduce" in started.stdout
