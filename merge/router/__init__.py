"""The other way to combine safety experts: a concept router trained on CoProV2 that applies, per prompt, only the
experts it needs (``python -m merge.router``), beside the merges of ``merge/``.

It lives in ``merge/`` because it answers the same question as a merge (N experts, one model to render with) and
reads the same experts; it shares no code with the weight-space methods, so it is a subpackage of its own.
"""

from merge.router.config import RouterConfig
from merge.router.model import ConceptRouter, Route
from merge.router.routed import RoutedOutput, RoutedPipeline
from merge.router.train import train_router

__all__ = ["ConceptRouter", "Route", "RoutedOutput", "RoutedPipeline", "RouterConfig", "train_router"]
