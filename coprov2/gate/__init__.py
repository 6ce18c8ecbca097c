"""Stage ``gate``: CLIP scores for every pair, then a keep/reject decision with reasons."""
