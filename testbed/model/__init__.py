"""The model layer: the paper's linear Transformer, one class per attention variant, and ``kernel/``
(the compiled C++ kernel, the hand-written gradient and the Hessian-vector glue). Knows nothing of
training, plugins or files."""
