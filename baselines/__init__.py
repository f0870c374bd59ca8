"""Baseline token reducers, one file per method; each registers itself with ``sttm.api.register``."""
