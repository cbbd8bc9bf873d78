"""Prefect flows that tell the pipeline's story; the Dask task runner is chosen here."""
