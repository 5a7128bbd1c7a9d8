"""Configurations: one frozen dataclass for every MultVAE-family model, with per-dataset presets.

The defaults reproduce the authors' code as docs/fidelity.md describes it; every
improvement is an option with its own field, off by default. A config is hashable, so it is passed to
the jitted steps as a static argument.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

from tall_jax.datasets.own import is_registered
from tall_jax.flags import flag
from tall_jax.precision import PRECISIONS

MODELS = ("multvae", "wl", "moe", "lmoe", "lmoe_lc", "lmoe_gap_l", "tall", "tall_plus", "uniform_moe")
GATES = ("loss", "route", "route_train", "uniform", "mlp", "none")
KL_REDUCTIONS = ("sum_users", "mean", "per_user")
ADAPTIVE = ("none", "loss_change", "raw_loss", "wl")
KKT_MODES = ("paper", "exact")
FORWARD_IMPLS = ("fused", "reference")
ENCODERS = ("auto", "dense", "sparse")
# Fields that change how a run executes but not its maths: never a variant of the model, and a saved
# run that differs only in them is the same run.
EXECUTION_FIELDS = ("eval_batch_size", "expert_chunk", "forward_impl", "encoder", "ks")
# Fields the eval-mode forward (and so the ranking) reads: models that differ only elsewhere (e.g.
# LMoE and TALL, which differ in the training weights) share one compiled evaluation.
SCORING_FIELDS = ("n_experts", "latent", "batch_size", "gate", "gate_temperature", "gate_stop_gradient",
                  "gate_hidden", "eval_batch_size", "expert_chunk", "forward_impl", "matmul_precision",
                  "encoder", "ks")


@dataclasses.dataclass(frozen=True)
class TALLConfig:
    """Every knob of MultVAE, WL, MoE, LMoE and TALL. Field comments give the paper/spec symbol; a
    field the command line sets carries its flag and help (:func:`tall_jax.flags.flag`)."""

    model: str = "tall"  # a name from MODELS; fixes the gate / weighting choices below via make_config
    # E, number of MultVAE experts (docs/fidelity.md#experts)
    n_experts: int = flag(100, "E, number of experts of a mixture", name="--experts")
    latent: int = 100  # d, latent size; encoder M -> 2d, decoder d -> M, no hidden layer (docs/fidelity.md#multvae)
    # ML-1M 512, Yelp/CDs 256 (docs/fidelity.md#hyper-parameters)
    batch_size: int = flag(512, "users per step")
    lr: float = flag(1e-3, "Adam learning rate, > 0")
    # "reg"; Adam coupled-L2 weight decay is reg / E for mixtures (docs/fidelity.md#experts)
    reg: float = flag(1e-3, "weight decay before division by E, >= 0")
    weight_decay_per_expert: bool = True  # divide reg by E (faithful); False uses reg for every E
    noise_std: float = 0.01  # std of the reparameterisation noise (docs/fidelity.md#multvae: 0.01, not 1)
    # input dropout after L2 normalisation (0 in TALL, 0.2 in LFT)
    dropout: float = flag(0.0, "input dropout in [0, 1)")
    anneal_cap: float = 0.2  # beta_t = min(cap, t / total_anneal_steps) (docs/fidelity.md#multvae)
    total_anneal_steps: int = 200_000
    constant_beta: float | None = None  # fixed beta instead of annealing (LFT uses 0.2)
    # --- gate (paper §3.1, docs/fidelity.md#gate) ---
    # "loss": softmax_k(1/L_uk); "route": softmax_k(-L_uk/|V_u|/tau) (option); "route_train" (option):
    # the same of the expert's NLL per train item (no validation item in the gate); "uniform"; "mlp"
    # (MoE ablation); "none" (E = 1)
    gate: str = flag("loss", "loss: softmax(1/L_uk) (the paper's); route: softmax(-L_uk/|V_u|/tau), a gate that "
                             "routes (option); route_train: the same of each expert's loss per train item "
                             "(option, no validation item in the gate); uniform; mlp (default: the model's "
                             "preset)", choices=GATES)
    # 1 is faithful for "loss"
    gate_temperature: float = flag(1.0, "tau of the loss / route / route_train gate")
    gate_stop_gradient: bool = flag(False, "detach the gate (default: off, gradients flow through it)")
    gate_hidden: int = 2000  # width of the MLP gate M -> 2000 -> E (docs/fidelity.md#ablations)
    # "sum_users" (faithful, docs/fidelity.md#kl), "mean", "per_user"
    kl_reduction: str = flag("sum_users", "how the KL term is reduced over users", choices=KL_REDUCTIONS)
    # --- adaptive weights (paper Eq. 1-3, docs/fidelity.md#adaptive-weights) ---
    adaptive: str = "loss_change"  # "none", "loss_change" (TALL), "raw_loss" (LMoE+gap+L), "wl"
    gap: int = flag(40, "T, epochs without adaptive weights")  # epochs 1..T are unweighted
    alpha: float = flag(0.08, "alpha of the adaptive weights, Eq. 1")
    window: int = 8  # L, length of the loss-change window
    # "paper": Eq. 3 with the 1e-8 clamp; "exact": simplex projection
    kkt_mode: str = flag("paper", "paper: Eq. 3 + clamp; exact: simplex projection", choices=KKT_MODES)
    # docs/fidelity.md#weights-and-validation-size (option)
    weight_per_item: bool = flag(False, "adaptive-weight signal l_u/|V_u| instead of l_u (default: off)")
    # > 0: w_u <- min(w_u, cap), then rescaled to mean 1 (option; 0 = the authors' uncapped weights)
    weight_cap: float = flag(0.0, "cap the adaptive weights at this value, then rescale them to mean 1 "
                                  "({default}, 0 = no cap)")
    # TALL repo 1.2, LFT repo 1.5 (docs/fidelity.md#wl)
    wl_gamma: float = flag(1.2, "WL exponent")
    wl_double_step: bool = True  # TALL-repo WL quirk: an unweighted then a weighted Adam step
    # --- loop ---
    # early stopping on the mean of validation NDCG@{1,5,10,20} (docs/fidelity.md#early-stopping)
    patience: int = flag(15, "epochs without a better validation score before stopping")
    max_epochs: int = flag(10_000, "maximum epochs; early stopping decides the end", name="--epochs")
    seed: int = 0
    # --- execution (no effect on the maths) ---
    eval_batch_size: int = 0  # users per evaluation call (0: same as batch_size)
    # experts per chunk (must divide n_experts). Fused path: the chunk of the gate's loss scan (0:
    # tall_jax.head.auto_chunk, about a cache's worth of logits on a CPU). Reference path: 0 holds all
    # E logits at once; c > 0 runs the gate pass and the mixture pass over E / c chunks under
    # jax.checkpoint (peak activation memory about c/E, decoder recomputed). Same maths.
    expert_chunk: int = flag(0, "experts per chunk of the gate's loss scan (fused path; 0 = automatic, about "
                                "a cache's worth of logits) or, with --forward-impl reference, the chunked "
                                "memory option")
    # "fused" (default): the mixture head of tall_jax.head, which never holds all experts' logits
    # (the gate's losses from a scan over expert chunks with a recomputing custom VJP, the mixture as
    # one GEMM); "reference": every expert's [E, B, M] logits at once, the simple path it is tested
    # against. Same maths.
    forward_impl: str = flag("fused", "fused: never holds all experts' logits; reference: the simple "
                                      "all-at-once path (same maths)", choices=FORWARD_IMPLS)
    # matmul precision (tall_jax.precision): "float32" (faithful; full f32 also on GPUs, no TF32),
    # "tensorfloat32" (GPU TF32), "bfloat16" (bf16 inputs, f32 accumulation)
    matmul_precision: str = flag("float32", "float32: full f32 products, also on GPUs (faithful); "
                                            "tensorfloat32: GPU TF32; bfloat16: bf16 inputs with f32 "
                                            "accumulation", choices=PRECISIONS)
    # the fused path's encoder: "dense" GEMM [B, M] x [M, E 2d], "sparse" gather + segment sum over
    # the batch's train nonzeros (tall_jax.head.encode_experts_sparse), or "auto": sparse when the
    # batch's nonzero bound is below SPARSE_ENCODER_DENSITY of B x M (Yelp/CDs, not ML-1M)
    encoder: str = flag("auto", "fused path's encoder: dense GEMM, sparse gather over the batch's nonzeros, "
                                "or auto by density", choices=ENCODERS)
    # --- reporting ---
    # cut-offs ranked beside the faithful (1, 5, 10, 20)
    ks: tuple[int, ...] = flag((), "cut-offs reported beside the faithful 1 5 10 20, e.g. --ks 10 20 50 "
                                   "(default: none)", metavar="K")

    def __post_init__(self) -> None:
        _check_choice("model", self.model, MODELS)
        _check_choice("gate", self.gate, GATES)
        _check_choice("kl_reduction", self.kl_reduction, KL_REDUCTIONS)
        _check_choice("adaptive", self.adaptive, ADAPTIVE)
        _check_choice("kkt_mode", self.kkt_mode, KKT_MODES)
        _check_choice("forward_impl", self.forward_impl, FORWARD_IMPLS)
        _check_choice("matmul_precision", self.matmul_precision, PRECISIONS)
        _check_choice("encoder", self.encoder, ENCODERS)
        for f in dataclasses.fields(self):  # every number finite (inf passes "> 0", nan fails it late)
            value = getattr(self, f.name)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isfinite(value):
                raise ValueError(f"config field {f.name!r} must be a finite number, got {value!r}")
        positive = {
            "n_experts": self.n_experts, "latent": self.latent, "batch_size": self.batch_size,
            "window": self.window, "patience": self.patience, "max_epochs": self.max_epochs,
            "gate_temperature": self.gate_temperature, "alpha": self.alpha,
            "total_anneal_steps": self.total_anneal_steps
        }
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"config field {name!r} must be > 0, got {value!r}")
        if any(not isinstance(k, int) or k < 1 for k in self.ks):
            raise ValueError(f"config field 'ks' must hold positive integers, got {self.ks!r}")
        if not 0 <= self.weight_cap < float("inf"):
            raise ValueError(f"config field 'weight_cap' must be >= 0 (0 = no cap), got {self.weight_cap!r}")
        if self.gap < 0:
            raise ValueError(f"config field 'gap' must be >= 0, got {self.gap}")
        if not 0.0 < self.lr < float("inf"):
            raise ValueError(f"config field 'lr' must be > 0 (and finite), got {self.lr!r}")
        if not 0 < self.gate_hidden:
            raise ValueError(f"config field 'gate_hidden' must be > 0, got {self.gate_hidden!r}")
        non_negative = {"reg": self.reg, "noise_std": self.noise_std, "anneal_cap": self.anneal_cap,
                        "wl_gamma": self.wl_gamma, "eval_batch_size": self.eval_batch_size,
                        "seed": self.seed}
        if self.constant_beta is not None:
            non_negative["constant_beta"] = self.constant_beta
        for name, value in non_negative.items():
            if not 0 <= value < float("inf"):
                raise ValueError(f"config field {name!r} must be >= 0 (and finite), got {value!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"config field 'dropout' must be in [0, 1), got {self.dropout}")
        if self.expert_chunk < 0 or (self.expert_chunk and self.n_experts % self.expert_chunk):
            raise ValueError(f"config field 'expert_chunk' must be 0 or a divisor of n_experts="
                             f"{self.n_experts}, got {self.expert_chunk}")
        if self.gate == "none" and self.n_experts != 1:
            raise ValueError(f"gate='none' needs n_experts=1, got {self.n_experts}")

    @property
    def weight_decay(self) -> float:
        """Adam's coupled L2 coefficient: reg / E for mixtures (docs/fidelity.md#experts, #departures), reg otherwise."""
        if self.weight_decay_per_expert and self.n_experts > 1:
            return self.reg / self.n_experts
        return self.reg

    @property
    def eval_batch(self) -> int:
        return self.eval_batch_size or self.batch_size

    def for_steps(self) -> "TALLConfig":
        """This config with the loop-only fields (seed, max_epochs, patience) reset: the jitted steps
        do not read them, so runs that differ only there share one compilation."""
        return dataclasses.replace(self, seed=0, max_epochs=10_000, patience=15)

    def for_scoring(self) -> "TALLConfig":
        """This config with every field but :data:`SCORING_FIELDS` at its default: what the
        evaluation is compiled for (training-only fields never change a ranking)."""
        return TALLConfig(**{f: getattr(self, f) for f in SCORING_FIELDS})

    def replace(self, **changes: Any) -> "TALLConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def variant(config: Any, faithful: Any, ignore: tuple[str, ...] = ("seed",)) -> str:
    """"field=value, ..." for every field of the dataclass ``config`` that differs from ``faithful``
    (the paper configuration), so result tables never pass a reduced run off as the paper's."""
    ours, ref = dataclasses.asdict(config), dataclasses.asdict(faithful)
    return ", ".join(f"{k}={v}" for k, v in ours.items() if k not in ignore and ref.get(k) != v)


