"""The pipeline's stages as functions of a run directory: `ingesting` and `preprocessing` (ingest
to id shards, what `tasks/preprocess.py` runs), `modelling` (language model, encoder,
classifier) and `evaluating` (test scores, ensemble, baseline), what `tasks/train.py` runs, with
`labelcurve` (a classifier per number of labelled reviews); and `scoring` (a dataset scored by a
trained classifier, what `tasks/score.py` runs). The report reads what they wrote
(`reporting`): no module of the core sits above them.

Each stage reads what earlier stages wrote under the run directory, writes its own outputs there
(atomically), and returns a small JSON-able summary; every stage is reused when its inputs and
settings are unchanged (`manifests.made_once`). The Prefect tasks call these and nothing else.
Modules that load torch, fastai or spaCy are imported inside the stages that use them: the
orchestrating process runs ingest and the Dask scheduler and should not carry a model stack.
"""

from ..text.data import training_docs
from .evaluating import baseline_stage, ensemble_stage, evaluate_stage
from .ingesting import finish_ingest, ingest_file_stage, ingest_plan, ingest_stage
from .modelling import (check_classifier_data, check_inputs, classifier_stage, copy_text_assets, export_stage,
                        lm_stage, samples_stage)
from .preprocessing import (id_files, numericalize_stage, preprocess_in_process, summarize_preprocess,
                            token_files, tokenize_stage, tokenizer_stage, vocab_stage)

__all__ = ["baseline_stage", "check_classifier_data", "check_inputs", "classifier_stage", "copy_text_assets",
           "ensemble_stage", "evaluate_stage", "export_stage", "finish_ingest", "ingest_file_stage",
           "id_files", "ingest_plan", "ingest_stage", "lm_stage", "token_files",
           "numericalize_stage", "preprocess_in_process", "samples_stage", "summarize_preprocess", "tokenize_stage",
           "tokenizer_stage", "training_docs", "vocab_stage"]
