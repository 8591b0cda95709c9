"""How an NMF layer runs: :class:`NMFOptions`, and its backward rules as small frozen classes.

A backward rule is an object, as optimistix's adjoints are: :class:`Approximate` (the paper's and
the reference's one-step rule, the default), :class:`Unrolled` (autodiff through every iteration,
optionally rematerialised), :class:`Implicit` (the implicit-function-theorem derivative of the fixed
point) and :class:`LocalRule` (the reference's unsupervised rules for ``dL/dW``). A combination that
means nothing (``remat`` without unrolling, a local rule of an unknown kind) cannot be written. The
formulas live in :mod:`deepnmf_jax.core._rules`; configs keep naming them by string
(``BACKWARD_NAMES``, :func:`backward_from_name`).
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Literal

Precision = Literal["float32", "bfloat16", "tf32"]
PRECISIONS: tuple[str, ...] = typing.get_args(Precision)
"""How the matrix products of the NMF loop run (see :class:`NMFOptions`)."""

DEFAULT_CHUNK_BYTES = 16 * 2**20
"""The per-chunk working set that :func:`deepnmf_jax.core.num_chunks` aims at on a CPU."""

DEFAULT_PAD_INPUTS = 16
"""On a CPU the NMF loop pads S to a multiple of this (one AVX-512 vector of float32)."""


@dataclasses.dataclass(frozen=True)
class Approximate:
    """The paper's backward (eqs. 18-19): the VJP of ONE multiplicative update at the final ``h``.

    Not the derivative of the computed ``h`` (about 1/N of its scale per layer), but roughly
    aligned with it, at the cost of one update. Residuals ``(x, W, h)``, no trajectory.
    """

    name = "approximate"


@dataclasses.dataclass(frozen=True)
class Unrolled:
    """Autodiff through every iteration (the paper's "full BP").

    Attributes:
      remat: rematerialise each iteration (``jax.checkpoint``), so the backward stores one ``h``
        per iteration instead of every intermediate.
    """

    remat: bool = False
    name = "unrolled"

    def __post_init__(self):
        if not isinstance(self.remat, bool):
            raise ValueError(f"Unrolled.remat must be a bool, got {self.remat!r}")


@dataclasses.dataclass(frozen=True)
class Implicit:
    """The exact derivative of the fixed point ``h* = F(h*)`` by the implicit function theorem.

    Meaningful only where the loop has converged (``|F(h) - h|`` small): it differentiates the
    limit, not the computed iterate. The multiplicative update converges slowly; codes heading for
    zero give ``dF/dh`` eigenvalues near 1 and an ill-conditioned ``I - dF/dh`` (on real CIFAR-10
    patches, 75 -> 32 in float64, its ``dL/dx`` was 500x the unrolled one after 20 iterations and
    agreed to 4 % after 2,000). Undefined where ``I - dF/dh`` is singular (two identical columns of
    W). One I x I Jacobian and solve per position.
    """

    name = "implicit"


LocalKind = Literal["kl", "mse"]


@dataclasses.dataclass(frozen=True)
class LocalRule:
    """The reference's unsupervised local rules for ``dL/dW`` (``dL/dx`` stays the approximate one).

    Attributes:
      kind: ``"kl"``: ``dL/dW_si = -sum h_i x_s / R_s`` (the numerator of Lee and Seung's KL
        update); ``"mse"``: ``-sum h_i 2 (x_s - R_s)``. Both ignore the upstream gradient.
    """

    kind: LocalKind = "kl"

    def __post_init__(self):
        if self.kind not in typing.get_args(LocalKind):
            raise ValueError(
                f"LocalRule.kind must be one of {typing.get_args(LocalKind)}, got {self.kind!r}"
            )

    @property
    def name(self) -> str:
        return f"local_{self.kind}"


Backward = Approximate | Unrolled | Implicit | LocalRule

BACKWARD_NAMES = ("approximate", "unrolled", "implicit", "local_kl", "local_mse")
"""The string names of the backward rules, as configs write them (``model.gradient``)."""


def backward_from_name(name: str, remat: bool = False) -> Backward:
    """The rule a config names: ``"approximate"``, ``"unrolled"`` (with ``remat``), ``"implicit"``,
    ``"local_kl"`` or ``"local_mse"``."""
    if remat and name != "unrolled":
        raise ValueError(f"remat=True only applies to the 'unrolled' backward, got {name!r}")
    if name == "approximate":
        return Approximate()
    if name == "unrolled":
        return Unrolled(remat=remat)
    if name == "implicit":
        return Implicit()
    if name in ("local_kl", "local_mse"):
        return LocalRule(name.removeprefix("local_"))  # type: ignore[arg-type]
    raise ValueError(f"the NMF backward must be one of {BACKWARD_NAMES}, got {name!r}")


@dataclasses.dataclass(frozen=True)
class NMFOptions:
    """How an NMF layer runs; validated once, here. Hashable, so it is a static argument of jit.

    Attributes:
      iterations: number of updates N (>= 0; 20 in the paper's models).
      epsilon: None (the paper's update) or the reference's epsilon variant
        (:func:`deepnmf_jax.core.nmf_update`).
      backward: the backward rule (:class:`Approximate`, :class:`Unrolled`, :class:`Implicit`,
        :class:`LocalRule`), or its name (``BACKWARD_NAMES``), turned into the object.
      precision: the loop's matrix products (``PRECISIONS``): ``"float32"`` (``Precision.HIGHEST``),
        ``"bfloat16"`` (bf16 inputs, float32 accumulation) or ``"tf32"`` (``Precision.DEFAULT``).
        The codes, normalisations, divisions and every backward stay in the compute dtype.
      chunk_bytes: run the loop over chunks of positions whose working set is about this many bytes,
        one after another, so each stays in cache; 0: one piece; None: ``DEFAULT_CHUNK_BYTES`` on a
        CPU and one piece on accelerators. The same values up to rounding. A symbolic batch size
        (``jax.export``) always runs in one piece.
      pad_inputs: pad x with zero inputs (and W with zero rows) up to a multiple of this many
        inputs S; zero inputs change no code (the same values up to the order of float sums) and
        the matrix products run on whole vectors (the paper's first layer: S = 75 -> 80, its loop
        about 7 % faster on an AVX-512 CPU). None: ``DEFAULT_PAD_INPUTS`` on a CPU, none on
        accelerators; 0 or 1: none.
      unroll: passed to the loop's ``lax.fori_loop``: False (rolled, the default), True (fully
        unrolled: no loop control between iterations, a longer compile) or an int (that many
        iterations per trip). The same values either way.
      check_inputs: ``checkify`` checks that x and W are finite and non-negative, naming the layer;
        the function must then run under :func:`deepnmf_jax.core.checked`.
      carry_inputs: pass x and W through the loop's carry instead of closing over them: the same
        values, and what jax2onnx's ``fori_loop`` lowering needs. For inference only: it does not
        go with :class:`Unrolled`.
    """

    iterations: int = 20
    epsilon: float | None = None
    backward: Backward = Approximate()
    precision: Precision = "float32"
    chunk_bytes: int | None = None
    pad_inputs: int | None = None
    unroll: bool | int = False
    check_inputs: bool = False
    carry_inputs: bool = False

    def __post_init__(self):
        if isinstance(self.backward, str):
            object.__setattr__(self, "backward", backward_from_name(self.backward))
        iterations = self.iterations
        if not isinstance(iterations, int) or isinstance(iterations, bool) or iterations < 0:
            raise ValueError(f"iterations must be a non-negative int, got {iterations!r}")
        if not isinstance(self.backward, Approximate | Unrolled | Implicit | LocalRule):
            raise ValueError(
                "backward must be Approximate(), Unrolled(), Implicit(), LocalRule() or one of "
                f"{BACKWARD_NAMES}, got {self.backward!r}"
            )
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.epsilon is not None and not self.epsilon > 0:
            raise ValueError(f"epsilon must be None or > 0, got {self.epsilon!r}")
        if self.carry_inputs and isinstance(self.backward, Unrolled):
            raise ValueError("carry_inputs=True is for inference; it does not go with Unrolled()")
        if self.chunk_bytes is not None and self.chunk_bytes < 0:
            raise ValueError(f"chunk_bytes must be None or >= 0, got {self.chunk_bytes!r}")
        if self.pad_inputs is not None and self.pad_inputs < 0:
            raise ValueError(f"pad_inputs must be None or >= 0, got {self.pad_inputs!r}")
        unroll = self.unroll
        if not isinstance(unroll, bool) and not (isinstance(unroll, int) and unroll >= 1):
            raise ValueError(f"unroll must be False, True or an int >= 1, got {unroll!r}")

    @property
    def gradient(self) -> str:
        """The backward rule's name (``BACKWARD_NAMES``), as configs write it."""
        return self.backward.name
