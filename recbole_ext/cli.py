"""``recbole-ext`` / ``run_recbole_ext.py``: RecBole's ``run_recbole.py`` flags plus dataset conversion, listing,
resume, sweeps, distributed training and using a trained model.

    train       recbole-ext --model=ComiRec --dataset=ml-100k [--protocol=rechorus] [--config_files="a.yaml"] [--key=value ...]
    resume      recbole-ext --resume=saved/ComiRec-....pth
    sweep       recbole-ext --model=ComiRec --dataset=ml-100k --tune=space.yaml [--num_samples=N --scheduler=asha]
    distributed recbole-ext --model=ComiRec --dataset=ml-100k --distributed=2 [--ray_address=auto --use_gpu]
    recommend   recbole-ext recommend --checkpoint=PATH --users=u1,u2 | --users_file=F [--k=10 --exclude_history]
    export      recbole-ext export --checkpoint=PATH --what=items|users|interests --format=npy|parquet|csv --output=F
    convert     recbole-ext --convert=ml-1m|rechorus|comirec|libfm|mfn-ml1m --src=PATH [--dataset=NAME]
    list        recbole-ext --list                 (models, protocols, local datasets)
    model keys  recbole-ext --model=ComiRec --help (every key of the model, its default and meaning)

Any other ``--key=value`` is a RecBole config key (highest priority, typed as Python literals: ``--topk=[5,10]``).
It must be written ``--key=value``; a bare word, ``--key value``, a key given twice with two values, or a key no YAML
knows is an error. Every error is one line on stderr and exit code 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
from pathlib import Path

DEFAULT_MODEL, DEFAULT_DATASET = "TiMiRec", "ml-100k"  # as RecBole's run_recbole.py, when flags but no model are given


class UsageError(ValueError):
    """A command line that cannot mean what the user wants."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse prints usage + message and exits; one line, like every other error
        raise UsageError(f"{message} (see {self.prog} --help)")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog=Path(sys.argv[0]).name or "recbole-ext", description=__doc__, allow_abbrev=False,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", "-m", default=None, help=f"model name (recbole-ext --list; default {DEFAULT_MODEL}); "
                                                        "with --help: its config keys")
    p.add_argument("--dataset", "-d", default=None, help=f"an atomic-file folder in --data_path, or a dataset RecBole "
                                                          f"downloads (default {DEFAULT_DATASET})")
    p.add_argument("--config_files", default=None, help="space-separated YAML files")
    p.add_argument("--list", action="store_true", help="list plugin and RecBole models, protocols, local datasets")
    p.add_argument("--convert", choices=["ml-1m", "rechorus", "comirec", "libfm", "mfn-ml1m"],
                   help="convert raw files (MovieLens-1M .dat, a ReChorus folder, ComiRec's split, libFM, MovieLens-1M "
                        "as MFN's two views) and exit")
    p.add_argument("--fields", help="--convert=libfm: comma-separated field names, one per position")
    p.add_argument("--field_map", help="--convert=libfm: a file of 'name first_index last_index' lines, one per field")
    p.add_argument("--src", help="folder with the raw files for --convert")
    p.add_argument("--data_path", default=None, help="where atomic datasets live (RecBole's data_path, default dataset/)")
    p.add_argument("--resume", metavar="CHECKPOINT", help="continue the interrupted run that saved CHECKPOINT")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error instead of one line")
    d = p.add_argument_group("Ray Train data-parallel training (--distributed)")
    d.add_argument("--distributed", type=int, metavar="N", help="train with N Ray Train workers (DDP; gloo on CPU)")
    d.add_argument("--use_gpu", action="store_true", help="one GPU per worker (nccl)")
    d.add_argument("--cpus_per_worker", type=float, default=1)
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
    t.add_argument("--storage_path", default=None, help="where sweep folders go (default ray_results/); with "
                   "--distributed alone: where Ray keeps the run (default checkpoint_dir)")
    return p


def _list(data_path: str) -> None:
    from recbole_ext import properties, registry

    local = sorted(d.name for d in Path(data_path).iterdir() if d.is_dir() and not d.name.startswith(".")) \
        if Path(data_path).is_dir() else []
    print("plugin models :", ", ".join(sorted(registry.MODELS)))
    print("RecBole models:", ", ".join(registry.builtin_models()))
    print("protocols     :", ", ".join(properties.protocols()))
    from recbole_ext.quick_start import downloadable

    print(f"datasets      : ml-100k (bundled with RecBole); in {data_path}/: {', '.join(local) or 'none'}")
    names = downloadable()
    print(f"downloadable  : {len(names)} RecBole datasets, fetched on first use (e.g. ml-1m, ml-20m, yelp, "
          f"amazon-books; all of them: python -c \"from recbole_ext.quick_start import downloadable; "
          f"print(*downloadable())\")")


