"""The documentation kept in step with the code: every public name of the plugin API is in the plugin
author's guide, every hook's signature is quoted there exactly, every relative link in README.md and
docs/*.md leads to a file of the repository, and nothing names the paper notes the project no longer
carries (docs/paper.md replaces them).

The pages are read from the repository (this file's parent's parent), not from the installed package,
which does not ship docs/: CI runs these tests against the installed wheel from the repository root.
"""

from __future__ import annotations

import doctest
import importlib
import inspect
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import testbed
from testbed import hookspecs

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "plugins.md"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Built here so that this file does not name it itself.
RETIRED = "PAPER" + ".md"
# Directories that are not the project's own text: VCS data, environments, caches, build and run outputs.
SKIPPED_DIRS = {"build", "dist", "runs", "results", "reproduction", "__pycache__", "node_modules"}
FENCED_CODE = re.compile(r"^```.*?^```", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
INLINE_LINK = re.compile(r"\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s*\[[^\]\n]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.M)
CODE_BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
# The first line of a complete example file in the guide: "# my_optimizers.py".
EXAMPLE_FILE = re.compile(r"\A# ([\w-]+\.(?:py|yaml))\n")


def guide_text() -> str:
    return GUIDE.read_text(encoding="utf-8")


def code_of(markdown: str) -> str:
    """The code of ``markdown``: its fenced blocks and inline code spans, where an API name is written."""
    return "\n".join(FENCED_CODE.findall(markdown) + INLINE_CODE.findall(FENCED_CODE.sub("", markdown)))


def named_in_code(name: str, markdown: str) -> bool:
    """Whether ``markdown`` writes ``name`` as code (alone, or as ``testbed.name``, ``name(...)``...)."""
    return re.search(rf"(?<!\w){re.escape(name)}(?!\w)", code_of(markdown)) is not None


def hook_signature(spec) -> str:
    """``name(param: Type, ...) -> Return`` of a hookspec, with its string annotations unquoted
    (hookspecs.py postpones annotations, so inspect sees each one as the text written there)."""
    signature = inspect.signature(spec)

    def text(annotation) -> str:
        return annotation.strip("\"'") if isinstance(annotation, str) else inspect.formatannotation(annotation)

    parameters = ", ".join(f"{p.name}: {text(p.annotation)}" for p in signature.parameters.values())
    return f"{spec.__name__}({parameters}) -> {text(signature.return_annotation)}"


def hookspec_functions() -> list:
    """Every hook testbed declares (functions marked by pluggy's HookspecMarker for "testbed")."""
    return [f for _, f in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(f, "testbed_spec")]


def example_files(markdown: str) -> dict[str, str]:
    """The complete example files of ``markdown``: code blocks whose first line names the file."""
    files = {}
    for _, code in CODE_BLOCK.findall(markdown):
        match = EXAMPLE_FILE.match(code)
        if match:
            files[match.group(1)] = code
    return files


def relative_links(markdown: str) -> list[str]:
    """Link targets of ``markdown`` outside code that point into the repository (not a URL, not
    an anchor of the page itself), without their #anchor."""
    prose = INLINE_CODE.sub("", FENCED_CODE.sub("", markdown))
    targets = INLINE_LINK.findall(prose) + REFERENCE_LINK.findall(prose)
    local = [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t, re.I) and not t.startswith("#")]
    return [t.split("#", 1)[0] for t in local]


def project_files(root: Path):
    """Every file of the project's own: hidden directories (.git, virtual environments, caches),
    build and run outputs and egg-info left out."""
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = [d for d in subdirs if not (d.startswith(".") and d not in (".ci", ".github"))
                      and d not in SKIPPED_DIRS and not d.endswith(".egg-info")]
        for name in files:
            yield Path(directory) / name


def test_the_guide_and_the_paper_page_exist_and_readme_links_them():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert GUIDE.is_file() and (ROOT / "docs" / "paper.md").is_file()
    links = relative_links(readme)
    assert "docs/plugins.md" in links and "docs/paper.md" in links


@pytest.mark.parametrize("name", sorted(testbed.__all__))
def test_every_public_name_is_in_the_guide(name):
    assert named_in_code(name, guide_text()), f"testbed.{name} is exported but docs/plugins.md never names it as code"


def test_a_name_written_only_in_prose_is_not_documented():
    markdown = "A Text record, `testbed.Scalar(tag, value)`, `Plotted`.\n```python\nx = Histogram('h', v)\n```\n"
    assert [n for n in ("Text", "Scalar", "Plot", "Histogram") if named_in_code(n, markdown)] == ["Scalar", "Histogram"]


def test_every_public_name_of_testbed_testing_is_in_the_guide():
    testing = importlib.import_module("testbed.testing")
    guide = guide_text()
    missing = [name for name in testing.__all__ if not named_in_code(name, guide)]
    assert not missing, f"testbed.testing exports {missing}, which docs/plugins.md never names as code"


def test_the_hooks_are_found():
    names = {f.__name__ for f in hookspec_functions()}
    assert {"register_optimizers", "on_step_end", "on_run_end"} <= names


@pytest.mark.parametrize("spec", hookspec_functions(), ids=lambda f: f.__name__)
def test_every_hook_signature_is_quoted_exactly(spec):
    signature = hook_signature(spec)
    assert signature in guide_text(), f"docs/plugins.md does not quote the hook's signature {signature!r}"


def test_hook_signature_is_generated_from_the_code():
    assert hook_signature(hookspecs.on_step_end) == (
        "on_step_end(run: RunContext, step: int, metrics: dict[str, Any]) -> None")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves_to_a_file_of_the_repository(page):
    broken = []
    for target in relative_links(page.read_text(encoding="utf-8")):
        path = (page.parent / target).resolve()
        if not target or not path.exists() or not path.is_relative_to(ROOT):
            broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)} links to what the repository does not hold: {broken}"


