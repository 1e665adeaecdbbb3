"""The engine layer: one run from its plan to its result. It builds the run's parts once (task, data
stream, eval batch, model, optimizer, diagnostics), trains on fresh prompts, evaluates, measures,
checkpoints, and logs to TensorBoard; nothing here knows of sweeps, executors or reports."""