def literal(value: str):
    """A command-line value as RecBole types it: a Python literal, true/false/none, else the string."""
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return {"true": True, "false": False, "none": None}.get(value.lower(), value)


def overrides(rest: list[str]) -> dict:
    """The ``--key=value`` config flags argparse left over, typed; anything else is a one-line error."""
    found: dict = {}
    for i, arg in enumerate(rest):
        following = rest[i + 1] if i + 1 < len(rest) else None
        if not arg.startswith("--"):
            hint = "; subcommands (recommend, export) come first" if arg in SUBCOMMANDS else ""
            raise UsageError(f"unexpected argument {arg!r}{hint}")
        key, sep, value = arg[2:].partition("=")
        if not sep or not key:
            example = following if following is not None and not following.startswith("-") else "VALUE"
            raise UsageError(f"{arg}: config flags are written --key=value; write {arg}={example}")
        typed = literal(value)
        if key in found and found[key] != typed:
            raise UsageError(f"--{key} is given twice with different values ({found[key]!r} and {typed!r})")
        found[key] = typed
    return found


def _sweep(args: argparse.Namespace, dataset: str, files: list[str] | None, fixed: dict) -> int:
    from recbole_ext.tune import print_summary, run_sweep

    result = run_sweep(args.model, dataset, args.tune, config_file_list=files, config_dict=fixed,
                       num_samples=args.num_samples, scheduler=args.scheduler, search=args.search,
                       max_concurrent=args.max_concurrent, cpus_per_trial=args.cpus_per_trial,
                       gpus_per_trial=args.gpus_per_trial, grace_period=args.grace_period,
                       ray_address=args.ray_address, storage_path=args.storage_path or "ray_results",
                       workers_per_trial=args.distributed or 1)
    print_summary(result)
    return 0


SUBCOMMANDS = ("recommend", "export")


def _use_parser(command: str) -> argparse.ArgumentParser:
    p = _Parser(prog=f"{Path(sys.argv[0]).name or 'recbole-ext'} {command}", allow_abbrev=False,
                description="top-k items per user" if command == "recommend" else "embeddings with their raw ids")
    p.add_argument("--checkpoint", required=True, help="a .pth file saved by a training run")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    if command == "recommend":
        who = p.add_mutually_exclusive_group(required=True)
        who.add_argument("--users", help="comma-separated raw user ids")
        who.add_argument("--users_file", help="a file with one raw user id per line")
        p.add_argument("--k", type=int, default=10, help="items per user (default 10)")
        p.add_argument("--exclude_history", action="store_true", help="leave out items the user already has")
        p.add_argument("--output", help="write the table as .csv or .json as well")
    else:
        from recbole_ext.inference import FORMATS, WHATS

        p.add_argument("--what", choices=WHATS, required=True)
        p.add_argument("--format", choices=FORMATS, default="npy")
        p.add_argument("--output", required=True, help="file to write (npy: plus OUTPUT.ids.txt)")
    return p


def _use(command: str, argv: list[str]) -> int:
    """``recommend`` / ``export``: a trained model, raw ids in and out."""
    args = _use_parser(command).parse_args(argv)
    from recbole_ext.files import check_writable
    from recbole_ext.inference import TrainedModel, write_embeddings

    if args.output:  # before the checkpoint is loaded and scored, not after
        check_writable(Path(args.output).parent, "--output")
    if command == "recommend":
        if args.output and Path(args.output).suffix not in (".csv", ".json"):
            raise UsageError(f"--output={args.output}: write .csv or .json")
        if args.users_file:
            if not Path(args.users_file).is_file():
                raise FileNotFoundError(f"--users_file: {args.users_file} does not exist")
            users = [line.strip() for line in Path(args.users_file).read_text().splitlines() if line.strip()]
        else:
            users = [u.strip() for u in args.users.split(",") if u.strip()]
        if not users:
            raise UsageError("no users given")
        table = TrainedModel(args.checkpoint, args.device).recommend(users, args.k, args.exclude_history, warn=False)
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        if table.attrs["fewer_than_k"]:  # once, after the table, on stderr
            from recbole_ext.inference import fewer_rows_message

            print(f"warning: {fewer_rows_message(table.attrs['fewer_than_k'], len(set(users)), args.k)}",
                  file=sys.stderr)
        if args.output:
            from recbole_ext.files import replace_file

            out = Path(args.output)
            replace_file((lambda tmp: table.to_csv(tmp, index=False)) if out.suffix == ".csv"
                     else (lambda tmp: table.to_json(tmp, orient="records", indent=1)), out)
            print(f"wrote {out}")
        return 0
    ids, vectors = TrainedModel(args.checkpoint, args.device).embeddings(args.what)
    files = write_embeddings(ids, vectors, args.format, args.output)
    print(f"{args.what}: {vectors.shape[0]} x {' x '.join(map(str, vectors.shape[1:]))} -> {', '.join(map(str, files))}")
    return 0


