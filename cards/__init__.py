"""Dataset and model cards, written with huggingface_hub's card APIs and pushed with every artifact."""
