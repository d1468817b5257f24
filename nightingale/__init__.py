"""Nightingale."""
