"""tall_jax.configs: the presets a model name stands for."""
import pytest

from tall_jax.configs import DATASET_PRESETS, make_config
from tall_jax.study import variants as V


@pytest.mark.parametrize("dataset", ["ml-1m", "yelp", "cds", "synthetic"])
def test_tall_plus_is_tall_with_the_per_item_signal_at_tall_strength(dataset):
    plus, tall = make_config(dataset, "tall_plus"), make_config(dataset, "tall")
    differ = {k for k, v in plus.to_dict().items() if getattr(tall, k) != v}
    assert differ == {"model", "weight_per_item", "alpha"} and plus.weight_per_item
    assert plus.alpha == pytest.approx(DATASET_PRESETS[dataset]["alpha"] * 0.105, abs=1e-6)
    assert make_config(dataset, "tall_plus", alpha=0.5).alpha == 0.5  # an explicit alpha wins


def test_tall_plus_is_the_study_variant_it_came_from():
    (v,) = V.select(V.ablation_variants("ml-1m", 10), ["tall_per_item_matched"])
    mine = make_config("ml-1m", "tall_plus", n_experts=10).to_dict()
    theirs = v.config("ml-1m", 10, 0).to_dict()
    assert {k for k in mine if mine[k] != theirs[k]} == {"model"}


def _float_fields():
    import dataclasses

    from tall_jax.configs import TALLConfig

    return [f.name for f in dataclasses.fields(TALLConfig)
            if isinstance(getattr(TALLConfig(), f.name), float) or f.name == "constant_beta"]


@pytest.mark.parametrize("field", _float_fields())
@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_every_float_field_must_be_finite(field, value):
    from tall_jax.configs import TALLConfig

    with pytest.raises(ValueError, match=field):
        TALLConfig(**{field: value})


@pytest.mark.parametrize("field", ["n_experts", "latent", "batch_size", "window", "patience", "max_epochs",
                                   "total_anneal_steps", "gap", "gate_hidden", "seed"])
def test_integer_fields_reject_infinity(field):
    from tall_jax.configs import TALLConfig

    with pytest.raises(ValueError, match=field):
        TALLConfig(**{field: float("inf")})


@pytest.mark.parametrize("field, value", [("alpha", 0.0), ("gate_temperature", 0.0), ("weight_cap", -1.0),
                                          ("anneal_cap", -0.1), ("dropout", 1.0), ("lr", 0.0),
                                          ("constant_beta", -1.0)])
def test_float_fields_out_of_range(field, value):
    from tall_jax.configs import TALLConfig

    with pytest.raises(ValueError, match=field):
        TALLConfig(**{field: value})
