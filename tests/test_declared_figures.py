"""Figures come from what diagnostics declare (testbed.Plot): a toy diagnostic plugin's figures appear
in `testbed report`, its TensorBoard charts in each run's custom-scalar layout; the HParams table has
one optimizer column and booleans as booleans."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

from helpers import load_events, read_results, run
from testbed import Plot, PluginError, hookimpl
from testbed.cli.commands import main
from testbed.plugins import load_plugins
from testbed.report import make_report

TOY = '''
import torch

from testbed import Diagnostic, Histogram, Plot, Scalar, Schedule, hookimpl


class Wave(Diagnostic):
    """Made-up quantities of very different scales, and a histogram."""

    def measure(self, probe, step):
        return [Scalar("amplitude", 100.0 + step), Scalar("phase", 0.01 * (step + 1)),
                Histogram("spread", torch.arange(20.0) * (step + 1))]


@hookimpl
def register_diagnostics(register):
    register("toy_wave", Wave, schedule=Schedule(every=5), doc="a toy wave",
             plots=[Plot("amplitude", "toy amplitude", log=True, caption="Toy amplitude, declared by the toy plugin"),
                    Plot("phase", "toy phase", caption="Toy phase, declared by the toy plugin"),
                    Plot("spread", "toy spread", kind="histogram", caption="Toy spread, declared by the toy plugin")])
'''
CAPTIONS = {"amplitude": "Toy amplitude, declared by the toy plugin", "phase": "Toy phase, declared by the toy plugin",
            "spread": "Toy spread, declared by the toy plugin"}


@pytest.fixture
def toy_experiment(plugin_module, tiny_raw, tmp_path):
    """A tiny experiment (sgd with a boolean option, adam; 2 seeds) measuring the toy diagnostic,
    whose plugin is loaded through $TESTBED_PLUGINS."""
    plugin_module("toy_wave_plugin", TOY)
    tiny_raw["optimizers"][0]["options"]["nesterov"] = True
    tiny_raw["diagnostics"] = [{"name": "toy_wave"}]
    outcome = run(tiny_raw, tmp_path / "runs")
    assert {r["status"] for r in read_results(outcome)["runs"]} == {"completed"}
    return outcome


def test_the_toy_diagnostics_declared_figures_are_in_testbed_report(toy_experiment, tmp_path):
    result = CliRunner().invoke(main, ["report", str(tmp_path / "runs"), "--out", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    out = tmp_path / "report"
    markdown, page = (out / "report.md").read_text(), (out / "index.html").read_text()
    for tag, caption in CAPTIONS.items():
        figure = out / "figures" / f"tiny-toy_wave-{tag}.png"
        assert figure.stat().st_size > 5000
        assert f"![{caption}](figures/{figure.name})" in markdown and f"*{caption}*" in markdown
        assert f"<img src='figures/{figure.name}' alt='{caption}'><figcaption>{caption}</figcaption>" in page
    assert "No figures for" not in markdown


def test_make_report_draws_what_the_registry_passed_in_declares(toy_experiment, tmp_path, monkeypatch):
    monkeypatch.delenv("TESTBED_PLUGINS")  # only the registry handed in declares the toy's plots
    declared = [Plot("phase", "phase again", caption="Only this one")]

    class Redeclared:
        @hookimpl
        def register_diagnostics(self, register):
            register("toy_wave", lambda **o: None, plots=declared)

    registry = load_plugins(extra={"redeclared": Redeclared()}, entry_points=False).registry
    out, claims = make_report([tmp_path / "runs"], tmp_path / "report", registry=registry)
    assert claims == [] and "Claims" not in (out / "report.md").read_text()  # the generic report checks none
    assert sorted(p.name for p in (out / "figures").iterdir()) == ["tiny-loss.png", "tiny-toy_wave-phase.png"]
    assert "*Only this one*" in (out / "report.md").read_text()


def test_a_diagnostic_whose_plugin_is_gone_gets_no_figure_and_a_note(toy_experiment, tmp_path, monkeypatch):
    monkeypatch.delenv("TESTBED_PLUGINS")  # the toy plugin is not installed any more
    result = CliRunner().invoke(main, ["report", str(tmp_path / "runs"), "--out", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    note = ("No figures for toy_wave: no installed plugin registers this diagnostic, so its declared plots "
            "are unknown.")
    assert f"tiny: {note}" in result.output
    assert note in (tmp_path / "report" / "report.md").read_text()
    assert [p.name for p in (tmp_path / "report" / "figures").iterdir()] == ["tiny-loss.png"]


def test_each_declared_quantity_has_its_own_tensorboard_chart(toy_experiment):
    for record in read_results(toy_experiment)["runs"]:
        events = load_events(record["run_dir"])
        (layout_event,) = events.Tensors("custom_scalars__config__")
        layout = layout_pb2.Layout.FromString(layout_event.tensor_proto.string_val[0])
        charts = {category.title: {chart.title: list(chart.multiline.tag) for chart in category.chart}
                  for category in layout.category}
        assert charts["Loss"] == {"eval loss (fixed batch)": ["eval/loss"], "train loss (minibatch)": ["train/loss"]}
        assert set(charts["Optimizer"]) == {"gradient norm before clipping", "learning rate"}
        # One chart per declared scalar (amplitude ~100, phase ~0.1: never on one axis); a histogram has none.
        assert charts["diag/toy_wave"] == {"toy amplitude": [r"^diag/toy_wave/amplitude$"],
                                           "toy phase": [r"^diag/toy_wave/phase$"]}
        assert set(charts) == {"Loss", "Optimizer", "diag/toy_wave"}
        # Only the layout is declared: the scalars are logged under their usual tags.
        assert {"diag/toy_wave/amplitude", "diag/toy_wave/phase"} <= set(events.Tags()["scalars"])


def test_hparams_have_one_optimizer_column_and_booleans_as_booleans(toy_experiment):
    for record in read_results(toy_experiment)["runs"]:
        hparams = load_events(record["run_dir"]).PluginTagToContent("hparams")
        start = plugin_data_pb2.HParamsPluginData.FromString(hparams["_hparams_/session_start_info"])
        values = start.session_start_info.hparams
        assert values["optimizer"].string_value == record["label"] and "optimizer_name" not in values
        if record["label"] == "sgd":
            assert values["options.nesterov"].WhichOneof("kind") == "bool_value"
            assert values["options.nesterov"].bool_value is True
        else:
            assert values["options.amsgrad"].WhichOneof("kind") == "bool_value"
            assert values["options.amsgrad"].bool_value is False
    top = load_events(toy_experiment.directory).PluginTagToContent("hparams")["_hparams_/experiment"]
    columns = {info.name: info.type for info in
               plugin_data_pb2.HParamsPluginData.FromString(top).experiment.hparam_infos}
    assert columns["options.nesterov"] == columns["options.amsgrad"] == api_pb2.DATA_TYPE_BOOL
    assert columns["optimizer"] == api_pb2.DATA_TYPE_STRING and "optimizer_name" not in columns
    assert columns["lr"] == columns["seed"] == api_pb2.DATA_TYPE_FLOAT64


@pytest.mark.parametrize("plots, message", [
    ("amplitude", "plots must be a list of testbed.Plot, not str"),
    ([{"tag": "amplitude"}], "plots[0] is of type dict, not testbed.Plot"),
    ([Plot("amplitude", "a", kind="pie")], "plots[0] ('amplitude'): kind 'pie' is not one of curve, histogram, scatter"),
    ([Plot("amplitude", "a", kind="scatter")], "a scatter needs the tag of its x axis"),
    ([Plot("amplitude", "")], "tag and title must not be empty"),
])
def test_a_bad_plot_declaration_is_a_plugin_error_naming_the_plugin(plots, message):
    class Bad:
        @hookimpl
        def register_diagnostics(self, register):
            register("bad_wave", lambda **o: None, plots=plots)

    with pytest.raises(PluginError) as caught:
        load_plugins(extra={"bad": Bad()}, entry_points=False)
    assert "plugin 'bad' registering diagnostic 'bad_wave'" in str(caught.value) and message in str(caught.value)


def test_the_standard_diagnostics_declare_the_papers_figures(registry):
    plots = {entry.name: [(p.tag, p.kind, p.log) for p in entry.metadata["plots"]]
             for entry in registry.list("diagnostic")}
    assert plots["gradient_noise"] == [("errors", "histogram", False)]
    assert plots["robust_condition_number"] == [("proxy", "curve", True)]
    assert plots["directional_smoothness"] == [("value", "curve", False)]
    assert plots["sharpness"] == [("lambda_max", "curve", True)]
    assert plots["generalized_smoothness"] == [("directional_smoothness", "scatter", True)]
    assert plots["block_norms"] == []  # per-block tags: TensorBoard gets one chart of all its scalars
