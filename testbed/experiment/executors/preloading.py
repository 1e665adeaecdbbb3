"""Imported first by the worker server (multiprocessing's forkserver), before the engine and the
plugins: no collection runs while it imports them. Each one would walk the growing heap of torch's
objects, all of which live as long as the server (0.5 s in all, on the way to the first run);
``preloaded``, imported last, takes them out of the collector's sight and turns it back on."""

import gc

gc.disable()
