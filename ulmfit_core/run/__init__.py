"""What a run is and where it lives: its job spec, its directory on disk or on object storage,
who holds it and how it ended, and what made each of its files.

    job         the job specs (`Job`, `ScoreJob`): a run's options as one typed object
    layout      the run directory's layout (`RunDir`, `ModelDir`) and its atomic writes
    status      the lock, run.json (running, complete, failed, stopped), the shaping settings
    manifests   a manifest beside each stage's outputs: reuse only what is unchanged
    lineage     every artifact with its SHA-256, settings and inputs (lineage.json)
    storage     local paths and s3:// objects, through pyarrow's filesystems
    store       a run on object storage: each task's local copy, written back manifests last
    lease       the lease that holds a run on object storage
"""
