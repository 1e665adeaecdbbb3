"""Imported last by the worker server (multiprocessing's forkserver), once the engine and the plugins
are: it takes what their imports made out of the garbage collector's sight (``gc.freeze``), as
Python's docs advise before fork(). The workers' collections then skip those objects (and their
memory pages stay shared), and so do the server's last collections at exit, which otherwise walk
them for about a second while whoever reads the command's output waits for the server to end."""

import gc

gc.collect()
gc.freeze()
