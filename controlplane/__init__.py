"""Crucible control plane."""
