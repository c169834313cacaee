"""``run_recbole_ext.py``: RecBole's ``run_recbole.py`` flags plus dataset conversion and listing.

    python run_recbole_ext.py --model=TiMiRec --dataset=ml-100k [--config_files="a.yaml b.yaml"] [--key=value ...]
    python run_recbole_ext.py --convert=ml-1m|rechorus|comirec|libfm|mfn-ml1m --src=PATH [--dataset=NAME] [--data_path=dataset/]
    python run_recbole_ext.py --list
    python run_recbole_ext.py --model=TiMiRec --dataset=ml-100k --tune=space.yaml [--num_samples=N --scheduler=asha ...]

Any other ``--key=value`` is a RecBole config key (highest priority, typed by RecBole's own parser).
"""

from __future__ import annotations

import argparse
import ast
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
    p.add_argument("--convert", choices=["ml-1m", "rechorus", "comirec", "libfm", "mfn-ml1m"],
                   help="convert raw files (MovieLens-1M .dat, a ReChorus folder, ComiRec's split, libFM, MovieLens-1M "
                        "as MFN's two views) and exit")
    p.add_argument("--fields", help="--convert=libfm: comma-separated field names, one per position")
    p.add_argument("--field_map", help="--convert=libfm: a file of 'name first_index last_index' lines, one per field")
    p.add_argument("--src", help="folder with the raw files for --convert")
    p.add_argument("--data_path", default=None, help="where atomic datasets live (RecBole's data_path, default dataset/)")
    t = p.add_argument_group("Ray Tune sweep (--tune)")
    t.add_argument("--tune", metavar="SPACE", help="search-space file (RecBole hyper.test lines or YAML)")
    t.add_argument("--num_samples", type=int, default=1, help="samples per grid point (default 1)")
    t.add_argument("--scheduler", default="asha", help="asha | median | pbt | fifo (default asha)")
    t.add_argument("--search", default="random", help="random | grid | optuna | hyperopt (default random)")
    t.add_argument("--max_concurrent", type=int, default=None, help="trials at once (default: as resources allow)")
    t.add_argument("--cpus_per_trial", type=float, default=1)
    t.add_argument("--gpus_per_trial", type=float, default=0)
    t.add_argument("--grace_period", type=int, default=1, help="epochs before a trial may be stopped")
    t.add_argument("--ray_address", default=None, help="connect to a running Ray cluster (e.g. auto or HOST:6379)")
    t.add_argument("--storage_path", default="ray_results", help="where sweep folders go (default ray_results/)")
    return p


def _list(data_path: str) -> None:
    from recbole_ext import registry

    local = sorted(d.name for d in Path(data_path).iterdir() if d.is_dir() and not d.name.startswith(".")) \
        if Path(data_path).is_dir() else []
    print("plugin models :", ", ".join(sorted(registry.MODELS)))
    print("RecBole models:", ", ".join(registry.builtin_models()))
    print("protocols     :", ", ".join(registry.protocols()))
    import recbole
    import yaml

    known = yaml.safe_load((Path(recbole.__file__).parent / "properties" / "dataset" / "url.yaml").read_text())
    print(f"datasets      : ml-100k (bundled with RecBole); in {data_path}/: {', '.join(local) or 'none'}")
    print(f"downloadable  : {', '.join(sorted(known))} (RecBole fetches them on first use)")


def _sweep(args: argparse.Namespace, dataset: str, files: list[str] | None) -> int:
    from recbole_ext.tune import print_summary, run_sweep

    fixed = {}  # the sweep's fixed settings: the --key=value flags, typed as RecBole's command line types them
    for arg in sys.argv[1:]:
        if not arg.startswith("--") or arg.count("=") < 1:
            print(f"warning: {arg!r} is not --key=value; ignored", file=sys.stderr)
            continue
        key, _, value = arg[2:].partition("=")
        try:
            fixed[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            fixed[key] = {"true": True, "false": False}.get(value.lower(), value)
    result = run_sweep(args.model, dataset, args.tune, config_file_list=files, config_dict=fixed,
                       num_samples=args.num_samples, scheduler=args.scheduler, search=args.search,
                       max_concurrent=args.max_concurrent, cpus_per_trial=args.cpus_per_trial,
                       gpus_per_trial=args.gpus_per_trial, grace_period=args.grace_period,
                       ray_address=args.ray_address, storage_path=args.storage_path)
    print_summary(result)
    return 0


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
            default_name = {"ml-1m": "ml-1m", "mfn-ml1m": "ml-1m-mfn"}.get(args.convert, Path(args.src).name)
            extra = {}
            if args.convert == "libfm":
                from recbole_ext.data.convert import read_field_map

                extra["fields"] = args.fields.split(",") if args.fields else None
                extra["field_map"] = read_field_map(args.field_map) if args.field_map else None
            out = CONVERTERS[args.convert](args.src, args.data_path or "dataset", args.dataset or default_name, **extra)
            protocol = {"comirec": " --protocol=comirec", "libfm": " --protocol=libfm"}.get(args.convert, "")
            print(f"wrote {out}/ ; train with: python run_recbole_ext.py --model=MODEL --dataset={out.name}{protocol}")
            return 0
        import recbole_ext

        # RecBole's Config parses --key=value from sys.argv itself (typed, top priority): leave only those.
        sys.argv = [sys.argv[0], *rest, *([f"--data_path={args.data_path}"] if args.data_path else [])]
        files = args.config_files.split() if args.config_files else None
        dataset = args.dataset or DEFAULT_DATASET
        if args.tune:
            return _sweep(args, dataset, files)
        result = recbole_ext.run(args.model, dataset, config_file_list=files)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"error: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}", file=sys.stderr)
        return 2
    print(f"\n{args.model} on {args.dataset or DEFAULT_DATASET}: {result['epochs']} epochs, "
          f"best valid {result['best_valid_score']:.4f}")
    print("test:", "  ".join(f"{k} {float(v):.4f}" for k, v in result["test_result"].items()))
    if result["pretrain_test_result"]:
        print("test of the pretrain stage's model:",
              "  ".join(f"{k} {float(v):.4f}" for k, v in result["pretrain_test_result"].items()))
    return 0
