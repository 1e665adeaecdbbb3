"""Executors: where the runs of an experiment execute. ``base`` holds what every executor shares: the
``Executor`` protocol a ``register_executors`` factory returns, the lookup by name, and the one loop
(``collect``) that waits for runs, passes their progress on, stops them on a signal and gathers their
results, over a small ``Batch`` interface each executor implements. ``local`` and ``ray`` register
through the hook like any plugin's executor (``builtin``); ``ray_local`` is the loopback-only Ray
instance that ``ray`` starts when given no cluster address, and the clean-up of what a killed one left.

An executor's factory is called as ``factory(workers, address)``: ``workers`` is how many runs may
execute at once (None: the executor decides), ``address`` where to find a cluster (None unless the
executor was registered with ``takes_address=True`` and the user gave one).

Stop signals (Ctrl-C, SIGTERM; testbed.experiment.signals): the first asks the running runs to stop
at their next step, with a checkpoint, and no other run to start; the second stops them at once.
"""
