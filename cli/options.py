"""Command-line options derived from the parameter models, so flags cannot drift from fields.

Every field of :class:`~microchange.config.DetectConfig` and of its sub-configs is a flag named
after it (``smoothing_sigma`` -> ``--smoothing-sigma``); ``Literal`` fields take their choices,
booleans get ``--x/--no-x``, tuples take comma-separated lists. Flags fill a nested dict that is
merged over a ``--config`` file and validated once by ``DetectConfig``, the same path a flow run
takes, so the sensor family's defaults apply the same way everywhere.
"""

from __future__ import annotations

import argparse
import json
import types
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import ValidationError

from microchange.config import DetectConfig, check_bands
from microchange.errors import ConfigError, InputError

__all__ = ("CONFIG_SECTIONS", "add_config_options", "config_from_args", "describe_choices", "flag",
           "parse_bands", "validation_message")

CONFIG_SECTIONS = ("preprocess", "postprocess", "deep", "masks")
"""DetectConfig fields that are sub-configs: their fields are flags too."""


def flag(field: str) -> str:
    """The flag of a config field: ``smoothing_sigma`` -> ``--smoothing-sigma``."""
    return "--" + field.replace("_", "-")


def parse_bands(text: str) -> tuple[int | str, ...]:
    """``"1,2,3"`` -> band indexes, ``"B02,B03"`` -> band names (checked by the config)."""
    tokens = [t.strip() for t in text.split(",") if t.strip()]
    bands = tuple(int(t) if t.isdigit() else t for t in tokens)
    try:
        check_bands(bands, role="--bands")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return bands


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of whole numbers, e.g. 3,8,9") from None


def _str_list(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def _members(annotation: Any) -> list[Any]:
    """The types of an annotation, ``X | None`` unwrapped."""
    if get_origin(annotation) in (Union, types.UnionType):
        return [a for a in get_args(annotation) if a is not type(None)]
    return [annotation]


def _argument(name: str, annotation: Any) -> dict[str, Any]:
    """Argparse keyword arguments for a field's annotation."""
    members = _members(annotation)
    kind = members[0]
    if get_origin(kind) is Literal:
        return {"choices": get_args(kind)}
    if kind is bool:
        return {"action": argparse.BooleanOptionalAction}
    if kind in (int, float):
        return {"type": kind, "metavar": "N" if kind is int else "X"}
    if kind is str:
        path = name in ("weights", "model") or name.endswith(("_mask", "_classes"))
        return {"type": str, "metavar": "PATH" if path else "SPEC"}
    if get_origin(kind) is tuple:
        inner = set(get_args(kind)) - {Ellipsis}
        if name == "bands":
            return {"type": parse_bands, "metavar": "BANDS"}
        if inner == {int}:
            return {"type": _int_list, "metavar": "N,N,..."}
        return {"type": _str_list, "metavar": "NAME,..."}
    raise TypeError(f"no command-line form for field {name!r} of type {annotation!r}")


def _help(field: Any) -> str:
    return (field.description or "").replace("%", "%%")


def add_config_options(parser: argparse.ArgumentParser, *,
                       exclude: Collection[str] = ()) -> None:
    """Add a flag per DetectConfig field (and sub-config field) to ``parser``.

    Args:
        parser: The (sub)command's parser.
        exclude: Fields that do not apply to this command (no flag).
    """
    models: list[tuple[str | None, Any]] = [(None, DetectConfig)]
    models += [(s, DetectConfig.model_fields[s].annotation) for s in CONFIG_SECTIONS]
    for section, model in models:
        title = "detection options" if section is None else f"{section} options"
        group = parser.add_argument_group(title)
        for name, field in model.model_fields.items():
            if name in CONFIG_SECTIONS or name in exclude:
                continue
            group.add_argument(flag(name), dest=name, default=None, help=_help(field),
                               **_argument(name, field.annotation))
    parser.add_argument("--config", metavar="FILE",
                        help="JSON file of DetectConfig fields (nested as in run.json's "
                             "'parameters'); flags override it")


def _read_config_file(path: str) -> dict[str, Any]:
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read --config {path!r} ({exc}): give a JSON file of "
                         "DetectConfig fields") from exc
    if not isinstance(doc, dict):
        raise ConfigError(f"--config {path!r} holds a {type(doc).__name__}, not an object of "
                          "DetectConfig fields")
    return doc


def config_from_args(args: argparse.Namespace, *, base: dict[str, Any] | None = None,
                     validate: Callable[[dict[str, Any]], None] | None = None) -> DetectConfig:
    """The DetectConfig of parsed flags, merged over ``--config`` and over ``base``.

    Args:
        args: Parsed arguments of a parser with :func:`add_config_options`.
        base: Fields set before the file and the flags (e.g. ``{"method": "learned"}``).
        validate: Called with the merged dict before validation (command-specific checks).

    Raises:
        InputError: If the config file cannot be read.
        ConfigError: If a value is invalid (one line per value, with its flag).
    """
    doc: dict[str, Any] = dict(base or {})
    if getattr(args, "config", None):
        file = _read_config_file(args.config)
        for key, value in file.items():
            if key in CONFIG_SECTIONS and isinstance(value, dict):
                doc[key] = {**doc.get(key, {}), **value}
            else:
                doc[key] = value
    for name, field in DetectConfig.model_fields.items():
        if name in CONFIG_SECTIONS:
            model: Any = field.annotation
            given = {k: getattr(args, k) for k in model.model_fields
                     if getattr(args, k, None) is not None}
            if given:
                doc[name] = {**(doc.get(name) or {}), **given}
        elif getattr(args, name, None) is not None:
            doc[name] = getattr(args, name)
    if validate is not None:
        validate(doc)
    try:
        return DetectConfig.model_validate(doc)
    except ValidationError as exc:
        raise ConfigError(validation_message(exc)) from None


def _allowed(loc: tuple[Any, ...]) -> str:
    """``: give a whole number from 32 to 8192`` for a bounded numeric field, else ''."""
    model: Any = DetectConfig
    field = None
    for part in loc:
        fields = getattr(model, "model_fields", {})
        if part not in fields:
            return ""
        field = fields[part]
        model = field.annotation
    if field is None:
        return ""
    bounds = {k: getattr(m, k) for m in field.metadata for k in ("ge", "gt", "le", "lt")
              if getattr(m, k, None) is not None}
    if not bounds:
        return ""
    kind = "a whole number" if int in _members(field.annotation) else "a number"
    if "ge" in bounds and "le" in bounds:
        return f": give {kind} from {bounds['ge']} to {bounds['le']}"
    ops = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    return f": give {kind} " + " and ".join(f"{ops[k]} {v}" for k, v in bounds.items())


def validation_message(exc: ValidationError) -> str:
    """One line per invalid value: the field, its flag, what is wrong, the value given, the fix."""
    lines = []
    for e in exc.errors():
        where = [str(p) for p in e["loc"] if p not in CONFIG_SECTIONS]
        name = where[-1] if where else "config"
        shown = f"{name} ({flag(name)})" if where else name
        lines.append(f"  {shown}: {e['msg'].removeprefix('Value error, ')} "
                     f"(got {e.get('input')!r}){_allowed(tuple(e['loc']))}")
    return "invalid parameters:\n" + "\n".join(lines)


def describe_choices(values: Sequence[str]) -> str:
    """``a, b or c``."""
    return ", ".join(values[:-1]) + f" or {values[-1]}" if len(values) > 1 else values[0]
