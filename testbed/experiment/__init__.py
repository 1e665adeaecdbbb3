"""The experiment layer: YAML in, validated configs out; sweeps and learning-rate tuning expanded into
run plans; run identity and the cache of finished runs; the dry run; the runner, which carries out an
experiment or a sweep and writes its results; the stop signals (``signals``); and the executors on
which the runs execute (``executors/``)."""
