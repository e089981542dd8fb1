"""Generate ``docs/reference.md`` from the pydantic models: every setting, every task field.

``python -m secagg.reference > docs/reference.md`` rewrites it;
``python -m secagg.reference --check docs/reference.md`` exits 1 when the file
is out of date (the test suite runs the same check).
"""

from __future__ import annotations

import enum
import json
import sys
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from annotated_types import Ge, Gt, Le, Lt, MaxLen, MinLen
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from secagg.settings import Settings
from secagg.strategies import STRATEGY_SPECS
from secagg.task_spec import LayoutEntry, TaskCreate

__all__ = ["main", "render"]

HEADER = """\
# secagg reference

Generated from the code by `python -m secagg.reference > docs/reference.md`;
`make test` fails when this file is out of date. Do not edit by hand.
"""


def _type(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type(args[0])
    if origin is typing.Literal:
        return " | ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type(a) for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(_type(a) for a in args)}]"
    if annotation is type(None):
        return "null"
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return " | ".join(f"`{m.value}`" for m in annotation)
    return getattr(annotation, "__name__", str(annotation))


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
    elif field.default is PydanticUndefined:
        return "*required*"
    else:
        value = field.default
    if isinstance(value, BaseModel):
        value = value.model_dump()
    if isinstance(value, Path):
        value = str(value)
    return f"`{json.dumps(value)}`"


def _bounds(field: FieldInfo) -> str:
    parts: list[str] = []
    for m in field.metadata:
        if isinstance(m, Gt):
            parts.append(f"> {m.gt}")
        elif isinstance(m, Ge):
            parts.append(f">= {m.ge}")
        elif isinstance(m, Lt):
            parts.append(f"< {m.lt}")
        elif isinstance(m, Le):
            parts.append(f"<= {m.le}")
        elif isinstance(m, MinLen):
            parts.append(f"length >= {m.min_length}")
        elif isinstance(m, MaxLen):
            parts.append(f"length <= {m.max_length}")
    return ", ".join(parts)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _table(model: type[BaseModel], name_prefix: str = "", env: bool = False) -> list[str]:
    head = "| name | type | default | allowed | description |"
    rows = [head, "|---|---|---|---|---|"]
    if env:
        rows = ["| name | environment | type | default | allowed | description |"]
        rows.append("|---|---|---|---|---|---|")
    for name, field in model.model_fields.items():
        cells = [f"`{name_prefix}{name}`"]
        if env:
            cells.append(f"`SECAGG_{name.upper()}`")
        cells += [
            _cell(_type(field.annotation)),
            _cell(_default(field)),
            _cell(_bounds(field)),
            _cell(field.description or "(undocumented)"),
        ]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def render() -> str:
    """The whole of ``docs/reference.md``."""
    out = [HEADER]
    out += [
        "## Server settings",
        "",
        "Set in a TOML file (`secagg serve --config FILE` or `SECAGG_CONFIG`), in the",
        "environment (`SECAGG_<NAME>`) or as `secagg serve` flags; flags win over the",
        "environment, which wins over the file. Unknown settings are refused.",
        "",
        *_table(Settings, env=True),
        "",
        "## Task fields",
        "",
        "The body of `POST /v1/admin/tasks`, or the TOML file of `secagg task create",
        "task.toml [--init model.pt]` (top-level keys, with `[strategy]` and",
        "`[deadlines]` tables). An unknown field is refused with 422 naming it.",
        "",
        *_table(TaskCreate),
        "",
        "### `model_layout` entries",
        "",
        *_table(LayoutEntry),
        "",
        "## Strategies",
        "",
        "The task's `strategy` table: `name` picks the strategy, the other keys are",
        "its parameters. An unknown name or parameter is refused with 422 listing the",
        "valid ones.",
        "",
    ]
    for name, spec in STRATEGY_SPECS.items():
        doc = _cell(spec.__doc__ or "")
        out += [f"### `{name}`", "", doc, "", *_table(spec, "strategy."), ""]
    return "\n".join(out).rstrip() + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    text = render()
    if args[:1] == ["--check"] and len(args) == 2:
        path = Path(args[1])
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            print(
                f"{path} is out of date: run python -m secagg.reference > {path}",
                file=sys.stderr,
            )
            return 1
        return 0
    if args:
        print("usage: python -m secagg.reference [--check FILE]", file=sys.stderr)
        return 2
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
