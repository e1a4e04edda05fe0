"""Watching the served model: input and score drift against its training reference, feedback."""
