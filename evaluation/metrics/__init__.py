"""The field's metrics, each a small module with a pure scoring function: ``ip`` (+ ``q16``, ``nudenet``),
``clipscore``, ``fid``. Models are loaded by the classes next to those functions, never by the functions."""
