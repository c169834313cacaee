"""``run_recbole_ext.py``: RecBole's ``run_recbole.py`` flags plus dataset conversion and listing.

    python run_recbole_ext.py --model=TiMiRec --dataset=ml-100k [--config_files="a.yaml b.yaml"] [--key=value ...]
    python run_recbole_ext.py --convert=ml-1m --src=PATH/ml-1m [--dataset=ml-1m] [--data_path=dataset/]
    python run_recbole_ext.py --list

Any other ``--key=value`` is a RecBole config key (highest priority, typed by RecBole's own parser).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_MODEL, DEFAULT_DATASET = "TiMiRec", "ml-100k"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="run_recbole_ext.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", "-m", default=DEFAULT_MODEL, help=f"model name (default {DEFAULT_MODEL})")
    p.add_argument("--dataset", "-d", default=None, help=f"dataset name (default {DEFAULT_DATASET})")
    p.add_argument("--config_files", default=None, help="space-separated YAML files")
    p.add_argument("--list", action="store_true", help="list plugin and RecBole models, protocols, local datasets")
    p.add_argument("--convert", choices=["ml-1m", "rechorus"], help="convert raw files to atomic files and exit")
    p.add_argument("--src", help="folder with the raw files for --convert")
    p.add_argument("--data_path", default=None, help="where atomic datasets live (RecBole's data_path, default dataset/)")
    return p


def _list(data_path: str) -> None:
    from recbole_ext import registry

    local = sorted(d.name for d in Path(data_path).iterdir() if d.is_dir() and not d.name.startswith(".")) \
        if Path(data_path).is_dir() else []
    print("plugin models :", ", ".join(sorted(registry.MODELS)))
    print("RecBole models:", ", ".join(registry.builtin_models()))
    print("protocols     :", ", ".join(registry.protocols()))
    print(f"datasets      : ml-100k (bundled with RecBole){''.join(', ' + d for d in local)} "
          f"[in {data_path}/]; RecBole downloads other known names on first use")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args, rest = _parser().parse_known_args(argv)
    try:
        if args.list:
            _list(args.data_path or "dataset")
            return 0
        if args.convert:
            from recbole_ext.data.convert import CONVERTERS

            if not args.src:
                raise ValueError("--convert needs --src=FOLDER with the raw files")
            default_name = "ml-1m" if args.convert == "ml-1m" else Path(args.src).name
            out = CONVERTERS[args.convert](args.src, args.data_path or "dataset", args.dataset or default_name)
            print(f"wrote {out}/ ; train with: python run_recbole_ext.py --model=MODEL --dataset={out.name}")
            return 0
        import recbole_ext

        # RecBole's Config parses --key=value from sys.argv itself (typed, top priority): leave only those.
        sys.argv = [sys.argv[0], *rest, *([f"--data_path={args.data_path}"] if args.data_path else [])]
        files = args.config_files.split() if args.config_files else None
        result = recbole_ext.run(args.model, args.dataset or DEFAULT_DATASET, config_file_list=files)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"error: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}", file=sys.stderr)
        return 2
    print(f"\n{args.model} on {args.dataset or DEFAULT_DATASET}: {result['epochs']} epochs, "
          f"best valid {result['best_valid_score']:.4f}")
    print("test:", "  ".join(f"{k} {float(v):.4f}" for k, v in result["test_result"].items()))
    return 0