def test_relative_links_skip_urls_anchors_and_code():
    markdown = ("[a](docs/x.md#part) [b](https://example.org) [c](#here) `[d](e.md)`\n"
                "```\n[f](g.md)\n```\n[h]: ../h.md\n")
    assert relative_links(markdown) == ["docs/x.md", "../h.md"]


def test_nothing_in_the_repository_names_the_retired_paper_notes():
    naming = []
    for path in project_files(ROOT):
        try:
            if RETIRED.encode() in path.read_bytes():
                naming.append(path.relative_to(ROOT).as_posix())
        except OSError:  # a socket or a file gone meanwhile
            continue
    assert not naming, f"these name {RETIRED}, which the repository does not carry (use docs/paper.md): {naming}"


def test_the_guides_doctests_pass():
    blocks = [code for _, code in CODE_BLOCK.findall(guide_text()) if ">>>" in code]
    assert blocks, "the guide's doctests are gone"
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    for index, code in enumerate(blocks):
        runner.run(doctest.DocTestParser().get_doctest(code, {}, f"docs/plugins.md block {index}", None, 0))
    assert runner.summarize(verbose=False).failed == 0


def doc_command(prefix: str) -> tuple[dict[str, str], list[str]]:
    """The guide's shell command that starts with ``prefix``: its environment assignments and the
    arguments after ``testbed``."""
    lines = [code.strip() for kind, code in CODE_BLOCK.findall(guide_text()) if kind == "bash"]
    line = next(line for line in lines if line.startswith(prefix))
    words = shlex.split(line)
    assignments = [w for w in words if re.match(r"^[A-Z_]+=", w)]
    assert words[len(assignments)] == "testbed", line
    return dict(w.split("=", 1) for w in assignments), words[len(assignments) + 1:]


def run_doc_command(directory: Path, prefix: str, *extra: str) -> subprocess.CompletedProcess:
    """Run the guide's command starting with ``prefix`` in ``directory``, as the installed testbed."""
    env, args = doc_command(prefix)
    return subprocess.run([sys.executable, "-m", "testbed.cli", *args, *extra], cwd=directory,
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=300)


def test_the_complete_example_runs_as_the_guide_says(tmp_path):
    files = example_files(guide_text())
    assert {"my_optimizers.py", "my_tasks.py", "my_diagnostics.py", "my_hooks.py", "compare.yaml"} <= set(files)
    for name, code in files.items():
        (tmp_path / name).write_text(code)
    done = run_doc_command(tmp_path, "PYTHONPATH=. TESTBED_PLUGINS=my_optimizers", "--logdir", "runs", "--workers", "1",
                           "--set", "train.steps=20", "--set", "train.batch_size=64", "--set", "eval.every=10",
                           "--set", "eval.batch_size=128", "--set", "train.seeds=1")
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads((tmp_path / "runs" / "compare" / "results.json").read_text())
    runs = {run["label"]: run for run in results["runs"]}
    assert sorted(runs) == ["adam", "sam", "sgd", "signum"]
    assert all(run["status"] == "completed" and not run["diagnostic_errors"] for run in runs.values())
    assert runs["sam"]["gradient_evaluations"] == 2 * runs["adam"]["gradient_evaluations"] == 40
    assert all(len(run["diagnostics"]["gradient_alignment/cosine"]) == 2 for run in runs.values())  # after steps 0 and 10
    assert "sam seed 0: completed" in done.stdout  # on_run_end of my_hooks.py


def test_the_example_plugins_tests_pass_with_testbed_testing(tmp_path):
    files = example_files(guide_text())
    assert {"test_my_plugins.py", "test_fixtures.py"} <= set(files)
    for name, code in files.items():
        (tmp_path / name).write_text(code)
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_my_plugins.py",
                           "test_fixtures.py"], cwd=tmp_path, env={**os.environ, "PYTHONPATH": "."},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "6 passed" in done.stdout, done.stdout + done.stderr


def test_the_command_example_adds_a_command(tmp_path):
    (tmp_path / "my_commands.py").write_text(example_files(guide_text())["my_commands.py"])
    env = {**os.environ, "PYTHONPATH": ".", "TESTBED_PLUGINS": "my_commands"}
    done = subprocess.run([sys.executable, "-m", "testbed.cli", "hello", "world"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout) == (0, "hello, world\n"), done.stderr


def test_example_files_are_code_blocks_that_name_their_file():
    markdown = "```python\n# a.py\nx = 1\n```\n```python\nnot = 'a file'\n```\n```yaml\n# b.yaml\nk: v\n```\n"
    assert example_files(markdown) == {"a.py": "# a.py\nx = 1\n", "b.yaml": "# b.yaml\nk: v\n"}
