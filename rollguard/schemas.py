"""JSON Schemas of the event models, written to schemas/ and checked against it."""

from __future__ import annotations

from pathlib import Path

import orjson

from rollguard.events import EVENT_TYPES


def render() -> dict[str, bytes]:
    """File name → JSON Schema bytes, one file per event and schema version."""
    out: dict[str, bytes] = {}
    for cls in EVENT_TYPES:
        schema = cls.model_json_schema(by_alias=True)
        schema["$id"] = f"https://rollguard.dev/schemas/{cls.SCHEMA.replace('/', '.')}.json"
        name = cls.SCHEMA.replace("/", ".") + ".json"
        out[name] = orjson.dumps(schema, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2) + b"\n"
    return out


def export(directory: Path) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, body in render().items():
        (directory / name).write_bytes(body)
        written.append(name)
    return written


def stale(directory: Path) -> list[str]:
    """Schema files that are missing, differ from the models, or belong to no model."""
    expected = render()
    problems = [
        name
        for name, body in expected.items()
        if not (directory / name).is_file() or (directory / name).read_bytes() != body
    ]
    problems += sorted(p.name for p in directory.glob("*.json") if p.name not in expected)
    return problems
