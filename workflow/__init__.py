"""The paper's workflow as one resumable command: a CoProV2 dataset -> one safety expert per category ->
their merge -> evaluation on the test prompts (and I2P) -> model cards with their model-index -> an optional
private push. ``python -m workflow RECIPE.yaml``; from Python, ``run_workflow(load_recipe(path))``."""

from workflow.config import WorkflowConfig, load_recipe
from workflow.run import run_workflow

__all__ = ["WorkflowConfig", "load_recipe", "run_workflow"]
