"""agentic_fast: a performance-first server that puts an AI voice agent on the phone."""

__version__ = "0.1.0"
