"""The worker server (multiprocessing's forkserver) imports with the garbage collector off and leaves
at once at its exit, without tearing down torch's modules (executors/preloading.py, preloaded.py);
its workers collect as usual; any other process importing those modules exits as usual. The console
command imports the CLI with the collector off, and turns it back on."""

from __future__ import annotations

import subprocess
import sys

# A forkserver preloading the module; its worker runs the exit handlers the server registered, then
# tries to exit with code 5: the server's own handler ends the worker first, with code 0.
SERVER_PROBE = """
import atexit, multiprocessing as mp, sys

def work():
    atexit._run_exitfuncs()
    sys.exit(5)

if __name__ == "__main__":
    context = mp.get_context("forkserver")
    context.set_forkserver_preload(["testbed.experiment.executors.preloaded"])
    process = context.Process(target=work)
    process.start()
    process.join()
    print("worker exit code:", process.exitcode)
"""


def last_line_of_probe(tmp_path, source: str) -> str:
    """The last line a probe script (a forkserver needs a file to import its main from) prints; it must
    succeed."""
    script = tmp_path / "probe.py"
    script.write_text(source)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()[-1]


def test_the_worker_server_leaves_at_once_at_exit(tmp_path):
    assert last_line_of_probe(tmp_path, SERVER_PROBE) == "worker exit code: 0"


def test_another_process_importing_the_preloads_keeps_its_exit_code():
    code = "import testbed.experiment.executors.preloaded\nprint('imported', flush=True)\nraise SystemExit(3)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert (out.returncode, out.stdout) == (3, "imported\n")


GC_PROBE = """
import gc, multiprocessing as mp

def report(queue):
    queue.put((gc.isenabled(), gc.get_freeze_count() > 0))

if __name__ == "__main__":
    context = mp.get_context("forkserver")
    context.set_forkserver_preload(["testbed.experiment.executors.preloading", "json",
                                    "testbed.experiment.executors.preloaded"])
    queue = context.SimpleQueue()
    process = context.Process(target=report, args=(queue,))
    process.start()
    print("worker collector enabled, heap frozen:", queue.get())
    process.join()
"""


def test_workers_forked_from_the_server_collect_as_usual(tmp_path):
    assert last_line_of_probe(tmp_path, GC_PROBE) == "worker collector enabled, heap frozen: (True, True)"


def test_the_console_command_runs_with_the_collector_on():
    code = ("import gc, sys\nfrom testbed.cli.console import main\n"
            "sys.argv = ['testbed', 'plugins']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print('collector enabled:', gc.isenabled(), 'heap frozen:', gc.get_freeze_count() > 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == "collector enabled: True heap frozen: True"
