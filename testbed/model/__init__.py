"""The model layer: the paper's linear Transformer (``transformer``), its configuration and schema
(``config``), one class per attention variant (``attention``), and ``kernel/`` (the hand-written
gradient, the compiled C++ kernel and its exact Hessian-vector products). Knows nothing of
training, plugins or files."""
