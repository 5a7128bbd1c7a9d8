"""Configuration of the local-learning baselines LOCA, LFT and EnLFT (docs/fidelity.md#loca, #lft, #enlft).

Defaults reproduce the code the spec describes, quirks included; each deviation is a named field.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from tall_jax.configs import make_config
from tall_jax.flags import flag

BASELINES = ("loca", "lft", "enlft")
GLOBAL_WL = ("lft_repo", "tall_repo")

# LFT's reduced defaults on the synthetic data (see DATASET_PRESETS): a user subset, fewer epochs.
SYNTHETIC_LFT = dict(users=50, ft_epochs=10)

# The original LOCA (jin530/LOCA) bandwidths instead of the TALL repo's 1.0 / 0.8 (docs/fidelity.md#loca).
LOCA_ORIGINAL = dict(train_h=0.8, test_h=0.4)


@dataclasses.dataclass(frozen=True)
class BaselineConfig:
    """Every knob of LOCA, LFT and EnLFT; comments give the spec's symbol / section."""

    model: str = "loca"  # "loca" | "lft" | "enlft"
    seed: int = 0
    latent: int = 100  # d of every MultVAE (docs/fidelity.md#multvae)
    noise_std: float = 0.01  # reparameterisation noise (docs/fidelity.md#multvae)
    # --- LOCA (docs/fidelity.md#loca) ---
    n_local: int = flag(100, "LOCA: number of local models", name="--local-models")  # also its anchors
    anchor_stride: int = 10  # anchors are drawn from users 0, 10, 20, ... only
    # kernel bandwidth of the training weights (original LOCA: 0.8)
    train_h: float = flag(1.0, "LOCA training bandwidth ({default}; original LOCA 0.8)")
    # bandwidth of coverage, candidates and inference (original LOCA: 0.4)
    test_h: float = flag(0.8, "LOCA test bandwidth ({default}; original LOCA 0.4)")
    loca_batch: int = 512
    loca_lr: float = 1e-3
    loca_reg: float = 1e-3  # Adam coupled L2 of each local model
    loca_dropout: float = 0.0
    loca_beta: float = 0.0  # faithful quirk: local models never get a KL term (docs/fidelity.md#departures)
    loca_loss_norm: str = "count"  # faithful: mean over kept users of K*CE; "weight": / sum K
    loca_global_state: str = "final"  # faithful: embeddings + fallback from the final MultVAE state
    # per-local-model early stopping on its candidates' validation score
    patience: int = flag(15, "LOCA: per local model")
    # cap on LOCA's local epochs (a reduced run sets it)
    max_epochs: int = flag(10_000, "LOCA: cap on each local model's epochs", name="--epochs")
    # --- LFT / EnLFT (docs/fidelity.md#lft, #enlft) ---
    global_wl: str = "lft_repo"  # WL global model as in the LFT repo (gamma 1.5, one step, ...)
    sim_threshold: float = 0.1  # Jaccard threshold of P_u
    alpha_mix: float = 0.7  # p_u = alpha x_u + (1 - alpha) mean_{P_u} x_v
    cos_threshold: float = 0.2  # cosine threshold of N_u
    min_size: int = 10  # top-10 fallback for P_u and N_u
    max_size: int = 2000  # LFT cap on |N_u| (EnLFT has none)
    ft_epochs: int = flag(30, "LFT/EnLFT: fine-tuning epochs of each local model ({default}; LFT on "
                                  f"synthetic data {SYNTHETIC_LFT['ft_epochs']})")
    ft_batch: int = 128
    ft_lr: float = 1e-3
    ft_reg: float = 0.01
    ft_dropout: float = 0.2
    ft_beta: float = 0.2  # constant KL weight on the batch-mean KL
    n_anchors: int = flag(100, "EnLFT: number of anchors", name="--anchors")
    anchor_penalty: float = 1.5  # EnLFT greedy redundancy penalty
    agg_cut: float = 0.2  # EnLFT: aggregation weights below this are zeroed
    users: int = flag(0, "LFT: fine-tune a seeded random subset of this many users, 0 for all (default: 0, all "
                              f"users; on synthetic data {SYNTHETIC_LFT['users']}, so that --model lft takes "
                              "about a minute on 2 CPU cores; results.json's variant records it)")
    # --- execution (no effect on the maths) ---
    # local models trained together per call (0: from memory_budget_gb)
    chunk: int = flag(0, "LOCA/LFT/EnLFT: local models trained per call (default: 0, as many as 2 GB hold)")
    memory_budget_gb: float = 2.0  # device memory for one chunk when chunk = 0
    eval_batch: int = 256

    def __post_init__(self) -> None:
        if self.model not in BASELINES:
            raise ValueError(f"baseline model must be one of {BASELINES}, got {self.model!r}")
        if self.global_wl not in GLOBAL_WL:
            raise ValueError(f"global_wl must be one of {GLOBAL_WL}, got {self.global_wl!r}")
        if self.loca_global_state not in ("final", "best"):
            raise ValueError(f"loca_global_state must be 'final' or 'best', got {self.loca_global_state!r}")
        for name in ("n_local", "anchor_stride", "n_anchors", "ft_epochs", "ft_batch", "loca_batch",
                     "patience", "max_epochs", "min_size", "max_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"baseline config field {name!r} must be >= 1, got {getattr(self, name)}")
        if self.train_h <= 0 or self.test_h <= 0:
            raise ValueError(f"kernel bandwidths must be > 0, got train_h={self.train_h}, test_h={self.test_h}")
        if self.users < 0 or self.chunk < 0:
            raise ValueError(f"users and chunk must be >= 0, got {self.users}, {self.chunk}")

    def replace(self, **changes: Any) -> "BaselineConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# The models a model-specific field is read by (a field not named here, e.g. seed, latent or chunk, is
# read by all three): setting one for another model would only make that run a false variant.
FIELD_MODELS: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(("n_local", "anchor_stride", "train_h", "test_h", "loca_batch", "loca_lr", "loca_reg",
                     "loca_dropout", "loca_beta", "loca_loss_norm", "loca_global_state", "patience",
                     "max_epochs"), ("loca",)),
    **dict.fromkeys(("global_wl", "sim_threshold", "alpha_mix", "cos_threshold", "min_size", "ft_epochs",
                     "ft_batch", "ft_lr", "ft_reg", "ft_dropout", "ft_beta"), ("lft", "enlft")),
    **dict.fromkeys(("max_size", "users"), ("lft",)),
    **dict.fromkeys(("n_anchors", "anchor_penalty", "agg_cut"), ("enlft",)),
}


