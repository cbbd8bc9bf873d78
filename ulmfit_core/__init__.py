"""ULMFiT as a library: ingest, tokenize, vocab, language model, classifier, report.

Plain Python on torch, fastai, spaCy and pyarrow; no orchestrator. `ulmfit_core.stages` holds
one function per pipeline stage, each reading and writing a run directory.
"""

__version__ = "0.1.0"
