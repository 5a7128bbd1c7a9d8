"""A finished run as the pages read it: :class:`RunRecord`, one ``results.json`` (its test summary,
seed, split, variant, training seconds, chosen hyper-parameters, E) with its per-user file beside it,
and :func:`collect_runs`, every one below a folder. What a model's name says about it (a mixture of
MultVAE experts? with how many experts?) is here too: a record's E is read from it.

Read by the pages built from runs (:mod:`tall_jax.report` with :mod:`tall_jax.table2`,
:mod:`tall_jax.niche`).
"""
from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tall_jax.blend import BLENDS as BLEND_PARTS
from tall_jax.configs import MODEL_PRESETS, TALLConfig
from tall_jax.metrics import RankingResult, RankingSummary
from tall_jax.paper import COLUMNS

# blends of a MultVAE-family model and the EASE family (tall_jax.blend): model -> its neural part
BLENDS = {model: neural for model, (neural, _closed) in BLEND_PARTS.items()}


def is_mixture(model: str) -> bool:
    """Whether ``model`` is a mixture of MultVAE experts (a preset with a gate; not MultVAE or WL), or a
    blend whose neural part is one."""
    preset = MODEL_PRESETS.get(BLENDS.get(model, model))
    return (preset is not None and preset.get("gate", TALLConfig.gate) != "none"
            and preset.get("n_experts", TALLConfig.n_experts) != 1)


def n_experts(model: str, variant: str) -> int:
    """E of a row: the ``n_experts=`` of its variant, else its model's preset (1 for MultVAE, WL,
    the local baselines, whose models are single MultVAEs, and the closed-form models)."""
    for part in variant.split(", "):
        key, _, value = part.partition("=")
        if key == "n_experts":
            return int(value)
    if not is_mixture(model):
        return 1
    return int(MODEL_PRESETS[model].get("n_experts", TALLConfig.n_experts))


REQUIRED_KEYS = ("dataset", "model", "seed", "test")


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """One results.json: where it came from and its test summary."""

    path: Path
    dataset: str
    model: str
    seed: int
    split: str
    test: RankingSummary
    variant: str = ""  # how the run departs from the faithful configuration, e.g. "n_experts=10"
    users: tuple[int, ...] | None = None  # the evaluated users when the run covered only a subset
    seconds: float | None = None  # training time: see :func:`run_seconds`
    # the hyper-parameters a model chose on validation (results.json "chosen_hp"; closed-form models)
    chosen_hp: tuple[tuple[str, Any], ...] | None = None
    settings_experts: int | None = None  # E as its settings record it (mixture models)

    @property
    def experts(self) -> int | None:
        """E of a mixture of experts (its recorded settings, else :func:`n_experts`);
        None for a single model (MultVAE, WL, the local and closed-form baselines)."""
        if not is_mixture(self.model):
            return None
        return self.settings_experts or n_experts(self.model, self.variant)

    @property
    def name(self) -> str:
        """The table's row name: the model, with its variant in brackets when it has one."""
        return f"{self.model} [{self.variant}]" if self.variant else self.model

    def per_user(self, metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(users, values, groups) from the run's ``per_user_test.npz``: the user ids (all users, or a
        subset run's evaluated users in their file's order), each one's ``metric`` (NaN: undefined)
        and mainstream group index."""
        path = self.path.parent / "per_user_test.npz"
        if not path.exists():
            raise ValueError(f"{path}: per-user results missing")
        res = RankingResult.load_per_user(path)
        if metric not in res.per_user:
            raise ValueError(f"{path}: no per-user {metric!r}")
        if res.groups is None:
            raise ValueError(f"{path}: no per-user groups")
        values = np.asarray(res.per_user[metric], np.float64)
        users = np.arange(len(values)) if self.users is None else np.asarray(self.users, np.int64)
        if len(users) != len(values):
            raise ValueError(f"{path}: {len(values)} users, but the run evaluated {len(users)}")
        return users, values, np.asarray(res.groups, np.int64)

    def values_on(self, users: Sequence[int], metric: str) -> tuple[float, ...]:
        """The run's mean ``metric`` over ``users`` only, per column (overall, then each group's share
        of them), from its per-user file."""
        path = self.path.parent / "per_user_test.npz"
        if not path.exists():
            raise ValueError(f"{path}: needed to compare with a user-subset run, but missing")
        res = RankingResult.load_per_user(path)
        idx = np.asarray(users)
        if idx.size and idx.max() >= res.n_users:
            raise ValueError(f"{path}: has {res.n_users} users; the subset needs user {idx.max()}")
        sub = RankingResult({k: v[idx] for k, v in res.per_user.items()},
                            None if res.groups is None else res.groups[idx])
        by_group = sub.by_group()
        values = []
        for column in COLUMNS:
            src = sub.overall() if column == "overall" else by_group.get(column, {})
            if metric not in src:
                raise ValueError(f"{path}: no per-user {metric!r} for column {column!r}")
            values.append(src[metric])
        return tuple(values)

    def value(self, metric: str, column: str) -> float:
        """The run's mean ``metric`` over all users (``column="overall"``) or over one group."""
        src = self.test.overall if column == "overall" else self.test.groups.get(column)
        if src is None or metric not in src:
            raise ValueError(f"{self.path}: test results have no {metric!r} for column {column!r}")
        return src[metric]


