"""Small test plugins shared by several test files."""

from testbed import hookimpl


class StepLosses:
    """A plugin recording each run's training-loss sequence from on_step_end."""

    def __init__(self) -> None:
        self.losses: dict[str, list[float]] = {}

    @hookimpl
    def on_step_end(self, run, step, metrics):
        self.losses.setdefault(f"{run.label}/seed-{run.seed}", []).append(metrics["loss"])