def _check_choice(field: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"config field {field!r} is {value!r}; choose one of {', '.join(choices)}")


# Per-dataset values (docs/fidelity.md#hyper-parameters; README of the authors for Yelp/CDs). "synthetic" is small and quick.
DATASET_PRESETS: dict[str, dict[str, Any]] = {
    "ml-1m": dict(batch_size=512, reg=1e-3, gap=40, alpha=0.08),
    "yelp": dict(batch_size=256, reg=1e-4, gap=15, alpha=0.6),
    "cds": dict(batch_size=256, reg=1e-4, gap=25, alpha=0.3),
    "synthetic": dict(n_experts=10, batch_size=256, reg=1e-3, gap=10, alpha=0.08, max_epochs=60,
                      patience=10),
}

# What each model name means (paper Tables 2-4, docs/fidelity.md#ablations and #wl).
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "multvae": dict(n_experts=1, gate="none", kl_reduction="mean", adaptive="none"),
    "wl": dict(n_experts=1, gate="none", kl_reduction="mean", adaptive="wl"),
    "moe": dict(gate="mlp", adaptive="none"),
    "lmoe": dict(gate="loss", adaptive="none"),
    "lmoe_lc": dict(gate="loss", adaptive="loss_change", gap=0),
    "lmoe_gap_l": dict(gate="loss", adaptive="raw_loss"),
    "tall": dict(gate="loss", adaptive="loss_change"),
    # the improved preset (docs/results.md, "An improved TALL"): the loss-change signal per validation item,
    # l_u / |V_u|, at TALL's strength (alpha scaled by PRESET_ALPHA_SCALE)
    "tall_plus": dict(gate="loss", adaptive="loss_change", weight_per_item=True),
    "uniform_moe": dict(gate="uniform", adaptive="none"),
}
# Models whose alpha is the dataset's alpha times this factor (an explicit alpha override still
# wins). 0.105: the per-item signal's spread over users relative to the per-user signal's at epoch
# T = 40 on ML-1M (std of the window means, seeds 1-3: 0.0121-0.0124 against 0.1163-0.1168), so the
# per-item weights spread as TALL's do when they start (std 0.71-0.72 at epoch 41).
PRESET_ALPHA_SCALE: dict[str, float] = {"tall_plus": 0.105}


