"""Configuration of the closed-form and neighbourhood recommenders (docs/closed_forms.md).

One frozen :class:`ClosedConfig` per run. Every model has a documented grid of hyper-parameters
(:data:`GRIDS`), searched on validation; ``hp`` fixes some of them (each fixed one skips its grid).
The models are deterministic: the seed is recorded but changes nothing.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Mapping
from typing import Any

from tall_jax.flags import flag
from tall_jax.weights import MODES as KKT_MODES
from tall_jax.weights import SIGNALS as KKT_SIGNALS

CLOSED_MODELS = ("pop", "itemknn", "rp3beta", "ease", "ease_wl", "ease_ms", "ease_kkt", "loca_ease")
EASE_FAMILY = ("ease", "ease_wl", "ease_ms", "ease_kkt", "loca_ease")  # models that solve an EASE
DTYPES = ("float32", "float64")
SOLVERS = ("auto", "lapack", "jax")
# Fields that change how a run executes, not its maths: never a variant, not in the identity hash.
EXECUTION_FIELDS = ("solver", "chunk", "memory_budget_gb", "eval_batch", "ks")

LAMBDAS = (50.0, 100.0, 200.0, 400.0, 800.0, 1600.0, 3200.0)
# The searched grid per model, hyper-parameter -> values (docs/closed_forms.md#grids). The product
# is walked with the LAST name varying fastest, which the fitters use to share work between points
# (a weight source's Gram serves all lambdas; ease_kkt continues the rounds of one (lambda, alpha)
# chain; rp3beta reuses one alpha's two-step walk).
GRIDS: dict[str, dict[str, tuple[float, ...]]] = {
    "pop": {},
    "itemknn": {"k": (50.0, 100.0, 200.0, 500.0, 1000.0), "shrink": (0.0, 10.0, 100.0)},
    "rp3beta": {"alpha": (1.0,), "normalize": (0.0,), "beta": (0.0, 0.2, 0.4, 0.6, 0.8),
                "k": (50.0, 100.0, 200.0, 500.0, 1000.0)},
    "ease": {"lambda": LAMBDAS},
    "ease_wl": {"gamma": (0.5, 1.2, 2.0), "lambda": LAMBDAS},
    "ease_ms": {"p": (0.25, 0.5, 1.0, 2.0), "lambda": LAMBDAS},
    "ease_kkt": {"lambda": LAMBDAS, "alpha": (0.5, 1.0, 2.0), "rounds": (1.0, 2.0, 3.0)},
    "loca_ease": {"lambda": (100.0, 200.0, 400.0, 800.0)},
}
# name -> (low, high, low inclusive, integer): the admissible range of each hyper-parameter
HP_RANGES: dict[str, tuple[float, float, bool, bool]] = {
    "lambda": (0.0, math.inf, False, False),  # ridge penalty: > 0 keeps G + lambda I positive definite
    "k": (1.0, math.inf, True, True),  # neighbours kept per item
    "shrink": (0.0, math.inf, True, False),  # cosine shrinkage h
    "alpha": (0.0, math.inf, False, False),  # rp3beta: transition exponent; ease_kkt: Eq. 1 alpha
    "beta": (0.0, math.inf, True, False),  # rp3beta popularity penalty
    "normalize": (0.0, 1.0, True, True),  # rp3beta: 1 = l1-normalise the rows of W
    "gamma": (0.0, math.inf, False, False),  # WL exponent
    "p": (0.0, math.inf, True, False),  # ease_ms exponent
    "rounds": (1.0, 100.0, True, True),  # ease_kkt re-solving rounds
}

# The models whose code reads a field (a field not named here is read by every model).
FIELD_MODELS: dict[str, tuple[str, ...]] = {
    "hp": tuple(m for m in CLOSED_MODELS if GRIDS[m]),
    "dtype": tuple(m for m in CLOSED_MODELS if m != "pop"),
    "solver": EASE_FAMILY,
    **dict.fromkeys(("kkt_signal", "kkt_mode"), ("ease_kkt",)),
    **dict.fromkeys(("n_local", "anchor_stride", "train_h", "test_h", "latent", "chunk"), ("loca_ease",)),
}
# No closed model has per-dataset presets yet: every dataset searches the same grid.
DATASET_PRESETS: dict[str, dict[str, dict[str, Any]]] = {}

HP = tuple[tuple[str, float], ...]


def parse_hp(text: str) -> tuple[str, float]:
    """``"lambda=800"`` -> ``("lambda", 800.0)``; ValueError naming the expected form otherwise."""
    name, sep, value = str(text).partition("=")
    name = name.strip()
    if not sep or not name:
        raise ValueError(f"hyper-parameter {text!r}: expected NAME=VALUE, e.g. lambda=800")
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"hyper-parameter {text!r}: {value.strip()!r} is not a number") from None
    return name, number


@dataclasses.dataclass(frozen=True)
class ClosedConfig:
    """Every knob of the closed-form and neighbourhood models (docs/closed_forms.md)."""

    model: str = "ease"  # one of CLOSED_MODELS
    seed: int = 0  # recorded only: every closed model is deterministic
    # (name, value) pairs fixing hyper-parameters (each skips its grid), sorted by name
    hp: HP = flag((), "fix a hyper-parameter instead of choosing it on validation over its grid, e.g. --hp "
                      "lambda=800 (repeatable; goes to each chosen model whose grid has NAME; "
                      "docs/closed_forms.md lists the grids) (default: every grid searched)",
                  parse=parse_hp, metavar="NAME=VALUE", repeat=True)
    # working precision of Gram, solve and similarities ("float64" on request)
    dtype: str = flag("float32", "precision of the closed-form solves", choices=DTYPES)
    # --- ease_kkt (docs/closed_forms.md#ease_kkt) ---
    # "loss_change" (TALL) or "raw_loss" (LMoE+gap+L)
    kkt_signal: str = flag("loss_change", "ease_kkt: the weight signal, the loss change between lambda and 2 "
                                          "lambda (TALL's idea) or the raw loss (docs/closed_forms.md#ease_kkt)",
                           choices=KKT_SIGNALS)
    # Eq. 3 as the authors' closed form ("paper") or the simplex projection
    kkt_mode: str = flag("paper", "ease_kkt: the same, for its weights", choices=KKT_MODES)
    # --- loca_ease: LOCA's anchors and kernels (BaselineConfig's defaults, docs/fidelity.md#loca) ---
    n_local: int = flag(100, "loca_ease: its number of local EASEs", name="--local-models")
    anchor_stride: int = 10
    train_h: float = flag(1.0, "loca_ease: its training bandwidth")
    test_h: float = flag(0.8, "loca_ease: its test bandwidth")
    latent: int = 100  # dimension of the truncated-SVD user embedding the kernels are computed on
    # --- execution (no effect on the maths) ---
    solver: str = "auto"  # "lapack" (host, in place), "jax" (device, batched); auto: jax off the CPU
    # local EASEs solved per batched call (0: from memory_budget_gb)
    chunk: int = flag(0, "loca_ease: local EASEs solved per batched call (default: 0, as many as 2 GB hold)")
    memory_budget_gb: float = 2.0  # host / device memory for one chunk of solves or score rows
    eval_batch: int = 256
    ks: tuple[int, ...] = flag((), "", metavar="K")  # cut-offs ranked beside (1, 5, 10, 20)

    def __post_init__(self) -> None:
        if self.model not in CLOSED_MODELS:
            raise ValueError(f"closed model must be one of {', '.join(CLOSED_MODELS)}, got {self.model!r}")
        object.__setattr__(self, "hp", check_hp(self.model, self.hp))
        for name, value, choices in (("dtype", self.dtype, DTYPES), ("solver", self.solver, SOLVERS),
                                     ("kkt_signal", self.kkt_signal, KKT_SIGNALS),
                                     ("kkt_mode", self.kkt_mode, KKT_MODES)):
            if value not in choices:
                raise ValueError(f"closed config field {name!r} is {value!r}; "
                                 f"choose one of {', '.join(choices)}")
        for name in ("n_local", "anchor_stride", "latent", "eval_batch"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise ValueError(f"closed config field {name!r} must be an integer >= 1, "
                                 f"got {getattr(self, name)!r}")
        if not _is_int(self.chunk) or self.chunk < 0:
            raise ValueError(f"closed config field 'chunk' must be an integer >= 0, got {self.chunk!r}")
        for name in ("train_h", "test_h", "memory_budget_gb"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0 < value < math.inf):
                raise ValueError(f"closed config field {name!r} must be > 0 and finite, got {value!r}")
        ks = tuple(self.ks)
        if any(not _is_int(k) or k < 1 for k in ks):
            raise ValueError(f"closed config field 'ks' must hold positive integers, got {self.ks!r}")
        object.__setattr__(self, "ks", ks)

    def replace(self, **changes: Any) -> "ClosedConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def hp_dict(self) -> dict[str, float]:
        return dict(self.hp)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _pairs(hp: Any) -> list[tuple[str, Any]]:
    if hp is None:
        return []
    if isinstance(hp, str):
        return [parse_hp(part) for part in hp.split(",") if part.strip()]
    if isinstance(hp, Mapping):
        return list(hp.items())
    pairs = []
    for item in hp:
        if isinstance(item, str):
            pairs.append(parse_hp(item))
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            pairs.append((item[0], item[1]))
        else:
            raise ValueError(f"hyper-parameter {item!r}: expected a (name, value) pair or NAME=VALUE")
    return pairs


def check_hp(model: str, hp: Any) -> HP:
    """``hp`` (a mapping, (name, value) pairs or NAME=VALUE strings) as sorted (name, float) pairs,
    checked against ``model``'s grid and each hyper-parameter's range (ValueError otherwise)."""
    known = GRIDS[model]
    out: dict[str, float] = {}
    for name, value in _pairs(hp):
        if name not in known:
            raise ValueError(f"unknown hyper-parameter {name!r} for {model}; "
                             + (f"known: {', '.join(known)}" if known else f"{model} has none"))
        if name in out:
            raise ValueError(f"hyper-parameter {name!r} given twice for {model}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"hyper-parameter {name}={value!r} of {model}: not a number") from None
        low, high, low_ok, integer = HP_RANGES[name]
        if not math.isfinite(number) or number > high or number < low or (number == low and not low_ok):
            bound = f"{'>=' if low_ok else '>'} {low:g}"
            bound += f" and <= {high:g}" if math.isfinite(high) else ""
            raise ValueError(f"hyper-parameter {name}={value!r} of {model}: must be finite and {bound}")
        if integer and number != int(number):
            raise ValueError(f"hyper-parameter {name}={value!r} of {model}: must be an integer")
        out[name] = number
    return tuple(sorted(out.items()))


def grid_points(config: ClosedConfig) -> list[dict[str, float]]:
    """The hyper-parameter points the run searches: the product of ``GRIDS[model]`` (in its order,
    the last name varying fastest) with each ``config.hp`` entry fixed to its one value."""
    grid = {name: (config.hp_dict()[name],) if name in config.hp_dict() else values
            for name, values in GRIDS[config.model].items()}
    return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]


def reads(model: str, field: str) -> bool:
    """Whether ``model``'s code reads the ClosedConfig field ``field``."""
    return model in FIELD_MODELS.get(field, CLOSED_MODELS)


