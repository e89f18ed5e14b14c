"""Intarsia grammars package."""
