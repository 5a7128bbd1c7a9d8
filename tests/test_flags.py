"""The model flags of tall-jax-train are made from the config fields (tall_jax.flags): every flag maps
to a config field, every field the command line may set has its flag, and the generated options
parse, check and describe themselves as the hand-written ones did."""
from __future__ import annotations

import argparse
import dataclasses

import pytest

from tall_jax import flags
from tall_jax.commands import train as train_command

# The flag table as it was written by hand before the flags were generated: argparse attribute -> field.
HAND_WRITTEN = {
    "experts": "n_experts", "epochs": "max_epochs", "batch_size": "batch_size", "lr": "lr",
    "reg": "reg", "gap": "gap", "alpha": "alpha", "patience": "patience",
    "kkt_mode": "kkt_mode", "gate_temperature": "gate_temperature", "kl_reduction": "kl_reduction",
    "wl_gamma": "wl_gamma", "dropout": "dropout", "expert_chunk": "expert_chunk",
    "matmul_precision": "matmul_precision", "forward_impl": "forward_impl", "encoder": "encoder",
    "ks": "ks", "gate": "gate", "weight_cap": "weight_cap", "gate_stop_gradient": "gate_stop_gradient",
    "weight_per_item": "weight_per_item",
    "local_models": "n_local", "anchors": "n_anchors", "users": "users", "train_h": "train_h",
    "test_h": "test_h", "chunk": "chunk", "ft_epochs": "ft_epochs",
    "hp": "hp", "dtype": "dtype", "beta": "beta", "blend_by": "blend_by", "kkt_signal": "kkt_signal",
}


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions if a.option_strings}


def test_every_flag_maps_to_a_config_field_and_every_field_has_a_flag_or_is_listed():
    assert train_command.FLAG_FIELDS == HAND_WRITTEN
    options = _options(train_command.build_parser())
    for dest, field in train_command.FLAG_FIELDS.items():
        assert dest in options, dest
        owners = [c for c in train_command.CONFIG_CLASSES if field in flags.declared(c)]
        assert owners, f"--{dest}: no config class declares {field}"
    for config_class in train_command.CONFIG_CLASSES:
        names = [f.name for f in dataclasses.fields(config_class)]
        unflagged = set(train_command.UNFLAGGED[config_class])
        assert unflagged <= set(names), unflagged - set(names)  # no stale name in the list
        for name in names:
            has_flag = name in flags.declared(config_class)
            assert has_flag != (name in unflagged), (
                f"{config_class.__name__}.{name}: give it a flag (tall_jax.flags.flag) or list it in "
                f"UNFLAGGED, not {'both' if has_flag else 'neither'}")


def test_a_flag_shared_by_classes_joins_their_help_and_keeps_the_presets():
    options = _options(train_command.build_parser())
    epochs = options["epochs"].help
    assert epochs.startswith("maximum epochs; early stopping decides the end (default: the preset, 10000; "
                             "synthetic 60)")
    assert epochs.endswith("; LOCA: cap on each local model's epochs (default: 10000)")
    assert "(default: the preset, 40; yelp 15, cds 25, synthetic 10, lmoe_lc 0)" in options["gap"].help
    assert options["weight_cap"].help.endswith("(default: the preset, 0.0, 0 = no cap)")
    assert options["experts"].help.endswith("E of the neural part (default: 10)")
    assert options["dtype"].help == "precision of the closed-form solves (default: float32)"
    assert options["gate"].choices == ["loss", "route", "route_train", "uniform", "mlp", "none"]
    assert options["gate_stop_gradient"].default is None and options["gate_stop_gradient"].nargs == 0
    assert (options["ks"].nargs, options["ks"].metavar, options["hp"].metavar) == ("+", "K", "NAME=VALUE")


def test_generated_flags_parse_into_the_config_fields():
    args = train_command.parse_args(["--experts", "3", "--hp", "lambda=800", "--hp", "k=5", "--ks", "10", "50",
                                     "--gate-stop-gradient", "--beta", "0.25", "--local-models", "4"])
    assert train_command._given(args) == {
        "n_experts": 3, "hp": (("lambda", 800.0), ("k", 5.0)), "ks": (10, 50), "gate_stop_gradient": True,
        "beta": 0.25, "n_local": 4}
    assert train_command._given(train_command.parse_args([])) == {}  # unset: every preset stays


@pytest.mark.parametrize("argv, needle", [
    (["--hp", "lambda"], "argument --hp: hyper-parameter 'lambda': expected NAME=VALUE"),
    (["--beta", "nan"], "argument --beta: must be a finite number, got 'nan'"),
    (["--beta", "half"], "argument --beta: expected a number, got 'half'"),
    (["--experts", "ten"], "argument --experts: invalid int value: 'ten'"),
    (["--kkt-mode", "exactly"], "argument --kkt-mode: invalid choice: 'exactly'"),
])
def test_a_bad_value_is_one_error_line(capsys, argv, needle):
    with pytest.raises(SystemExit) as e:
        train_command.parse_args(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and needle in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_two_classes_declaring_one_flag_differently_is_an_error():
    @dataclasses.dataclass(frozen=True)
    class A:
        n_experts: int = flags.flag(1, "E", name="--experts")

    @dataclasses.dataclass(frozen=True)
    class B:
        experts: float = flags.flag(1.0, "E again")

    parser = argparse.ArgumentParser()
    with pytest.raises(TypeError, match="--experts"):
        flags.add_flags([(A, parser, flags.plain_default), (B, parser, flags.plain_default)])

    @dataclasses.dataclass(frozen=True)
    class C:
        weights: dict = flags.flag(None, "no command-line type")

    with pytest.raises(TypeError, match="parse function"):
        flags.add_flags([(C, parser, flags.plain_default)])
