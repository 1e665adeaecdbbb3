"""The experiment layer: YAML in, validated configs out; sweeps and learning-rate tuning expanded into
run plans; run identity and the cache of finished runs; the dry run; and the executors that carry
the runs out (``executors/``)."""
