"""The settings of a first-layer study, in one object."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import FirstLayerError
from .kernels import SINGLE_TAP_SHARE

MATCHES = ("kernel", "channel")


@dataclass(frozen=True)
class FirstLayerSettings:
    """How :func:`~filterlens.firstlayer.first_layer_study` attacks, measures and compares.

    Parameters
    ----------
    steps : int
        L-inf PGD steps (0: the random start only).
    alpha : float, optional
        PGD step size (default: :func:`filterlens.robust.attacks.pgd`'s, ``2.5 eps / steps``).
    restarts : int
        PGD random restarts; the strongest perturbation per image is kept.
    n_banks : int
        Random filter banks behind the pass ratio.
    match : {"kernel", "channel"}
        What a random bank's l2 norms match: each kernel ``W[o, i]`` or each output channel ``W[o]``.
    radius : int
        Low band of :func:`~filterlens.firstlayer.kernels.low_freq_share` (0: DC alone).
    centroid_size : int
        DFT size of :func:`~filterlens.firstlayer.kernels.spectral_centroid`.
    min_centre_share : float
        Least energy share of the centre tap of a centre-peaked kernel.
    single_tap_share : float
        Least energy share of the largest tap of a single-tap kernel.
    sparse_threshold : float
        A kernel is sparse when ``max|w| <= sparse_threshold * max|W|`` (the paper's 1 %).
    seed : int
        Seed of the PGD starts, the random banks and the bootstrap.
    batch_size : int
        Images per forward pass.
    example_index : int
        The image drawn in the activation figure (clipped to the images given).
    n_boot : int
        Bootstrap replicates of the confidence intervals.
    ci : float
        Confidence level of the intervals.
    """

    steps: int = 10
    alpha: float | None = None
    restarts: int = 1
    n_banks: int = 8
    match: str = "kernel"
    radius: int = 0
    centroid_size: int = 32
    min_centre_share: float = 1 / 3
    single_tap_share: float = SINGLE_TAP_SHARE
    sparse_threshold: float = 0.01
    seed: int = 0
    batch_size: int = 256
    example_index: int = 0
    n_boot: int = 10_000
    ci: float = 0.95

    def __post_init__(self) -> None:
        checks = [
            (self.steps >= 0, "steps must be >= 0"),
            (self.alpha is None or self.alpha > 0, "alpha must be > 0"),
            (self.restarts >= 1, "restarts must be >= 1"),
            (self.n_banks >= 1, "n_banks must be >= 1"),
            (self.match in MATCHES, f"match must be one of {', '.join(MATCHES)}"),
            (self.radius >= 0, "radius must be >= 0"),
            (self.centroid_size >= 1, "centroid_size must be >= 1"),
            (0 < self.min_centre_share <= 1, "min_centre_share must lie in (0, 1]"),
            (0 < self.single_tap_share <= 1, "single_tap_share must lie in (0, 1]"),
            (0 <= self.sparse_threshold < 1, "sparse_threshold must lie in [0, 1)"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.n_boot >= 1, "n_boot must be >= 1"),
            (0 < self.ci < 1, "ci must lie in (0, 1)"),
        ]
        for ok, message in checks:
            if not ok:
                raise FirstLayerError(f"{message} (first-layer settings)")

    def to_dict(self) -> dict:
        """The settings as a plain dict."""
        return asdict(self)


__all__ = ["FirstLayerSettings", "MATCHES"]
