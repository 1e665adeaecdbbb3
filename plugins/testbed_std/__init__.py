"""The standard testbed plugins: optimizers, tasks and diagnostics, registered through entry points."""