def applies(field: str, model: str) -> bool:
    """Whether ``model``'s code reads the BaselineConfig field ``field``."""
    return model in FIELD_MODELS.get(field, BASELINES)


# Reduced defaults per (dataset, model), so the quick offline run stays quick: LFT fine-tunes one model
# per user, which for the 1,500 synthetic users x 30 epochs takes ~20 minutes on 2 CPU cores; by
# default there it fine-tunes a seeded subset of 50 users for 10 epochs, about a minute with the
# global model (results.json's "variant" and "evaluated_users" say so; the report compares TALL with
# it on the same users). users=0, ft_epochs=30 give the full, faithful run.
DATASET_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "synthetic": {"lft": dict(SYNTHETIC_LFT)},
}


def make_baseline_config(model: str, seed: int = 0, dataset: str | None = None,
                         **overrides: Any) -> BaselineConfig:
    """The faithful config of ``model``, then the reduced defaults of ``dataset`` (``DATASET_PRESETS``),
    then ``overrides`` (None values ignored; unknown names and fields ``model`` does not read error)."""
    fields = {f.name for f in dataclasses.fields(BaselineConfig)}
    unknown = set(overrides) - fields
    if unknown:
        raise ValueError(f"unknown baseline option(s) for {model!r}: {', '.join(sorted(unknown))}; "
                         f"known: {', '.join(sorted(fields))}")
    given = {k: v for k, v in overrides.items() if v is not None}
    foreign = sorted(k for k in given if model in BASELINES and not applies(k, model))
    if foreign:
        raise ValueError(f"{', '.join(foreign)}: not read by {model} (" + "; ".join(
            f"{k} applies to {' and '.join(FIELD_MODELS[k])}" for k in foreign) + ")")
    values = dict(DATASET_PRESETS.get(dataset or "", {}).get(model, {}))
    values.update(given)
    return BaselineConfig(model=model, seed=seed, **values)


def global_config(dataset: str, config: BaselineConfig):
    """TALLConfig of the global model: MultVAE for LOCA (docs/fidelity.md#loca); WL for LFT/EnLFT (docs/fidelity.md#lft),
    as in the LFT repo (gamma 1.5, one weighted step, dropout 0.2, wd 0.01, beta 0.2, at most 100
    epochs, stop when epoch - best > 5) or as in the TALL repo (``global_wl="tall_repo"``)."""
    if config.model == "loca":
        return make_config(dataset, "multvae", seed=config.seed, latent=config.latent)
    if config.global_wl == "tall_repo":
        return make_config(dataset, "wl", seed=config.seed, latent=config.latent)
    return make_config(dataset, "wl", seed=config.seed, latent=config.latent, wl_gamma=1.5,
                       wl_double_step=False, dropout=0.2, reg=0.01, constant_beta=0.2,
                       max_epochs=100, patience=6)
