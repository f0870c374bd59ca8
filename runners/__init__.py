"""Runners: sweeps, evaluation and reports."""
