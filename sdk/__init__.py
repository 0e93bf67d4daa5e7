"""Crucible: ML-security experiments."""
