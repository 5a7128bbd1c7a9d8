"""Config fields as command-line flags: a field the command line may set declares its flag in the
field's metadata (:func:`flag`), and :func:`add_flags` makes the argparse options from them.

A flag is named after its field (``batch_size`` -> ``--batch-size``) unless it names itself
(``n_experts`` -> ``--experts``); its type comes from the field's annotation (int, float, str, bool:
an on-switch, ``tuple[int, ...]``: one or more integers) or from its own ``parse`` function. Several
config classes may declare the flag of a field of the same name (``--epochs``: the ``max_epochs`` of
TALLConfig and of BaselineConfig); the one flag then sets that field of every chosen model whose
code reads it, and its help joins each class's text, each followed by that class's default.
Every flag's default is None: an unset flag leaves the model's preset in place.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

_SCALARS = {"int": int, "float": float, "str": None}


@dataclasses.dataclass(frozen=True)
class Flag:
    """How a config field appears on the command line.

    ``help``: what the field sets, for ``--help`` (``{default}`` marks where the class's default
    goes; without it and without the word "default" the default is appended in parentheses; "" adds
    nothing to the help of a flag another class describes); ``name``: the flag, if not the field's
    name; ``choices``; ``parse``: text -> value, raising ValueError with a message for a bad text
    (default: from the field's annotation); ``metavar``; ``repeat``: the flag may be given several
    times, its values collected in a list."""

    help: str
    name: str | None = None
    choices: tuple[str, ...] | None = None
    parse: Callable[[str], Any] | None = None
    metavar: str | None = None
    repeat: bool = False


def flag(default: Any, help: str, **options: Any) -> Any:
    """A dataclass field with ``default`` that the command line sets (``options``: see :class:`Flag`)."""
    return dataclasses.field(default=default, metadata={"flag": Flag(help=help, **options)})


def finite(text: str) -> float:
    """A finite float (ValueError for 'nan', 'inf' or no number)."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"must be a finite number, got {text!r}")
    return value


def declared(config_class: type) -> dict[str, Flag]:
    """field name -> :class:`Flag` of every field of ``config_class`` that declares one."""
    return {f.name: f.metadata["flag"] for f in dataclasses.fields(config_class) if "flag" in f.metadata}


def flag_name(field: str, spec: Flag) -> str:
    """The option string of ``field``'s flag: its own name or ``--`` + the field with dashes."""
    return spec.name or "--" + field.replace("_", "-")


def dest(name: str) -> str:
    """The argparse attribute of an option string: ``--local-models`` -> ``local_models``."""
    return name[2:].replace("-", "_")


def _keywords(config_class: type, field: str, spec: Flag) -> dict[str, Any]:
    """The argparse keywords of ``field``'s flag, help aside (``type``: the unwrapped parse function)."""
    annotation = config_class.__dataclass_fields__[field].type
    if not isinstance(annotation, str):  # a module without "from __future__ import annotations"
        annotation = annotation.__name__ if isinstance(annotation, type) else repr(annotation)
    keywords: dict[str, Any] = {"default": None}
    if spec.parse is not None:
        keywords["type"] = spec.parse
    elif annotation == "bool":
        keywords["action"] = "store_true"
    elif annotation in _SCALARS:
        if _SCALARS[annotation] is not None:
            keywords["type"] = _SCALARS[annotation]
    elif annotation.replace(" ", "") == "tuple[int,...]":
        keywords.update(type=int, nargs="+")
    else:
        raise TypeError(f"{config_class.__name__}.{field}: no command-line type for {annotation!r}; "
                        "give its flag a parse function")
    if spec.choices is not None:
        keywords["choices"] = list(spec.choices)
    if spec.metavar is not None:
        keywords["metavar"] = spec.metavar
    if spec.repeat:
        keywords["action"] = "append"
    return keywords


def _argparse_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """``parse`` whose ValueError argparse prints as it is (its own message, not 'invalid value')."""
    if parse in (int, float):
        return parse

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


def plain_default(config_class: type, field: str) -> str:
    """'default: X', X the field's dataclass default."""
    return f"default: {config_class.__dataclass_fields__[field].default}"


@dataclasses.dataclass
class _Option:
    """One flag being assembled from the classes that declare it."""

    field: str
    group: Any
    keywords: dict[str, Any]
    helps: list[str]


def _help(config_class: type, field: str, spec: Flag, default_text: Callable[[type, str], str]) -> str:
    text = spec.help
    if "{default}" in text:
        return text.replace("{default}", default_text(config_class, field))
    if text and "default" not in text:
        return f"{text} ({default_text(config_class, field)})"
    return text


def _options(sources: Iterable[tuple[type, Any, Callable[[type, str], str]]]) -> dict[str, _Option]:
    options: dict[str, _Option] = {}
    for config_class, group, default_text in sources:
        for field, spec in declared(config_class).items():
            name = flag_name(field, spec)
            keywords = _keywords(config_class, field, spec)
            text = _help(config_class, field, spec, default_text)
            if name not in options:
                options[name] = _Option(field, group, keywords, [text] if text else [])
                continue
            known = options[name]
            if known.field != field or known.keywords != keywords:
                raise TypeError(f"{name}: {config_class.__name__}.{field} declares it as "
                                f"{field} {keywords}, another class as {known.field} {known.keywords}")
            if text:
                known.helps.append(text)
    return options


def flag_fields(config_classes: Sequence[type]) -> dict[str, str]:
    """argparse attribute -> config field of every flag the ``config_classes`` declare, in order."""
    return {dest(name): o.field for name, o in _options((c, None, plain_default) for c in config_classes).items()}


def add_flags(sources: Sequence[tuple[type, Any, Callable[[type, str], str]]]) -> dict[str, str]:
    """Add the flag of every field the config classes declare to its argparse group.

    ``sources``: (config class, group, default_text(class, field) -> "default: ...") in order; a flag
    declared by several classes goes to the group of the first and its help joins each class's text
    ("; "). TypeError when two classes declare one flag for different fields or types. Returns
    argparse attribute -> config field (:func:`flag_fields`)."""
    options = _options(sources)
    for name, option in options.items():
        keywords = dict(option.keywords)
        if "type" in keywords:
            keywords["type"] = _argparse_type(keywords["type"])
        option.group.add_argument(name, help="; ".join(option.helps), **keywords)
    return {dest(name): o.field for name, o in options.items()}
