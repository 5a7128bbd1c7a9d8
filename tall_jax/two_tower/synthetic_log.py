"""A large synthetic log in the format of your own logs (docs/two_tower.md#your-own-logs), written in
chunks, from the world model of :mod:`tall_jax.two_tower.synthetic` (territories of very different
sizes in groups, global and local titles, group and territory taste shifts, daily drift).

    python -m tall_jax.two_tower.synthetic --out DIR [--examples 10000000 --territories 200 --titles 600
                                                      --days 8 --title-dim 768 --seed 0 --format csv]

writes ``DIR/log/day-<date>.csv`` (or ``.parquet``; columns user, title, territory, day, label),
``DIR/titles.npy`` + ``DIR/titles.ids`` (the ``--title-features`` format), ``DIR/users.npy`` +
``DIR/users.ids`` (the ``--user-features`` format: the world's user taste, activity and territory,
projected to ``user_dim`` with noise, as the built-in synthetic data's user features), ``DIR/groups.csv``
(the world's groups, the ``--groups`` format) and ``DIR/info.json`` (the counts).

Each example is an event: a user (drawn with weight ``exp(activity / 4)``, so active users come back
more often) on a day; its title is drawn from the user's propensities that day (``synthetic._propensity``,
Gumbel-max) with label 1, followed by ``alpha`` titles drawn uniformly from the user's territory's
titles with label 0. A positive may repeat on a later day.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import sys
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from tall_jax.cli import Parser
from tall_jax.files import atomic_write_text
from tall_jax.two_tower.shards import remove_tree, replace_dir
from tall_jax.two_tower.synthetic import SyntheticConfig, _project, _propensity, _synthetic_world

GROUP_SCALE = (1.0, 0.8, 0.9, 0.7)
FIRST_DAY = dt.date(2024, 1, 1)
# users are drawn with weight exp(0.25 * activity logit): an active user comes back about five times as
# often as another (the raw logits, 6.5 apart, would leave almost only active users in the log)
ACTIVITY_TEMPERATURE = 0.25


@dataclasses.dataclass(frozen=True)
class LogSpec:
    """Sizes of the generated log."""

    examples: int = 10_000_000
    territories: int = 200
    titles: int = 600
    days: int = 8
    title_dim: int = 768
    user_dim: int = 32
    seed: int = 0
    alpha: int = 4  # label-0 examples per positive
    users_per_event: float = 0.2  # user universe = this x number of events
    chunk: int = 8192  # events per chunk


def world_config(spec: LogSpec) -> SyntheticConfig:
    """The synthetic world of ``spec``: 4 groups of ``territories / 4`` territories whose sizes fall
    geometrically (the largest 30 times the smallest), two thirds of the titles local."""
    g_n = len(GROUP_SCALE)
    if spec.territories % g_n or spec.territories < g_n:
        raise ValueError(f"--territories must be a positive multiple of {g_n}, got {spec.territories}")
    per = spec.territories // g_n
    local = max(1, (2 * spec.titles // 3) // spec.territories)
    if spec.titles - local * spec.territories < 1:
        raise ValueError(f"--titles {spec.titles}: need more than {local * spec.territories} (one local title per territory, some global)")
    if spec.days < 2 or spec.examples < (1 + spec.alpha) * spec.days:
        raise ValueError("need --days >= 2 and at least (1 + alpha) examples per day")
    events = spec.examples // (1 + spec.alpha)
    return dataclasses.replace(
        SyntheticConfig(), n_users=max(100, int(spec.users_per_event * events)),
        group_size_pattern=tuple(float(x) for x in 30.0 ** (-np.arange(per) / max(per - 1, 1))),
        group_scale=GROUP_SCALE, n_global_titles=spec.titles - local * spec.territories,
        n_local_per_territory=local, n_train_days=spec.days - 1, n_test_days=1)


def _names(w, cfg: SyntheticConfig) -> tuple[list[str], list[str]]:
    terr = [f"T{t + 1:03d}" for t in range(w["t_n"])]
    titles = [f"g{i + 1}" if h < 0 else f"{terr[h]}-l{(i - cfg.n_global_titles) % cfg.n_local_per_territory + 1}"
              for i, h in enumerate(w["home_I"])]
    return terr, titles


class _DayFile:
    """One day's file of the log, written chunk by chunk (CSV text or Parquet row groups)."""

    def __init__(self, path: Path, fmt: str, terr: list[str], titles: list[str], day: str):
        self.fmt, self.day = fmt, day
        self.terr, self.titles = np.asarray(terr, dtype=object), np.asarray(titles, dtype=object)
        if fmt == "parquet":
            # why: pyarrow is the optional extra "parquet"; only --format parquet needs it
            import pyarrow as pa
            import pyarrow.parquet as pq  # why: as above

            self.pa = pa
            self.schema = pa.schema([("user", pa.int64()), ("title", pa.string()), ("territory", pa.string()),
                                     ("day", pa.string()), ("label", pa.int64())])
            self.f = pq.ParquetWriter(path, self.schema)
        else:
            self.f = open(path, "w", encoding="utf-8", newline="")
            self.f.write("user,title,territory,day,label\n")

    def write(self, user: np.ndarray, title: np.ndarray, territory: np.ndarray, label: np.ndarray) -> None:
        t, r = self.titles[title], self.terr[territory]
        if self.fmt == "parquet":
            self.f.write_table(self.pa.table({"user": user, "title": t.astype(str), "territory": r.astype(str),
                                              "day": [self.day] * len(user), "label": label}, schema=self.schema))
        else:
            self.f.write("".join(f"{u},{a},{b},{self.day},{y}\n"
                                 for u, a, b, y in zip(user.tolist(), t, r, label.tolist())))

    def close(self) -> None:
        self.f.close()


