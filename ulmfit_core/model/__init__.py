"""The models and what is done with them outside training: the AWD-LSTM networks, their weight
files (loaded without pickled code), pretrained weights, prediction and generation, the NB-LR
baseline and the scores.

    networks    the language model and the classifier (fastai's AWD-LSTM), built from settings
    weights     model files and checkpoints: plain tensors, SHA-256 checked
    pretrained  WikiText-103 or fastai-format weights, matched to a run's vocab
    predict     a trained classifier or language model loaded from its folder: predict, generate
    baseline    the NB-weighted logistic regression on the same reviews
    metrics     accuracy, macro-F1, the confusion matrix
"""
