"""Internals shared by the native audio extension and its numpy twin.

Kept outside ``agentic_fast.audio`` so the extension can import them without running the
public package's implementation selector (which imports the extension).
"""
