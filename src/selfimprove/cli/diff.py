"""``selfimprove diff``: behavior-change detection between two models (see selfimprove.diff)."""
