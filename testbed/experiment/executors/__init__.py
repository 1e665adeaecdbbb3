"""Executors: where the runs of an experiment execute."""
