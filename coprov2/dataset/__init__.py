"""Stage ``dataset``: the kept pairs as a Hugging Face dataset folder (parquet + card)."""
