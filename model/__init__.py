"""Intarsia model package."""
