"""Intarsia training package."""
