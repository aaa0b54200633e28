"""Adversarial robustness: attacks, adversarial training, evaluation, and model files with cards.

Modules: ``attacks`` (FGSM, PGD, AutoAttack), ``train`` (normal / PGD / FGSM-RS / TRADES training),
``evaluate`` (clean and robust accuracy), ``card`` (safetensors + JSON model cards) and
``pipeline`` (train-evaluate-save, as the CLI does it).
"""

from .attacks import AttackError, autoattack, fgsm, format_eps, parse_eps, pgd
from .card import ModelFileError, card_path, load_module_and_card, read_card, save_model, update_card, write_card
from .evaluate import autoattack_accuracy, clean_accuracy, evaluate_dataset, pgd_accuracy, robust_accuracy
from .train import METHODS, TrainConfig, TrainingError, TrainResult, seed_everything, train_model

__all__ = [
    "AttackError", "METHODS", "ModelFileError", "TrainConfig", "TrainResult", "TrainingError",
    "autoattack", "autoattack_accuracy", "card_path", "clean_accuracy", "evaluate_dataset",
    "fgsm", "format_eps", "load_module_and_card", "parse_eps", "pgd", "pgd_accuracy", "read_card",
    "robust_accuracy", "save_model", "seed_everything", "train_model", "update_card", "write_card",
]
