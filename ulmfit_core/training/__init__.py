"""Training: the AWD-LSTM language model and the staged classifier, with fastai's Learner.

    learners    train_language_model, train_classifier (and the learners they build)
    schedule    the stages of a training, fitted one after another, resumable after any epoch
    resume      where a training stands (its schedule, the point reached) and its checkpoint
    loaders     the batches of both, as training builds them for a seed
    callbacks   progress and the loss check, the epoch's end (history, checkpoint), bf16 on CPU
    device      cores, device, precision, GPU memory, an out-of-memory error as one line
    lmdata      the language model's stream of batches, on the device
    parallel    data-parallel ranks of one training (torch.distributed)

These functions take documents and settings and return metrics; they write only the model
files they are told to write. Devices: CUDA (with mixed precision) when available, else CPU
with every core this process may use.
"""

from .callbacks import LOSS_CHECK_EVERY, CPUBFloat16, Progress
from .device import precision, use_all_cores
from .learners import classifier_learner, lm_learner, train_classifier, train_language_model
from .loaders import FEW_LABEL_STEPS, classifier_data, classifier_dataloaders, few_label_settings, lm_data, lm_dataloaders
from .resume import Checkpoint, ResumePoint, Schedule
from .schedule import fit_schedule

__all__ = ["CPUBFloat16", "Checkpoint", "FEW_LABEL_STEPS", "LOSS_CHECK_EVERY", "Progress", "ResumePoint", "Schedule",
           "classifier_data", "classifier_dataloaders", "classifier_learner", "few_label_settings",
           "fit_schedule", "lm_data", "lm_dataloaders", "lm_learner", "precision", "train_classifier",
           "train_language_model", "use_all_cores"]