def generate_log(spec: LogSpec, out: str | Path, *, fmt: str = "csv", progress: bool = True) -> dict:
    """Write the log of ``spec`` into ``out`` (module docstring); returns the counts (``info.json``).

    Memory: one chunk of ``spec.chunk`` events at a time plus the world."""
    cfg = world_config(spec)
    rng = np.random.default_rng(spec.seed)
    w = _synthetic_world(cfg, rng)
    terr, titles = _names(w, cfg)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f"log.tmp{os.getpid()}"
    remove_tree(tmp)
    tmp.mkdir()
    weight_U = np.exp(ACTIVITY_TEMPERATURE * (w["act_U"] - w["act_U"].max()))
    cum_U = np.cumsum(weight_U / weight_U.sum())
    avail = [np.nonzero(r)[0] for r in w["available_TxI"]]
    counts_T = np.array([len(a) for a in avail])
    items_TxA = np.zeros((w["t_n"], counts_T.max()), np.int64)
    for t, a in enumerate(avail):
        items_TxA[t, : len(a)] = a
    per = 1 + spec.alpha
    events_D = np.diff(np.linspace(0, spec.examples // per, spec.days + 1).astype(np.int64))
    bar = tqdm(total=int(events_D.sum()) * per, unit="ex", unit_scale=True, desc="writing the log", disable=not progress)
    try:
        for d, n_events in enumerate(events_D):
            day = (FIRST_DAY + dt.timedelta(days=d)).isoformat()
            out_day = _DayFile(tmp / f"day-{day}.{fmt}", fmt, terr, titles, day)
            for lo in range(0, int(n_events), spec.chunk):
                m = min(spec.chunk, int(n_events) - lo)
                users = np.minimum(np.searchsorted(cum_U, rng.random(m)), cfg.n_users - 1)
                logp = np.log(np.maximum(_propensity(w, cfg, users, d), 1e-30))
                pos = np.argmax(logp + rng.gumbel(size=logp.shape), axis=1)
                t_u = w["user_territory"][users]
                neg = items_TxA[t_u[:, None], (rng.random((m, spec.alpha)) * counts_T[t_u][:, None]).astype(np.int64)]
                out_day.write(np.repeat(users + 1, per), np.c_[pos, neg].ravel(), np.repeat(t_u, per),
                              np.tile(np.r_[1, np.zeros(spec.alpha, np.int64)], m))
                bar.update(m * per)
            out_day.close()
        bar.close()
        replace_dir(tmp, out / "log")
    except BaseException:
        remove_tree(tmp)
        raise
    home_emb = np.where(w["home_I"][:, None] >= 0, w["terr_emb_TxK"][np.maximum(w["home_I"], 0)], 0.0)
    item_x = _project(np.c_[w["v_IxK"], w["b_I"], w["home_I"] >= 0, home_emb], spec.title_dim, cfg.feature_noise, rng)
    np.save(out / "titles.npy", item_x)
    atomic_write_text(out / "titles.ids", "".join(f"{t}\n" for t in titles))
    # the paper's user tower reads features of the user's history, not an id: the world's taste, activity
    # and territory, observed with noise (users are written as their id + 1, as in the log)
    user_x = _project(np.c_[w["z_UxK"], w["act_U"], w["terr_emb_TxK"][w["user_territory"]]], spec.user_dim,
                      cfg.feature_noise, rng)
    np.save(out / "users.npy", user_x)
    atomic_write_text(out / "users.ids", "".join(f"{u}\n" for u in range(1, cfg.n_users + 1)))
    atomic_write_text(out / "groups.csv", "territory,group\n" + "".join(
        f"{t},G{g + 1}\n" for t, g in zip(terr, w["territory_group"])))
    info = {"spec": dataclasses.asdict(spec), "format": fmt, "examples": int(events_D.sum()) * per,
            "positives": int(events_D.sum()), "days": spec.days, "territories": w["t_n"], "titles": w["i_n"],
            "user_universe": cfg.n_users, "global_titles": cfg.n_global_titles,
            "local_titles_per_territory": cfg.n_local_per_territory,
            "territory_size_weight": np.outer(cfg.group_scale, cfg.group_size_pattern).ravel().round(4).tolist()}
    atomic_write_text(out / "info.json", json.dumps(info, indent=1))
    return info


def main(argv=None) -> int:
    p = Parser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--out", required=True,
                   help="output folder (log/, titles.npy, titles.ids, users.npy, users.ids, groups.csv, info.json)")
    for name, default in (("examples", 10_000_000), ("territories", 200), ("titles", 600), ("days", 8),
                          ("title-dim", 768), ("user-dim", 32), ("seed", 0)):
        p.add_argument(f"--{name}", type=int, default=default, help=f"(default: {default})")
    p.add_argument("--format", choices=("csv", "parquet"), default="csv", help="file type of the log (default: csv)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    if min(a.examples, a.titles, a.title_dim, a.user_dim) < 1 or a.seed < 0:
        p.error("--examples, --titles, --title-dim and --user-dim must be >= 1, --seed >= 0")
    spec = LogSpec(examples=a.examples, territories=a.territories, titles=a.titles, days=a.days,
                   title_dim=a.title_dim, user_dim=a.user_dim, seed=a.seed)
    try:
        info = generate_log(spec, a.out, fmt=a.format, progress=not a.no_progress)
    except (ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {info['examples']} examples over {info['days']} days into {Path(a.out) / 'log'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["LogSpec", "generate_log", "world_config", "main"]
