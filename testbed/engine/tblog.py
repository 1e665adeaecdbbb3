"""TensorBoard output of one run, following the project's tag conventions.

Tags are grouped by their first segment (train/, eval/, optim/, perf/, diag/<name>/) and never
depend on the optimizer, so runs overlay; each run has its own directory so TensorBoard's run filter
selects by optimizer and seed. HParams are written into the same directory (not a sub-run, which
``SummaryWriter.add_hparams`` would make). Records are built by torch's summary functions, as
SummaryWriter builds them, and written by ``events.EventFile`` (in bulk, in this thread).
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, TypeVar

import yaml
from torch.utils.tensorboard._utils import figure_to_image
from torch.utils.tensorboard.summary import custom_scalars, histogram, image, text
from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
from tensorboard.plugins.hparams import api_pb2
from tensorboard.plugins.hparams.metadata import (EXPERIMENT_TAG, PLUGIN_DATA_VERSION, PLUGIN_NAME,
                                                  SESSION_END_INFO_TAG, SESSION_START_INFO_TAG)
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData, SessionEndInfo, SessionStartInfo

from testbed.diagnostics import Plot
from testbed.engine.events import EventFile
from testbed.errors import StorageError
from testbed.files.layout import EVENT_FILE_PREFIX

# Metrics shown in the HParams dashboard; their values are read from these scalar tags.
HPARAM_METRICS = ("eval/loss", "eval/best_loss")

_SESSION_STATUS = {
    "completed": api_pb2.STATUS_SUCCESS,
    "diverged": api_pb2.STATUS_FAILURE,
    "failed": api_pb2.STATUS_FAILURE,
    "interrupted": api_pb2.STATUS_UNKNOWN,  # the proto has no "aborted"
}

# The charts of every run; each diagnostic it measures adds its own (see ``custom_scalar_layout``).
CUSTOM_SCALARS = {
    "Loss": {
        "eval loss (fixed batch)": ["Multiline", ["eval/loss"]],
        "train loss (minibatch)": ["Multiline", ["train/loss"]],
    },
    "Optimizer": {
        "gradient norm before clipping": ["Multiline", ["optim/grad_norm"]],
        "learning rate": ["Multiline", ["optim/lr"]],
    },
}


def custom_scalar_layout(plots: Mapping[str, Sequence[Plot]]) -> dict[str, dict[str, list]]:
    """TensorBoard's custom-scalar layout of a run measuring the diagnostics in ``plots`` (name ->
    the plots it declared): the loss and optimizer charts, then a category per diagnostic with a
    chart per scalar its plots draw (quantities of different scales never share one). A diagnostic
    that declares no scalar gets one chart of all its scalars."""
    layout = dict(CUSTOM_SCALARS)
    for name, declared in plots.items():
        charts: dict[str, list] = {}
        for plot in declared:
            for tag in plot.scalars:
                title = plot.title if plot.kind == "curve" else f"{plot.title}: {tag}"
                charts.setdefault(title if title not in charts else f"{title} ({tag})",
                                  ["Multiline", [f"^{re.escape(f'diag/{name}/{tag}')}$"]])
        layout[f"diag/{name}"] = charts or {f"{name}: every scalar": ["Multiline", [f"^{re.escape(f'diag/{name}/')}"]]}
    return layout


def hparam_summaries(values: Mapping[str, Any]) -> tuple[Summary, Summary]:
    """The HParams plugin's experiment summary (one column per key, typed by its value, and the
    metrics) and session-start summary (these values) for ``values`` (numbers, strings, booleans).
    Not torch's ``hparams()``: it writes a boolean as a number (bool is an int), which the dashboard
    showed as 0.0000."""
    start = SessionStartInfo()
    columns = []
    for key, value in values.items():
        if isinstance(value, bool):
            start.hparams[key].bool_value, kind = value, api_pb2.DATA_TYPE_BOOL
        elif isinstance(value, (int, float)):
            start.hparams[key].number_value, kind = value, api_pb2.DATA_TYPE_FLOAT64
        else:
            start.hparams[key].string_value, kind = str(value), api_pb2.DATA_TYPE_STRING
        columns.append(api_pb2.HParamInfo(name=key, type=kind))
    experiment = api_pb2.Experiment(hparam_infos=columns,
                                    metric_infos=[api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag))
                                                  for tag in HPARAM_METRICS])
    return (_hparams_summary(EXPERIMENT_TAG, HParamsPluginData(experiment=experiment, version=PLUGIN_DATA_VERSION)),
            _hparams_summary(SESSION_START_INFO_TAG,
                             HParamsPluginData(session_start_info=start, version=PLUGIN_DATA_VERSION)))


def _hparams_summary(tag: str, content: HParamsPluginData) -> Summary:
    """A summary holding one record of the HParams plugin."""
    metadata = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name=PLUGIN_NAME,
                                                                      content=content.SerializeToString()))
    return Summary(value=[Summary.Value(tag=tag, metadata=metadata)])


def write_hparams_config(directory: Path, columns: Mapping[str, Any]) -> None:
    """The HParams dashboard's columns for every run below ``directory`` (the union of the runs'
    hparams, with a sample value each, and the metrics), in an event file of its own at the top:
    runs of different optimizers or sweep points have different keys, and TensorBoard shows only
    the columns of the one experiment summary it finds. An earlier attempt's file is replaced."""
    try:
        for old in directory.glob(EVENT_FILE_PREFIX + "*"):
            old.unlink()
        experiment, _ = hparam_summaries(columns)
        events = EventFile(directory)
        events.add_summary(experiment)
        events.flush()
    except OSError as exc:
        raise StorageError.writing(directory, exc) from None


