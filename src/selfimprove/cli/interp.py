"""``selfimprove interp``: interpretability analyses (see selfimprove.interp)."""
