"""ULMFiT as a library: ingest, tokenize, vocab, language model, classifier, report.

Plain Python on torch, fastai, spaCy and pyarrow; no orchestrator. By concern, from the ground
up: `config`, `errors`, `progress` and `rendezvous`; `run` (the job spec, the run directory and where it
lives); `text` (corpus to ids); `model` (networks, weights, prediction); `training`;
`reporting`; and on top `stages`, one function per pipeline stage, each reading and writing a
run directory.
"""

__version__ = "0.1.0"