def _model_help(argv: list[str]) -> str | None:
    """``--model=X --help``: the model's keys, defaults and meanings (None when no model is named)."""
    for i, arg in enumerate(argv):
        name = arg.partition("=")[2] if arg.startswith(("--model=", "-m=")) else \
            argv[i + 1] if arg in ("--model", "-m") and i + 1 < len(argv) else None
        if name:
            from recbole_ext.keydoc import keys_text

            return keys_text(name)
    return None


def _convert(args: argparse.Namespace) -> int:
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
    print(f"wrote {out}/ ; train with: recbole-ext --model=MODEL --dataset={out.name}{protocol}")
    return 0


def _train(args: argparse.Namespace, fixed: dict) -> int:
    """A training run: resumed, swept, distributed or plain."""
    from recbole_ext.quick_start import run

    sys.argv = sys.argv[:1]  # RecBole's Config would parse sys.argv again: the flags arrive as config_dict
    if args.distributed is not None and args.distributed < 1:  # 0 used to train one process without a word
        raise UsageError(f"--distributed={args.distributed}: give at least 1 worker, or leave the flag out to train "
                         "in one process")
    if args.data_path:
        fixed["data_path"] = args.data_path
    files = args.config_files.split() if args.config_files else None
    if args.resume:
        if args.distributed or args.tune:
            raise UsageError("--resume continues a single-process run; drop --distributed / --tune")
        if files:
            raise UsageError("--resume continues with the configuration saved in the checkpoint; drop --config_files")
        return _report(run(args.model, args.dataset, config_dict=fixed, resume=args.resume))
    args.model, args.dataset = args.model or DEFAULT_MODEL, args.dataset or DEFAULT_DATASET
    if args.tune:
        return _sweep(args, args.dataset, files, fixed)
    if args.distributed:
        from recbole_ext.distributed import run_distributed

        result = run_distributed(args.model, args.dataset, files, fixed, workers=args.distributed,
                                 use_gpu=args.use_gpu, cpus_per_worker=args.cpus_per_worker,
                                 ray_address=args.ray_address, storage_path=args.storage_path)
        print(f"\n{args.distributed} workers, {result['samples_per_s_per_worker']:.0f} training rows/s per worker")
        return _report(result)
    return _report(run(args.model, args.dataset, config_file_list=files, config_dict=fixed))


def _report(result: dict) -> int:
    print(f"\n{result['model']} on {result['dataset']}: {result['epochs']} epochs, "
          f"best valid {result['best_valid_score']:.4f}")
    print("test:", "  ".join(f"{k} {float(v):.4f}" for k, v in result["test_result"].items()))
    if result["pretrain_test_result"]:
        print("test of the pretrain stage's model:",
              "  ".join(f"{k} {float(v):.4f}" for k, v in result["pretrain_test_result"].items()))
    print(f"checkpoint: {result['checkpoint']}")
    return 0


def _dispatch(argv: list[str]) -> int:
    if not argv:
        _parser().print_help()
        return 0
    if argv[0] in SUBCOMMANDS:
        return _use(argv[0], argv[1:])
    if {"-h", "--help"} & set(argv):
        text = _model_help(argv)
        if text is not None:
            print(text)
            return 0
    args, rest = _parser().parse_known_args(argv)
    fixed = overrides(rest)
    if args.list:
        _list(args.data_path or "dataset")
        return 0
    if args.convert:
        return _convert(args)
    return _train(args, fixed)


def _one_line(exc: BaseException) -> str:
    """The error's first line; an unexpected kind (KeyError, OSError, ...) is named, with the --debug hint."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, (ValueError, FileNotFoundError, RuntimeError)):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text} (run again with --debug for the traceback)"


def _stdout_closed() -> bool:
    """Whether our own output pipe is the broken one: a newline to it fails too (harmless where it is fine)."""
    try:
        sys.stdout.write("\n")
        sys.stdout.flush()
    except BrokenPipeError:
        return True
    return False


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    try:
        return _dispatch(argv)
    except BrokenPipeError as exc:
        if _stdout_closed():  # the output went to a pipe closed early (| head): not an error of ours
            sys.stdout = open(os.devnull, "w")
            return 0
        if debug:
            raise
        print(f"error: {_one_line(exc)}", file=sys.stderr)  # another pipe (a worker, gloo, Ray) broke
        return 2
    except (Exception, KeyboardInterrupt) as exc:
        if debug:
            raise
        print(f"error: {_one_line(exc) if not isinstance(exc, KeyboardInterrupt) else 'interrupted'}", file=sys.stderr)
        return 2 if not isinstance(exc, KeyboardInterrupt) else 130
