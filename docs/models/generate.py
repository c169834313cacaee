"""Rewrite the generated key tables of the model cards from the YAMLs (``recbole_ext.keydoc``).

In each ``docs/models/<Model>.md`` the block between ``<!-- keys:begin -->`` and ``<!-- keys:end -->`` is
``keydoc.keys_markdown(model)``; the rest of the card is hand-written and left alone.

    .venv/bin/python docs/models/generate.py           # rewrite the blocks
    .venv/bin/python docs/models/generate.py --check   # exit 1 if a card is missing or its block is stale
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

CARDS = Path(__file__).resolve().parent
sys.path.insert(0, str(CARDS.parents[1]))  # the repository root, when recbole_ext is not installed

BEGIN, END = "<!-- keys:begin -->", "<!-- keys:end -->"
BLOCK = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)


def plugin_models() -> list[str]:
    """The models this package ships (third-party plugins registered beside them have no card here)."""
    from recbole_ext import registry

    return sorted(name for name, cls in registry.MODELS.items() if cls.__module__.startswith("recbole_ext."))


def render(card: str, model: str) -> str:
    from recbole_ext.keydoc import keys_markdown

    if len(BLOCK.findall(card)) != 1:
        raise ValueError(f"needs exactly one {BEGIN} ... {END} block")
    return BLOCK.sub(lambda _: f"{BEGIN}\n{keys_markdown(model)}\n{END}", card)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a card is missing or stale")
    args = parser.parse_args(argv)
    import recbole_ext  # noqa: F401  (registers the models)

    problems = []
    for model in plugin_models():
        path = CARDS / f"{model}.md"
        if not path.is_file():
            problems.append(f"{path.name}: missing (every plugin model needs a card)")
            continue
        card = path.read_text(encoding="utf-8")
        try:
            new = render(card, model)
        except ValueError as exc:
            problems.append(f"{path.name}: {exc}")
            continue
        if new != card:
            if args.check:
                problems.append(f"{path.name}: key table stale; run .venv/bin/python docs/models/generate.py")
            else:
                path.write_text(new, encoding="utf-8")
                print(f"updated {path.relative_to(CARDS.parents[1])}")
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
