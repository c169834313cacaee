"""Config keys documented from the YAMLs themselves (``docs/models/generate.py``, ``--model=X --help``).

A key's description is the comment block directly above it plus its trailing ``# ...`` comment (and its nested
lines'); the file's opening comment block describes the file. A key with no comment borrows the one of the same key
in a parent class's YAML (INN, DeepIFM: IFM), in ``properties/overall.yaml``, or RecBole's own, in that order.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from recbole_ext import properties, registry

_KEY = re.compile(r"^([A-Za-z_][\w.-]*)\s*:")


@dataclass(frozen=True)
class KeyDoc:
    name: str
    default: Any  # the parsed YAML value
    description: str


def _comment(line: str) -> str:
    """The trailing ``# ...`` of a YAML line, outside quotes ('' when none)."""
    match = re.match(r"""^(?:[^'"#]|'[^']*'|"[^"]*"|(?<=\S)#)*?(?:^|\s)#(.*)$""", line)
    return match.group(1).strip() if match else ""


def parse_yaml(path: Path, trailing_only: bool = False) -> tuple[str, list[KeyDoc]]:
    """-> (the file's opening comment, one KeyDoc per top-level key, in file order)."""
    text = Path(path).read_text(encoding="utf-8")
    values, header, above, docs = yaml.safe_load(text) or {}, [], [], {}
    current, in_header = None, True
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            (header if in_header else above).append(stripped[1:].strip())
        elif not stripped:  # a blank line ends a comment block (and the header, once it has begun)
            in_header, above = in_header and not header, []
        elif match := _KEY.match(line):
            in_header, current = False, match.group(1)
            docs[current], above = ([] if trailing_only else above) + [c for c in [_comment(line)] if c], []
        elif current is not None and not trailing_only and (comment := _comment(line)):
            docs[current].append(f"{stripped.split(':', 1)[0]}: {comment}")  # a nested line's comment
    return " ".join(header), [KeyDoc(k, values.get(k), " ".join(d)) for k, d in docs.items()]


def _model_yaml(model: str) -> Path | None:
    if model not in registry.MODELS:
        raise ValueError(f"unknown plugin model {model!r}; plugin models: {', '.join(sorted(registry.MODELS))}")
    return registry._YAMLS.get(model)  # the very file the config loader merges for this model


def model_keys(model: str) -> list[KeyDoc]:
    """The keys of ``model``'s own YAML (``properties/model/<model>.yaml``), defaults as parsed."""
    path = _model_yaml(model)
    recbole = Path(str(resources.files("recbole"))) / "properties"
    parents = [registry._YAMLS.get(c.__name__, recbole / "model" / f"{c.__name__}.yaml")
               for c in registry.MODELS[model].__mro__[1:]]
    sources = [(p, f"as {p.stem}: ", False) for p in parents if p.is_file()] + [
        (properties.FOLDER / "overall.yaml", "", False)] + [
        (recbole / f, "RecBole's key: ", True) for f in ("overall.yaml", "dataset/sample.yaml")]
    borrowed = [{k.name: prefix + k.description for k in parse_yaml(p, trailing)[1] if k.description}
                for p, prefix, trailing in sources]
    return [k if k.description else KeyDoc(k.name, k.default, next((b[k.name] for b in borrowed if k.name in b), ""))
            for k in (parse_yaml(path)[1] if path else [])]


def protocol_keys(name: str) -> list[KeyDoc]:
    """The keys a protocol preset sets (``properties/protocol/<name>.yaml``; ``overall``: the plugin-wide keys)."""
    path = properties.FOLDER / ("overall.yaml" if name == "overall" else f"protocol/{name}.yaml")
    if not path.is_file():
        raise ValueError(f"unknown protocol {name!r}; protocols: {', '.join(properties.protocols())}")
    return parse_yaml(path)[1]


def format_value(value: Any, nested: bool = False) -> str:
    """A default as one writes it in a YAML file or on the command line: ~, True, 0.001, [a, b], {k: v}."""
    if value is None:
        return "~"
    if isinstance(value, (list, dict)):
        items = [format_value(v, True) for v in value] if isinstance(value, list) else [
            f"{k}: {format_value(v, True)}" for k, v in value.items()]
        return ("[{}]" if isinstance(value, list) else "{{{}}}").format(", ".join(items))
    if isinstance(value, str) and nested and re.search(r"[,:{}\[\]#'\"]|^\s|\s$|^$", value):
        return repr(value)  # would not read back as the same string inside a flow collection
    return str(value)


def _intro(model: str) -> str:
    path = _model_yaml(model)
    if path is None:
        return f"{model} has no YAML of its own"
    root = properties.FOLDER
    source = f"properties/{path.relative_to(root).as_posix()}" if path.is_relative_to(root) else str(path)
    summary = parse_yaml(path)[0]
    return f"Defaults of `{source}`" + (f": {summary}" if summary else "")


def keys_markdown(model: str) -> str:
    """A Markdown table (key | default | meaning) of ``model``'s YAML keys, below one line naming the file."""
    rows = [f"| `{k.name}` | `{format_value(k.default)}` | {k.description.replace('|', chr(92) + '|') or '–'} |"
            for k in model_keys(model)]
    return "\n".join([_intro(model), "", "| key | default | meaning |", "|---|---|---|", *rows])


def keys_text(model: str, width: int = 100) -> str:
    """Plain text for a terminal: every key of ``model``'s YAML with its default and meaning."""
    lines = textwrap.wrap(_intro(model).replace("`", ""), width) + [
        "Set a key as --key=value or in a --config_files YAML (any other RecBole key works too).", ""]
    for k in model_keys(model):
        lines.append(f"  {k.name} = {format_value(k.default)}")
        lines += textwrap.wrap(k.description, width, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return "\n".join(lines)