def make_closed_config(model: str, seed: int = 0, dataset: str | None = None,
                       **overrides: Any) -> ClosedConfig:
    """The config of ``model``: the defaults, then ``dataset``'s presets (:data:`DATASET_PRESETS`;
    none yet), then ``overrides`` (None values ignored). ValueError for an unknown model, an unknown
    field or one ``model`` does not read (``hp`` may be a mapping, pairs or NAME=VALUE strings)."""
    if model not in CLOSED_MODELS:
        raise ValueError(f"unknown closed model {model!r}; known: {', '.join(CLOSED_MODELS)}")
    fields = {f.name for f in dataclasses.fields(ClosedConfig)} - {"model", "seed"}
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(given) - fields)
    if unknown:
        raise ValueError(f"unknown closed-model option(s) for {model!r}: {', '.join(unknown)}; "
                         f"known: {', '.join(sorted(fields))}")
    foreign = sorted(k for k in given if not reads(model, k))
    if foreign:
        raise ValueError(f"{', '.join(foreign)}: not read by {model} (" + "; ".join(
            f"{k} applies to {', '.join(FIELD_MODELS[k])}" for k in foreign) + ")")
    values = dict(DATASET_PRESETS.get(dataset or "", {}).get(model, {}))
    values.update(given)
    if "hp" in values:
        values["hp"] = check_hp(model, values["hp"])
    if "ks" in values:
        values["ks"] = tuple(values["ks"])
    return ClosedConfig(model=model, seed=seed, **values)