def run_seconds(d: dict[str, Any]) -> float | None:
    """A run's training time from its results: the sum of its epochs' seconds (training and
    evaluation; a resumed or forked run counts every epoch of its history, start-up and compilation
    not), else its wall time (runs without an epoch history: the local baselines); None without
    either. A blend counts its neural part by its epochs too (``neural.epoch_seconds``, so one that
    reused a finished neural checkpoint still counts that training) and the rest by wall time."""
    history = d.get("history")
    if isinstance(history, list) and history and all(isinstance(h, dict) and "seconds" in h for h in history):
        return float(sum(float(h["seconds"]) for h in history))
    wall = d.get("wall_time_s")
    neural = d.get("neural")
    if isinstance(neural, dict) and isinstance(neural.get("epoch_seconds"), (int, float)) \
            and isinstance(wall, (int, float)) and isinstance(d.get("neural_seconds"), (int, float)):
        return float(wall) - float(d["neural_seconds"]) + float(neural["epoch_seconds"])
    return float(wall) if isinstance(wall, (int, float)) else None


def _chosen_hp(value: Any) -> tuple[tuple[str, Any], ...] | None:
    """results.json's "chosen_hp" as (name, value) pairs in the file's order (a non-mapping: one pair
    named "hp"); None without one."""
    if value is None or value == {}:
        return None
    def plain(v: Any) -> Any:  # hashable, for comparing the seeds' choices
        return v if v is None or isinstance(v, (str, int, float, bool)) else json.dumps(v, sort_keys=True)

    if isinstance(value, dict):
        return tuple((str(k), plain(v)) for k, v in value.items())
    return (("hp", plain(value)),)


def load_run(path: Path) -> RunRecord:
    """Parse one results.json; raises ValueError naming the file and the problem."""
    try:
        d = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read results JSON: {e}") from e
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(d).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in d]
    if missing:
        raise ValueError(f"{path}: missing key(s) {missing}")
    try:
        test = RankingSummary.from_json(d["test"])
    except (ValueError, TypeError, AttributeError) as e:
        raise ValueError(f"{path}: malformed 'test' entry: {e}") from e
    try:
        seed = int(d["seed"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: 'seed' must be an integer, got {d['seed']!r}") from e
    users = None
    if d.get("evaluated_users", "all") != "all":
        users_path = path.parent / "evaluated_users.npy"
        if not users_path.exists():
            raise ValueError(f"{path}: evaluated a user subset but {users_path.name} is missing beside it")
        users = tuple(int(u) for u in np.load(users_path))
    settings = d.get("settings")
    experts = settings.get("n_experts") if isinstance(settings, dict) else None
    return RunRecord(path, str(d["dataset"]), str(d["model"]), seed, str(d.get("split", "?")), test,
                     str(d.get("variant", "") or ""), users, run_seconds(d), _chosen_hp(d.get("chosen_hp")),
                     experts if isinstance(experts, int) and not isinstance(experts, bool) else None)


def collect_runs(root: Path, skip_malformed: bool = False) -> list[RunRecord]:
    """Every results.json below ``root`` (sorted by path)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"runs folder not found: {root}")
    paths = sorted(root.rglob("results.json"))
    if not paths:
        raise FileNotFoundError(f"no results.json found under {root}")
    runs = []
    for p in paths:
        try:
            runs.append(load_run(p))
        except ValueError as e:
            if not skip_malformed:
                raise
            print(f"warning: skipped {e}", file=sys.stderr)
    seen: dict[tuple, Path] = {}
    for r in runs:
        key = (r.dataset, r.name, r.seed, r.split)
        if key in seen:
            print(f"warning: {r.path} repeats dataset/model/seed/split of {seen[key]}; both are counted",
                  file=sys.stderr)
        seen.setdefault(key, r.path)
    return runs
