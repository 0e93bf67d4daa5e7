"""Crucible agent daemon."""
