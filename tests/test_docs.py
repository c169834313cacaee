"""The model cards (docs/models/*.md) and their key tables, generated from the YAMLs by recbole_ext.keydoc."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import yaml

from recbole_ext import keydoc, registry

ROOT = Path(__file__).resolve().parents[1]
CARDS = ROOT / "docs" / "models"


def _generator():
    spec = importlib.util.spec_from_file_location("docs_models_generate", CARDS / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _own_models() -> list[str]:
    return sorted(name for name, cls in registry.MODELS.items() if cls.__module__.startswith("recbole_ext."))


def test_cards_are_in_sync_with_the_yamls(capsys):
    assert _generator().main(["--check"]) == 0, capsys.readouterr().err


def test_every_plugin_model_has_a_card():
    models = _own_models()
    assert {"ComiRec", "TiMiRec", "Re4", "IFM", "INN", "DeepIFM", "MARIF", "MFN"} <= set(models)
    for model in models:
        card = (CARDS / f"{model}.md").read_text(encoding="utf-8")
        assert card.count("<!-- keys:begin -->") == card.count("<!-- keys:end -->") == 1, model
        assert "```bibtex" in card and "## Deviations" in card, model
        assert not re.search(r"specs/|§|\.\./shared", card), f"{model}.md cites internal notes"


def test_keys_text_lists_every_key_with_its_default_and_comment():
    path = ROOT / "properties" / "model" / "ComiRec.yaml"
    values = yaml.safe_load(path.read_text(encoding="utf-8"))
    text = keydoc.keys_text("ComiRec")
    for key, value in values.items():
        assert f"  {key} = {keydoc.format_value(value)}\n" in text + "\n", key
    assert "  embedding_size = 64\n" in text and "  loss_type = BPR\n" in text  # written as in the YAML
    comments = [line.split("#", 1)[1].strip() for line in path.read_text(encoding="utf-8").splitlines()
                if re.match(r"^\w+:.*\s#", line)]
    assert comments
    flat = " ".join(text.split())  # descriptions are wrapped for the terminal
    assert all(" ".join(c.split()) in flat for c in comments)


def test_markdown_table_has_one_row_per_key():
    table = keydoc.keys_markdown("MFN")
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    assert [row.split("`")[1] for row in rows] == [k.name for k in keydoc.model_keys("MFN")]
    assert all(row.count(" | ") == 2 for row in rows)  # '|' inside a description is escaped


def test_unknown_model_names_the_available_ones():
    with pytest.raises(ValueError) as error:
        keydoc.model_keys("NoSuchModel")
    assert all(name in str(error.value) for name in _own_models())
    with pytest.raises(ValueError, match="rechorus"):
        keydoc.protocol_keys("nope")


def test_comments_above_trailing_nested_and_quoted(tmp_path):
    path = tmp_path / "X.yaml"
    path.write_text("# the file\n\n# first line\n# second line\na: 1  # trailing\nb: 'x # y'  # real\n"
                    "c:\n  inter: [u, i]  # nested\nd: ~\n", encoding="utf-8")
    summary, keys = keydoc.parse_yaml(path)
    assert summary == "the file"
    assert [(k.name, k.default, k.description) for k in keys] == [
        ("a", 1, "first line second line trailing"), ("b", "x # y", "real"),
        ("c", {"inter": ["u", "i"]}, "inter: nested"), ("d", None, "")]
