"""Intarsia server package."""
