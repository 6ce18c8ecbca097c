"""Stage ``images``: both prompts of every pair rendered with the same seed."""
