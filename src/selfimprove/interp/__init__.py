"""Interpretability analyses (see hooks.py for the interventions)."""
