"""The named variants of the ablation study: controls, faithful TALL, and one change at a time.

Each variant is a model of :data:`tall_jax.configs.MODEL_PRESETS` plus config overrides; its name
is the folder it trains into, so a variant's meaning must never change under its name (the study
refuses a folder whose recorded settings differ). ``tune`` variants are trained for the first seed
only: they choose a hyper-parameter (the routing gate's temperature) on the validation score, and
the chosen value is then a variant of its own with every seed. ``side`` variants are also trained
for the first seed only, but stand in the main tables: extra questions that one seed has already
answered far outside the seed noise (a second routing combination, the train-item router's LMoE),
so the 2-core budget goes to the variants the study must settle.

A variant with a ``trunk`` differs from that variant only in what the adaptive weights do after the
gap (w = 1 for epochs 1..T, :data:`AFTER_GAP_FIELDS`; an LMoE is a TALL whose weights stay 1), so
their first T epochs are the same bit for bit: the study trains them once, in the trunk, and starts
the variant from the trunk's checkpoint of epoch T (:func:`tall_jax.state.fork_checkpoint`).
"""
from __future__ import annotations

import dataclasses
from typing import Any

from tall_jax.configs import DATASET_PRESETS, MODEL_PRESETS, PRESET_ALPHA_SCALE, TALLConfig, make_config

# Temperatures of the routing gate tried on the first seed (selected on validation NDCG).
ROUTE_TEMPERATURES = (0.3, 0.1, 0.03)
ROUTE_TEMPERATURE = 0.1  # the one the multi-seed "route" variants use
WEIGHT_CAP = 10.0
TIGHT_WEIGHT_CAP = 3.0
# Config fields read only by the adaptive weights of epochs t > gap (tall_jax.steps.begin_epoch), and
# the weight modes that keep w = 1 through epoch T ("wl" weights from epoch 1 on).
AFTER_GAP_FIELDS = ("alpha", "kkt_mode", "weight_per_item", "weight_cap")
ONES_UNTIL_GAP = ("none", "loss_change", "raw_loss")


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    model: str
    overrides: tuple[tuple[str, Any], ...]  # config field -> value (hashable)
    about: str  # one line: what it changes and the question it answers
    tune: bool = False  # first seed only (a hyper-parameter sweep)
    trunk: str = ""  # the variant whose first `gap` epochs this one shares (checked by fork_epoch)
    side: bool = False  # first seed only, shown in the main tables

    @property
    def first_seed_only(self) -> bool:
        return self.tune or self.side

    def capped(self, max_epochs: int) -> "Variant":
        """This variant with at most ``max_epochs`` epochs (a short trial)."""
        overrides = dict(self.overrides, max_epochs=max_epochs)
        return dataclasses.replace(self, overrides=tuple(sorted(overrides.items())))

    def overrides_for(self, n_experts: int) -> dict[str, Any]:
        """The config overrides of this variant at E = ``n_experts`` (E applies to mixtures only)."""
        extra = dict(self.overrides)
        if MODEL_PRESETS[self.model].get("n_experts") != 1:
            extra.setdefault("n_experts", n_experts)
        return extra

    def config(self, dataset: str, n_experts: int, seed: int) -> TALLConfig:
        """The resolved configuration of this variant."""
        return make_config(dataset, self.model, seed=seed, **self.overrides_for(n_experts))

    def fork_epoch(self, trunk: "Variant", dataset: str, n_experts: int) -> int:
        """The epoch T after which this variant leaves its ``trunk``: the gap, checked to be the
        only place the two differ (ValueError otherwise)."""
        mine, theirs = self.config(dataset, n_experts, 0), trunk.config(dataset, n_experts, 0)
        differ = [f for f in mine.to_dict() if getattr(mine, f) != getattr(theirs, f)]
        allowed = set(AFTER_GAP_FIELDS) | {"model", "adaptive"}
        ones = mine.adaptive in ONES_UNTIL_GAP and theirs.adaptive in ONES_UNTIL_GAP
        if set(differ) - allowed or not ones or mine.gap < 1:
            raise ValueError(f"variant {self.name!r} cannot start from {trunk.name!r}: they differ in "
                             f"{', '.join(differ) or 'nothing'} (only the model's weight mode among "
                             f"{', '.join(ONES_UNTIL_GAP)} and {', '.join(AFTER_GAP_FIELDS)} may differ, "
                             "with a gap of at least one epoch)")
        return mine.gap


def _v(name: str, model: str, about: str, tune: bool = False, trunk: str = "", side: bool = False,
       **overrides: Any) -> Variant:
    return Variant(name, model, tuple(sorted(overrides.items())), about, tune, trunk, side)