def make_config(dataset: str, model: str, **overrides: Any) -> TALLConfig:
    """The faithful configuration of ``model`` on ``dataset``, then ``overrides`` (None values ignored).

    Dataset presets apply first, model presets second (so ``lmoe_lc`` forces gap 0), explicit
    overrides last.
    """
    if dataset not in DATASET_PRESETS and not is_registered(dataset):
        raise ValueError(f"unknown dataset {dataset!r}; known: {', '.join(DATASET_PRESETS)}, or a file "
                         "made a dataset by tall_jax.datasets.register_dataset")
    if model not in MODEL_PRESETS:
        raise ValueError(f"unknown model {model!r}; known: {', '.join(MODEL_PRESETS)}")
    fields = {f.name for f in dataclasses.fields(TALLConfig)}
    unknown = set(overrides) - fields
    if unknown:
        raise ValueError(f"unknown config field(s): {', '.join(sorted(unknown))}")
    values: dict[str, Any] = dict(model=model)
    values.update(DATASET_PRESETS.get(dataset, {}))  # a registered file: the generic defaults
    values.update(MODEL_PRESETS[model])
    if model in PRESET_ALPHA_SCALE:
        values["alpha"] = round(values.get("alpha", TALLConfig.alpha) * PRESET_ALPHA_SCALE[model], 6)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TALLConfig(**values)
