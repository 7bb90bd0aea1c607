"""Pure energy functions and their parameter definitions (no files, flags or mesh axes)."""
