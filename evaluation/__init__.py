"""Evaluation of safety experts and merges: IP (Q16 or NudeNet), CLIPScore, FID (``python -m evaluation``).

Named ``evaluation``, not ``evaluate``: Hugging Face's ``evaluate`` library owns that import name.
"""

from evaluation.config import EvalConfig
from evaluation.run import evaluate

__all__ = ["EvalConfig", "evaluate"]
