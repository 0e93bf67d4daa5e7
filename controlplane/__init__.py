"""Brinell control plane."""
