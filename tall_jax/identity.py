"""Run identity: which settings a run folder holds, its default name, and the resume check.

A run's *identity* is its resolved configuration without the seed and the execution-only fields,
plus the dataset and its split (and, for your own file, how it was read). The default folder is
``<root>/<dataset>/<model>-E<E>-<hash>/seed<k>`` (baselines: ``<model>-<hash>``), ``<hash>`` being
the first 8 hex digits of the identity's sha256, so runs with different settings never share a
folder. Beside ``results.json`` every run writes ``settings.json`` (:func:`settings_record`), and a
resumed run refuses a folder whose recorded settings differ (:func:`check_settings`).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from tall_jax.datasets import KNOWN_DATASETS
from tall_jax.datasets.own import own_data
from tall_jax.files import atomic_write_text

SETTINGS_FILE = "settings.json"
_MISSING = object()


def data_options(dataset: str) -> dict[str, Any]:
    """How your own interaction file was read (columns, min_rating, kcore and its rule) and which file it was:
    its absolute path, size and sha256 (:func:`file_identity`); {} for a built-in dataset, whose
    raw files are pinned by checksum."""
    spec = None if dataset in KNOWN_DATASETS else own_data(dataset)
    if spec is None:
        return {}
    return {"columns": spec.columns, "min_rating": spec.min_rating, "kcore": list(spec.kcore),
            "kcore_rule": spec.kcore_rule, **file_identity(spec.path)}


_FILE_IDS: dict[tuple[str, int, int], dict[str, Any]] = {}


def file_identity(path: str | Path) -> dict[str, Any]:
    """``{"file", "size", "sha256"}`` of a data file: two files of one name but other contents are
    other data, so their runs get other folders and one never resumes the other. Hashed once per
    (path, size, mtime) in a process; a missing file gives ``{"file": path}`` (loading reports it)."""
    path = Path(path).resolve()
    try:
        st = path.stat()
    except OSError:
        return {"file": str(path)}
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _FILE_IDS:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _FILE_IDS[key] = {"file": str(path), "size": st.st_size, "sha256": h.hexdigest()}
    return dict(_FILE_IDS[key])


def identity(config: Any, *, dataset: str, split: str, execution_fields: tuple[str, ...]) -> dict[str, Any]:
    """The settings that make two runs the same experiment (seeds aside): the config's fields except
    ``seed`` and ``execution_fields``, the dataset, its split and how it was read."""
    fields = {k: v for k, v in config.to_dict().items() if k != "seed" and k not in execution_fields}
    return {"dataset": dataset, "split": split, "data": data_options(dataset), "config": fields}


def short_hash(settings: dict[str, Any], n: int = 8) -> str:
    """The first ``n`` hex digits of the sha256 of ``settings`` as canonical JSON."""
    blob = json.dumps(settings, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:n]


def run_dir(root: str | Path, record: dict[str, Any]) -> Path:
    """``root/<dataset>/<model>-E<E>-<hash>/seed<k>`` of a :func:`settings_record` (``<model>-<hash>``
    for a config without experts): the folder the command line writes a run into."""
    experts = record["config"].get("n_experts")
    name = "-".join([record["model"]] + ([f"E{experts}"] if experts is not None else []) + [record["identity"]])
    return Path(root) / record["dataset"] / name / f"seed{record['seed']}"


def settings_record(config: Any, *, dataset: str, split: str, variant: str,
                    execution_fields: tuple[str, ...]) -> dict[str, Any]:
    """The readable ``settings.json`` of a run: the resolved config, dataset, split, seed, variant and
    the identity hash (execution fields included in ``config``, but not in the hash)."""
    ident = identity(config, dataset=dataset, split=split, execution_fields=execution_fields)
    return {"dataset": dataset, "split": split, "data": ident["data"], "model": config.model,
            "seed": config.seed, "variant": variant, "identity": short_hash(ident),
            "execution_fields": list(execution_fields), "config": config.to_dict()}


def _flat(record: dict[str, Any]) -> dict[str, Any]:
    skip = set(record.get("execution_fields", ()))
    out = {k: v for k, v in record.items() if k not in ("config", "data", "identity", "execution_fields",
                                                        "variant")}
    out.update({f"data.{k}": v for k, v in (record.get("data") or {}).items()})
    out.update({k: v for k, v in (record.get("config") or {}).items() if k not in skip})
    return json.loads(json.dumps(out, default=str))  # tuples -> lists, as read back from JSON


def field_differences(saved: dict[str, Any], wanted: dict[str, Any], where: str) -> list[str]:
    """``"field: saved value in <where> vs wanted value now"`` for every top-level field that differs."""
    show = lambda d, k: repr(d[k]) if k in d else "<absent>"  # noqa: E731
    return [f"{k}: {show(saved, k)} in {where} vs {show(wanted, k)} now"
            for k in sorted(set(saved) | set(wanted)) if saved.get(k, _MISSING) != wanted.get(k, _MISSING)]


def settings_differences(saved: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """:func:`field_differences` of two :func:`settings_record` s, config fields compared one by one and
    execution-only fields ignored."""
    return field_differences(_flat(saved), _flat(wanted), SETTINGS_FILE)


def check_settings(out_dir: str | Path, wanted: dict[str, Any]) -> None:
    """Raise ValueError naming each differing field when ``out_dir/settings.json`` exists and records
    other settings than ``wanted`` (a folder without one, from before settings.json, passes)."""
    path = Path(out_dir) / SETTINGS_FILE
    if not path.is_file():
        return
    try:
        saved = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable ({e}); move the folder away or choose another --out") from None
    diff = settings_differences(saved, wanted)
    if diff:
        raise ValueError(f"cannot resume {out_dir}: its settings differ ({'; '.join(diff)}); "
                         "run without --resume into another folder, or remove this one")


def write_settings(out_dir: str | Path, record: dict[str, Any]) -> Path:
    """Write ``settings.json`` into ``out_dir`` atomically."""
    return atomic_write_text(Path(out_dir) / SETTINGS_FILE, json.dumps(record, indent=1, default=str))


# Entries a run folder holds before it has trained anything: its settings and its lock file.
_NOT_PROGRESS = (SETTINGS_FILE, ".lock")


def folder_state(out_dir: str | Path) -> str:
    """"finished" (results.json is there), "started" (anything else a run writes: a checkpoint, local
    models, a global model) or "empty" (no folder, or only settings.json and the lock file)."""
    out = Path(out_dir)
    if (out / "results.json").is_file():
        return "finished"
    if out.is_dir() and any(p.name not in _NOT_PROGRESS for p in out.iterdir()):
        return "started"
    return "empty"


def similar_runs(root: str | Path, wanted: dict[str, Any]) -> list[tuple[Path, list[str]]]:
    """(folder, differing fields) of every run folder under ``root/<dataset>/<model>-*/seed<k>`` of
    the same dataset, model and seed as the settings record ``wanted`` whose settings.json records
    other settings: what a mistyped flag or changed data file would have been resumed from."""
    base = Path(root) / wanted["dataset"]
    found = []
    for path in sorted(base.glob(f"{wanted['model']}-*/seed{wanted['seed']}/{SETTINGS_FILE}")):
        try:
            saved = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        diff = settings_differences(saved, wanted)
        if diff and saved.get("model") == wanted["model"]:
            found.append((path.parent, diff))
    return found
