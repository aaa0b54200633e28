"""How a model was trained, in one vocabulary: ``"adversarial"``, ``"normal"`` or unknown.

Model cards, metadata tables, HDF5 filter databases and the command line spell the training
in many ways (``robust``, ``AT``, ``pgd``, ``True``, ``clean``, ``standard`` ...).
:func:`training_label` maps all of them to the two words the database stores, so every part
of filterlens groups models the same way. A word it does not know is an error, not a guess:
a misspelt ``nromal`` must not land a model in the robust group.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from .errors import FilterlensError

ADVERSARIAL, NORMAL, UNKNOWN = "adversarial", "normal", "unknown"
#: The labels stored in the database (``unknown`` is stored for "not known").
TRAINING_VALUES = (NORMAL, ADVERSARIAL, UNKNOWN)

#: Words for adversarial training: the label, its synonyms and training methods.
ADVERSARIAL_WORDS = frozenset({
    "adversarial", "robust", "adv", "at", "adversarially-trained", "adv-trained", "advtrained",
    "pgd", "pgd-at", "fgsm", "fgsm-rs", "fast", "free", "trades", "mart", "awp", "madry",
    "true", "yes", "1",
})
#: Words for normal (standard, non-adversarial) training.
NORMAL_WORDS = frozenset({
    "normal", "standard", "clean", "natural", "nominal", "erm", "none", "cln", "clntrained",
    "false", "no", "0",
})
#: Words for "not known".
UNKNOWN_WORDS = frozenset({"", UNKNOWN, "?", "n/a", "na", "nan", "null"})
#: Method prefixes that name adversarial training (``pgd-l2``, ``trades-awp``, ``adv_...``).
_ADVERSARIAL_PREFIXES = ("pgd", "fgsm", "trades", "mart", "adv")


class TrainingLabelError(FilterlensError, ValueError):
    """A training word that is neither adversarial, normal nor unknown."""


def training_label(value: Any) -> str | None:
    """``"adversarial"``, ``"normal"`` or None (unknown) for any spelling of a model's training.

    Parameters
    ----------
    value : str, bool, int or None
        A label (``adversarial``, ``robust``, ``AT``, ``normal``, ``clean``, ``standard`` ...),
        a training method (``pgd``, ``fgsm-rs``, ``trades`` ..., or any word starting with
        ``pgd``, ``fgsm``, ``trades``, ``mart`` or ``adv``), or a flag "is robust"
        (``True``/``False``, ``1``/``0``, ``yes``/``no``). Case, surrounding blanks and ``_``
        versus ``-`` do not matter.

    Returns
    -------
    str or None
        ``"adversarial"`` or ``"normal"``; None for None, NaN, an empty string or ``unknown``.

    Raises
    ------
    TrainingLabelError
        For any other word.
    """
    if value is None:
        return None
    if isinstance(value, bool) or type(value).__name__ == "bool_":  # numpy bools too
        return ADVERSARIAL if bool(value) else NORMAL
    if isinstance(value, float) and math.isnan(value):
        return None
    text = str(value).strip().lower().replace("_", "-").replace(" ", "-")
    if text in UNKNOWN_WORDS:
        return None
    if text in NORMAL_WORDS:
        return NORMAL
    if text in ADVERSARIAL_WORDS or text.startswith(_ADVERSARIAL_PREFIXES):
        return ADVERSARIAL
    raise TrainingLabelError(
        f"unknown training {value!r}: use adversarial (or robust, AT, pgd, fgsm-rs, trades), "
        "normal (or clean, standard) or unknown"
    )


def card_training(card: Mapping[str, Any] | None) -> str | None:
    """The training a model card records, as written there: ``training.method`` (``"pgd"``), a
    plain ``training`` string, or ``"adversarial"``/``"normal"`` from a ``robust`` flag; None
    when the card says nothing. Pass the result to :func:`training_label` for the label."""
    if not card:
        return None
    t = card.get("training")
    if isinstance(t, Mapping) and t.get("method"):
        return str(t["method"])
    if isinstance(t, str) and t.strip():
        return t.strip()
    if "robust" in card and card["robust"] is not None:
        return training_label(card["robust"])
    return None


__all__ = [
    "ADVERSARIAL", "ADVERSARIAL_WORDS", "NORMAL", "NORMAL_WORDS", "TRAINING_VALUES", "TrainingLabelError",
    "UNKNOWN", "UNKNOWN_WORDS", "card_training", "training_label",
]