_Method = TypeVar("_Method", bound=Callable[..., Any])


def _writing(method: _Method) -> _Method:
    """A RunLogger method whose failed write becomes a StorageError naming the run's event file."""
    @functools.wraps(method)
    def wrapper(self: "RunLogger", *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except OSError as exc:
            raise StorageError.writing(self.event_file(), exc) from None

    return wrapper  # type: ignore[return-value]


class RunLogger:
    """Writes one run's scalars, text and hparams into its event file, following the project's
    conventions. It knows how many bytes each event file of the run should hold (``earlier_files``:
    those of the attempts before a resumed run's checkpoint), so that one deleted or cut short is
    noticed."""

    @_writing
    def __init__(self, run_dir: str, earlier_files: Mapping[str, int] | None = None):
        self.run_dir = Path(run_dir)
        self._event_file = self.run_dir  # until the event file is made
        self.events = EventFile(self.run_dir)
        self._event_file = self.events.path
        self.earlier_files = dict(earlier_files or {})

    def written(self) -> dict[str, int]:
        """Event file name -> the bytes written into it by this run (this logger's after a flush)."""
        return {**self.earlier_files, self.events.path.name: self.events.written}

    def event_file(self) -> Path:
        """The run's event file (its directory while the file is not made yet)."""
        return self._event_file

    def lost_event_files(self) -> list[str]:
        """One line per event file of this run that holds less than was written into it (flush first)."""
        return lost_event_files(self.run_dir, self.written())

    @_writing
    def scalar(self, tag: str, value: float, step: int) -> None:
        """Log one scalar at ``step``."""
        self.events.add_scalar(tag, value, step)

    @_writing
    def histogram(self, tag: str, values: Any, step: int, bins: Any = "tensorflow") -> None:
        """Log a histogram of ``values`` at ``step`` (``bins`` as SummaryWriter.add_histogram takes it:
        "tensorflow" means its default, exponentially spaced buckets)."""
        if isinstance(bins, str) and bins == "tensorflow":
            bins = DEFAULT_BINS
        self.events.add_summary(histogram(tag, values, bins), step)

    @_writing
    def figure(self, tag: str, figure: Any, step: int) -> None:
        """Log a matplotlib figure as an image at ``step``; the figure is closed."""
        self.events.add_summary(image(tag, figure_to_image(figure, close=True), dataformats="CHW"), step)

    @_writing
    def text(self, tag: str, markdown: str, step: int = 0) -> None:
        """Log Markdown text (TensorBoard's text dashboard) at ``step``."""
        self.events.add_summary(text(tag, markdown), step)

    def config(self, resolved: Mapping[str, Any]) -> None:
        """Log the run's resolved config as YAML under the ``config`` text tag."""
        # Indented four spaces: a Markdown code block in TensorBoard's text dashboard.
        body = yaml.safe_dump(dict(resolved), sort_keys=False)
        self.text("config", "\n".join("    " + line for line in body.splitlines()))

    @_writing
    def hparams(self, values: Mapping[str, Any]) -> None:
        """The run's hparams (its session start); the session ends with the real status in
        ``end_session``. The columns are declared once for all runs: ``write_hparams_config``."""
        _, session_start = hparam_summaries(values)
        self.events.add_summary(session_start)

    @_writing
    def end_session(self, status: str) -> None:
        """End the run's HParams session with its real status (completed, diverged, failed or interrupted)."""
        # torch's hparams() always reports success; build the session end with the real status.
        content = HParamsPluginData(session_end_info=SessionEndInfo(status=_SESSION_STATUS[status]),
                                    version=PLUGIN_DATA_VERSION)
        self.events.add_summary(_hparams_summary(SESSION_END_INFO_TAG, content))

    @_writing
    def layout(self, plots: Mapping[str, Sequence[Plot]]) -> None:
        """The run's custom-scalar layout, from the plots its diagnostics declare (``custom_scalar_layout``)."""
        self.events.add_summary(custom_scalars(custom_scalar_layout(plots)))

    @_writing
    def flush(self) -> None:
        """Write everything logged so far into the event file (before its size is taken for a checkpoint)."""
        self.events.flush()

    @_writing
    def close(self) -> None:
        """Write what is pending; the logger takes no more records."""
        self.events.flush()


def _default_bins() -> list[float]:
    """SummaryWriter's default histogram buckets: +-1e-12 growing by 10% to 1e20, and 0."""
    buckets, value = [], 1e-12
    while value < 1e20:
        buckets.append(value)
        value *= 1.1
    return [-b for b in reversed(buckets)] + [0] + buckets


DEFAULT_BINS = _default_bins()


def lost_event_files(run_dir: Path, written: Mapping[str, int]) -> list[str]:
    """One line per event file in ``run_dir`` missing or smaller than the bytes ``written`` into it."""
    problems = []
    for name, size in written.items():
        path = run_dir / name
        if not path.exists():
            problems.append(f"TensorBoard event file {name} was deleted during the run: its curves are lost")
        elif path.stat().st_size < size:
            problems.append(f"TensorBoard event file {name} was deleted or cut short during the run: "
                            "its curves miss points")
    return problems
