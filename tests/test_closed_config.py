"""ClosedConfig: hyper-parameter parsing and checking, grids, field ownership, clear errors."""
from __future__ import annotations

import json
import math

import pytest

from tall_jax.closed.config import (
    CLOSED_MODELS,
    EXECUTION_FIELDS,
    GRIDS,
    ClosedConfig,
    grid_points,
    make_closed_config,
    parse_hp,
    reads,
)


def test_parse_hp():
    assert parse_hp("lambda=800") == ("lambda", 800.0)
    assert parse_hp(" k = 50 ") == ("k", 50.0)
    for bad, msg in (("lambda", "NAME=VALUE"), ("=3", "NAME=VALUE"), ("lambda=big", "not a number")):
        with pytest.raises(ValueError, match=msg):
            parse_hp(bad)


def test_hp_forms_are_normalised_and_sorted():
    a = make_closed_config("ease_wl", hp={"lambda": 400, "gamma": 1})
    b = make_closed_config("ease_wl", hp=["gamma=1", "lambda=400"])
    c = make_closed_config("ease_wl", hp="lambda=400,gamma=1.0")
    assert a == b == c and a.hp == (("gamma", 1.0), ("lambda", 400.0))
    assert ClosedConfig(model="ease", hp=[["lambda", "50"]]).hp == (("lambda", 50.0),)
    d = a.to_dict()
    assert json.loads(json.dumps(d))["hp"] == [["gamma", 1.0], ["lambda", 400.0]]
    assert a.replace(seed=3).seed == 3 and a.replace(seed=3).hp == a.hp


@pytest.mark.parametrize("model,hp,msg", [
    ("ease", {"k": 5}, "unknown hyper-parameter 'k' for ease; known: lambda"),
    ("pop", {"lambda": 5}, "hp: not read by pop"),
    ("ease", {"lambda": 0}, "must be finite and > 0"),
    ("ease", {"lambda": math.inf}, "must be finite"),
    ("ease", {"lambda": math.nan}, "must be finite"),
    ("itemknn", {"k": 2.5}, "must be an integer"),
    ("itemknn", {"shrink": -1}, ">= 0"),
    ("rp3beta", {"normalize": 2}, "<= 1"),
    ("ease_kkt", {"rounds": 0}, ">= 1"),
    ("ease", {"lambda": "x"}, "not a number"),
    ("ease", ["lambda=1", "lambda=2"], "given twice"),
])
def test_bad_hyper_parameters_raise_clear_errors(model, hp, msg):
    with pytest.raises(ValueError, match=msg.replace("(", r"\(")):
        make_closed_config(model, hp=hp)


def test_bad_fields_raise():
    with pytest.raises(ValueError, match="unknown closed model"):
        make_closed_config("easy")
    with pytest.raises(ValueError, match="unknown closed-model option"):
        make_closed_config("ease", latent_size=3)
    with pytest.raises(ValueError, match="n_local: not read by ease"):
        make_closed_config("ease", n_local=3)
    with pytest.raises(ValueError, match="dtype"):
        ClosedConfig(model="ease", dtype="float16")
    with pytest.raises(ValueError, match="kkt_signal"):
        ClosedConfig(model="ease_kkt", kkt_signal="loss")
    with pytest.raises(ValueError, match="test_h"):
        ClosedConfig(model="loca_ease", test_h=0.0)
    with pytest.raises(ValueError, match="ks"):
        ClosedConfig(ks=(0,))
    with pytest.raises(ValueError, match="pop has none"):
        ClosedConfig(model="pop", hp={"lambda": 5})
    assert make_closed_config("ease", hp=None, dtype=None).hp == ()


def test_grid_points_fix_the_given_hyper_parameters():
    full = grid_points(make_closed_config("ease_kkt"))
    sizes = [len(v) for v in GRIDS["ease_kkt"].values()]
    assert len(full) == math.prod(sizes)
    assert [p["rounds"] for p in full[:3]] == [1.0, 2.0, 3.0]  # the last name varies fastest
    fixed = grid_points(make_closed_config("ease_kkt", hp="lambda=123"))
    assert len(fixed) == len(full) // len(GRIDS["ease_kkt"]["lambda"])
    assert {p["lambda"] for p in fixed} == {123.0}
    assert grid_points(make_closed_config("pop")) == [{}]
    assert grid_points(make_closed_config("ease", hp="lambda=5")) == [{"lambda": 5.0}]


def test_field_ownership_and_execution_fields():
    assert reads("loca_ease", "n_local") and not reads("ease", "n_local")
    assert reads("ease_kkt", "kkt_signal") and not reads("ease_wl", "kkt_signal")
    assert not reads("pop", "hp") and reads("pop", "seed") and reads("pop", "eval_batch")
    assert set(EXECUTION_FIELDS) <= {f for f in ClosedConfig.__dataclass_fields__}
    assert set(GRIDS) == set(CLOSED_MODELS)
