"""The engine layer: one run from its plan to its result. It builds the run's parts once (task, data
stream, eval batch, model, optimizer, diagnostics), trains on fresh prompts, evaluates, measures,
checkpoints, and logs to TensorBoard. Also here: the typed config a run is built from (``specs``),
the bounds a config is checked against (``limits``), the run's named random streams (``seeds``),
the diagnostics' view of the loss landscape (``probe``) and the versions a result records
(``provenance``). Nothing here knows of sweeps, executors or reports."""
