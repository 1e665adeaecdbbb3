"""The paper's vocabulary (Ahn et al., ICLR 2024): its claims checked on results, what it adds to
the generic report (``report``), the reproduction suite and its driver, and the benchmark cases. The only place in the core that names standard
plugins (``sgd``, ``adam``, ``gradient_noise``, ...)."""
