"""Classification metrics from class probabilities: accuracy, per-class accuracy, the confusion
matrix and the expected calibration error (ECE)."""

from __future__ import annotations

import numpy as np


def confusion_matrix(predictions, labels, num_classes: int) -> np.ndarray:
    """(classes, classes) int counts: row = true class, column = predicted class."""
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (np.asarray(labels), np.asarray(predictions)), 1)
    return matrix


def expected_calibration_error(probs, labels, bins: int = 15) -> float:
    """ECE with ``bins`` equal-width confidence bins (Guo et al. 2017): the mean over images of
    ``|accuracy - confidence|`` within each bin, weighted by the bin's share of the images. The
    confidence is the largest probability; a confidence of exactly 0 falls in the first bin."""
    probs, labels = np.asarray(probs, np.float64), np.asarray(labels)
    confidence = probs.max(-1)
    correct = probs.argmax(-1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    error = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            error += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(error)


def classification_metrics(probs, labels, num_classes: int) -> dict:
    """Accuracy, per-class accuracy (recall), the confusion matrix and the ECE of one model.

    Args:
      probs: (N, classes) probabilities; labels: (N,) ints.
    """
    predictions = np.asarray(probs).argmax(-1)
    matrix = confusion_matrix(predictions, labels, num_classes)
    per_class = matrix.diagonal() / np.maximum(matrix.sum(1), 1)
    return {
        "accuracy": float(np.mean(predictions == np.asarray(labels))),
        "per_class_accuracy": per_class.tolist(),
        "confusion": matrix.tolist(),
        "ece": expected_calibration_error(probs, labels),
    }


def temperature_scaled(probs, temperature: float) -> np.ndarray:
    """``softmax(log p / T)``: the probabilities at temperature ``T`` (Guo et al. 2017; the models
    end with a softmax, so ``log p`` are their logits up to a constant per image)."""
    logits = np.log(np.clip(np.asarray(probs, np.float64), 1e-30, None)) / temperature
    logits -= logits.max(-1, keepdims=True)
    scaled = np.exp(logits)
    return scaled / scaled.sum(-1, keepdims=True)


def negative_log_likelihood(probs, labels) -> float:
    """Mean ``-log p_y`` (clipped at 1e-30)."""
    probs = np.asarray(probs, np.float64)
    picked = probs[np.arange(len(labels)), np.asarray(labels)]
    return float(-np.mean(np.log(np.clip(picked, 1e-30, None))))


def fit_temperature(probs, labels, low: float = 0.05, high: float = 20.0) -> float:
    """The temperature minimising the negative log-likelihood of ``labels`` (a golden-section
    search over log T in [log low, log high]; the NLL is convex in 1/T)."""
    a, b = np.log(low), np.log(high)
    ratio = (np.sqrt(5) - 1) / 2

    def loss(log_t):
        return negative_log_likelihood(temperature_scaled(probs, np.exp(log_t)), labels)

    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = loss(c), loss(d)
    for _ in range(60):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = loss(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = loss(d)
    return float(np.exp((a + b) / 2))
