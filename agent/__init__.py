"""Brinell agent daemon."""
