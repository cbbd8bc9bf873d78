"""Prefect tasks: thin wrappers of `ulmfit_core.stages` with retries where retrying helps."""