def ablation_variants(dataset: str, n_experts: int) -> list[Variant]:
    """Every variant of the study, controls first. Those needing the dataset's preset (the mixture's
    weight decay reg / E) read it from :data:`DATASET_PRESETS`."""
    reg_over_e = DATASET_PRESETS[dataset]["reg"] / n_experts
    route = dict(gate="route", gate_temperature=ROUTE_TEMPERATURE)
    route_train = dict(gate="route_train", gate_temperature=ROUTE_TEMPERATURE)
    variants = [
        _v("multvae", "multvae", "one MultVAE: the control without experts"),
        _v("multvae_mix_reg", "multvae",
           "one MultVAE with the mixture's regularisation: KL summed over users, weight decay reg/E "
           "— does a single VAE with TALL's regularisation get LMoE's gain?",
           kl_reduction="sum_users", reg=reg_over_e),
        _v("lmoe", "lmoe", "loss-driven gate, no adaptive weights", trunk="tall"),
        _v("lmoe_uniform", "uniform_moe", "LMoE with a uniform gate: is the loss gate an average?",
           trunk="tall_uniform"),
        _v("moe", "moe", "a learned MLP gate (the paper's MoE ablation)"),
        _v("tall", "tall", "faithful TALL: loss gate + loss-change adaptive weights (gap, window)"),
        _v("tall_per_item", "tall", "TALL with the weight signal per validation item, l_u/|V_u|",
           trunk="tall", weight_per_item=True),
        _v("tall_per_item_matched", "tall",
           f"the per-item signal at TALL's strength: alpha x {PRESET_ALPHA_SCALE['tall_plus']:g}, so that the weights "
           "spread as TALL's do at the first weighted epoch (per item, the signal is ~10x narrower): "
           "is the per-item signal's effect its definition or its weaker weights? (the `tall_plus` preset)",
           trunk="tall", weight_per_item=True,
           alpha=make_config(dataset, "tall_plus").alpha),  # the preset's alpha (configs.PRESET_ALPHA_SCALE)
        _v("tall_exact_kkt", "tall", "TALL with the exact KKT solution (simplex projection)",
           trunk="tall", kkt_mode="exact"),
        _v("tall_cap", "tall", f"TALL with the weights capped at {WEIGHT_CAP:g} and rescaled to mean 1",
           trunk="tall", weight_cap=WEIGHT_CAP),
        _v("tall_cap3", "tall", f"TALL with the weights capped at {TIGHT_WEIGHT_CAP:g} and rescaled to mean 1: "
           "a tighter cap, between LMoE (w = 1) and `tall_cap`", trunk="tall", weight_cap=TIGHT_WEIGHT_CAP),
        _v("lmoe_route", "lmoe", f"LMoE with a gate that routes: softmax of -l_uk/|V_u| / {ROUTE_TEMPERATURE:g}",
           trunk="tall_route", **route),
        _v("tall_route", "tall", "TALL with the routing gate", **route),
        _v("tall_route_item_cap", "tall",
           "the combination: routing gate, per-item weight signal, capped weights",
           trunk="tall_route", side=True, weight_per_item=True, weight_cap=WEIGHT_CAP, **route),
        _v("tall_uniform", "tall", "TALL's weights on an exactly uniform mixture: does the loss gate "
           "(uniform to five decimals) add anything? (The uniform mixture also skips its validation-loss pass.)",
           gate="uniform"),
        _v("tall_uniform_item", "tall", "the uniform mixture with the per-item weight signal",
           trunk="tall_uniform", gate="uniform", weight_per_item=True),
        _v("tall_uniform_item_cap", "tall",
           "the combination of the steadiest changes: uniform mixture, per-item weight signal, capped "
           "weights (the cap never binds: the per-item weights stay below 1.5, so seeds 0-2 equalled "
           "`tall_uniform_item` to the last digit)",
           trunk="tall_uniform", side=True, gate="uniform", weight_per_item=True, weight_cap=WEIGHT_CAP),
        _v("lmoe_route_train", "lmoe", "LMoE with a gate that routes on the train items: softmax of each "
           f"expert's -NLL per train item / {ROUTE_TEMPERATURE:g} (no validation item in the gate)",
           trunk="tall_route_train", side=True, **route_train),
        _v("tall_route_train", "tall", "TALL with the train-item routing gate", **route_train),
    ]
    for gate, prefix in (("route", "lmoe_route"), ("route_train", "lmoe_route_train")):
        for tau in ROUTE_TEMPERATURES:
            if tau != ROUTE_TEMPERATURE:
                variants.append(_v(f"{prefix}_t{tau:g}", "lmoe",
                                   f"temperature sweep of the {gate} gate (tau = {tau:g}; first seed)",
                                   tune=True, gate=gate, gate_temperature=tau))
    return variants


def precision_variants() -> list[Variant]:
    """bf16 inputs with f32 accumulation against the f32 default, for LMoE and TALL (speed issue)."""
    return [_v("lmoe_bf16", "lmoe", "LMoE with bf16 matmul inputs (f32 accumulation)",
               trunk="tall_bf16", matmul_precision="bfloat16"),
            _v("tall_bf16", "tall", "TALL with bf16 matmul inputs (f32 accumulation)",
               matmul_precision="bfloat16")]


def precision_study(dataset: str, n_experts: int) -> list[Variant]:
    """LMoE and TALL in f32 (shared with the ablations) and in bf16."""
    shared = [v for v in ablation_variants(dataset, n_experts) if v.name in ("lmoe", "tall")]
    return shared + precision_variants()


STUDIES = {"ablations": ablation_variants, "precision": precision_study}
# the variants whose per-epoch curves a study's page draws (a legible few)
CURVES = {"ablations": ("tall", "lmoe", "tall_cap", "tall_cap3", "tall_per_item", "tall_uniform_item"),
          "precision": ("tall", "tall_bf16", "lmoe", "lmoe_bf16")}


def select(variants: list[Variant], names: list[str] | None) -> list[Variant]:
    """The variants named in ``names`` (all when None), in the study's order."""
    if not names:
        return variants
    known = {v.name: v for v in variants}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return [v for v in variants if v.name in names]
