"""What the benchmark scripts share: each measurement runs in a fresh child process (its own RNG state and peak
RSS) that prints one ``RESULT <json>`` line."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

# Where the raw data sets live: a benchmark reads them only to convert a dataset its --data_path lacks.
DATA_ENV = "RECBOLE_EXT_DATA"
SRC_HELP = ("folder holding the raw data sets, read once to convert a dataset missing from --data_path: "
            "ml-1m-first-half/ (ml-1m's users.dat, movies.dat and the ratings.dat lines of users 1-2,999) and "
            "Grocery_and_Gourmet_Food/ (ReChorus's train.csv, dev.csv, test.csv, item_meta.csv); "
            f"default: ${DATA_ENV}")
# What a PNG's bytes must not hold: a text search of the docs (for issue-style numbers, "#" and two digits, or
# folder names) would report the image as a binary match.
PNG_AVOID = re.compile(rb"#[0-9]{2}(?![0-9A-Za-z_])|specs[/]|shared[/]|issue [0-9]")


def add_src(ap) -> None:
    """The ``--src`` flag (default ``$RECBOLE_EXT_DATA``): the folder of the raw data sets, see :func:`raw_data`."""
    ap.add_argument("--src", default=os.environ.get(DATA_ENV), help=SRC_HELP)


def raw_data(src, name: str):
    """``src/name``: the raw files a conversion reads; stops with what to pass when ``src`` is not given."""
    from pathlib import Path

    if not src:
        raise SystemExit(f"{name} is not converted yet: pass --src=FOLDER (or set {DATA_ENV}=FOLDER), "
                         f"FOLDER/{name} holding its raw files")
    return Path(src).expanduser().resolve() / name


def save_png(fig, path, dpi: int = 120) -> None:
    """``fig.savefig(path, dpi=dpi)``, then :func:`clean_png`."""
    fig.savefig(path, dpi=dpi)
    clean_png(path)


def clean_png(path) -> None:
    """Re-encode the PNG at ``path`` so its bytes hold none of ``PNG_AVOID``: the same pixels, text chunks and dpi with
    another zlib level / strategy; if none will do, its own zlib stream cut into IDAT chunks inside each match."""
    import io
    import struct
    import zlib
    from pathlib import Path

    from PIL import Image, PngImagePlugin

    path = Path(path)
    data = path.read_bytes()
    if not PNG_AVOID.search(data):
        return
    with Image.open(path) as image:
        image.load()
    info = PngImagePlugin.PngInfo()
    for key, value in image.text.items():
        info.add_text(key, value)
    options = {"pnginfo": info, **({"dpi": image.info["dpi"]} if "dpi" in image.info else {})}
    for level in (6, 9, 8, 7, 5, 4, 3, 2, 1):
        for strategy in range(5):  # zlib's default, filtered, Huffman only, RLE, fixed
            buffer = io.BytesIO()
            image.save(buffer, "PNG", compress_level=level, compress_type=strategy, **options)
            if not PNG_AVOID.search(buffer.getvalue()):
                path.write_bytes(buffer.getvalue())
                return
    # the fallback: the same bytes in other IDAT chunks (chunk = length, type, data, CRC)
    chunks, pos = [], 8
    while pos < len(data):
        size, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunks.append((kind, data[pos + 8:pos + 8 + size]))
        pos += 12 + size
    kinds = [kind for kind, _ in chunks]
    first, last = kinds.index(b"IDAT"), len(kinds) - kinds[::-1].index(b"IDAT")
    stream = b"".join(body for _, body in chunks[first:last])

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    head = data[:8] + b"".join(chunk(kind, body) for kind, body in chunks[:first])
    tail = b"".join(chunk(kind, body) for kind, body in chunks[last:])
    cuts = {0, len(stream)}
    for _ in range(100):
        bounds = sorted(cuts)
        body_at = []  # (file offset of a chunk's data, its stream offset, its length)
        out, offset = bytearray(head), len(head)
        for start, end in zip(bounds, bounds[1:]):
            body_at.append((offset + 8, start, end - start))
            out += chunk(b"IDAT", stream[start:end])
            offset = len(out)
        out += tail
        hits = list(PNG_AVOID.finditer(out))
        if not hits:
            path.write_bytes(bytes(out))
            return
        new = set()
        for hit in hits:  # a new chunk from the match's second byte on; a match over a chunk's CRC or the next
            at = hit.start() + 1  # chunk's length and type: one data byte less in the chunk before (a new CRC)
            before = [(file, start, size) for file, start, size in body_at if file < at]
            file, start, size = before[-1] if before else (0, 0, 0)
            cut = start + (at - file if at < file + size else size - 1)
            if not before or not 0 < cut < len(stream) or cut in cuts:
                raise RuntimeError(f"{path}: bytes matching {PNG_AVOID.pattern!r} outside its image data")
            new.add(cut)
        cuts |= new
    raise RuntimeError(f"{path}: no encoding without {PNG_AVOID.pattern!r} found")


def launch(script: str, *args: str) -> dict:
    """Run ``python script args...``; its last ``RESULT`` line as a dict with ``status: ok``, or the failure's
    last stderr line as ``status``."""
    proc = subprocess.run([sys.executable, script, *args], capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        tail = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"
        return {"status": f"failed: {tail}"}
    return {"status": "ok", **json.loads(lines[-1][len("RESULT "):])}


def append_row(csv, row: dict) -> None:
    """Add one run's row to a results CSV, rewritten whole so rows with new columns stay aligned."""
    import pandas as pd

    rows = pd.concat([pd.read_csv(csv), pd.DataFrame([row])]) if csv.exists() else pd.DataFrame([row])
    rows.to_csv(csv, index=False)


def mean_std_table(frame, keys: list[str], cols: list[str], spread: tuple[str, ...]) -> str:
    """Markdown table of the ``status == ok`` rows grouped by ``keys``: ``mean ± std`` (over seeds) for the columns
    starting with ``spread``, the mean for the others."""
    ok = frame[frame.status == "ok"]
    rows = []
    for key, group in ok.groupby(keys, sort=False):
        cells = ["–" if c not in group or group[c].isna().all() else
                 f"{group[c].mean():.4f} ± {group[c].std(ddof=0):.4f}" if c.startswith(spread)
                 else f"{group[c].mean():.1f}" for c in cols]
        rows.append([*map(str, key), str(len(group)), *cells])
    header = [*keys, "seeds", *cols]
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join(r) + " |" for r in rows]) + "\n\n" + stamps_of(ok)


def stops_line(frame, keys: list[str]) -> str:
    """One line: what ended the runs of each group (``epochs`` = the cap, ``stopping_step`` / ``stopping_rule`` =
    early stopping, ``time_budget`` = the safety net)."""
    if "stop" not in frame:
        return ""
    ok = frame[frame.status == "ok"]
    stops = ok.groupby(keys, sort=False)["stop"].agg(
        lambda s: ", ".join(f"{k} ×{n}" for k, n in s.fillna("not recorded").value_counts().items()))
    return "What ended each run: " + "; ".join(f"{' '.join(map(str, k))}: {v}" for k, v in stops.items()) + "."


def paired_table(frame, keys: list[str], label: str, pairs: list[tuple[str, str]], metrics: list[str]) -> str:
    """Markdown: for each (other, base) pair of ``label`` values, ``other − base`` per seed on each metric (the
    seeds both ran, same ``keys``), with the mean and std of the differences and the per-seed values."""
    import pandas as pd

    ok = frame[frame.status == "ok"]
    rows = []
    for key, group in ok.groupby(keys, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        for other, base in pairs:
            a = group[group[label] == other].drop_duplicates("seed", keep="last").set_index("seed")
            b = group[group[label] == base].drop_duplicates("seed", keep="last").set_index("seed")
            seeds = sorted(set(a.index) & set(b.index))
            if not seeds:
                continue
            cells = []
            for m in metrics:
                diff = pd.Series([a.loc[s, m] - b.loc[s, m] for s in seeds])
                cells.append(f"{diff.mean():+.4f} ± {diff.std(ddof=0):.4f} ({', '.join(f'{d:+.4f}' for d in diff)})")
            rows.append([*map(str, key), f"{other} − {base}", str(len(seeds)), *cells])
    header = [*keys, "difference", "seeds", *metrics]
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join(r) + " |" for r in rows])


def plot_curves(out, prefix: str, png: str, metric: str) -> None:
    """``out/png``: the ``metric`` valid curve of every ``out/curves/<prefix>_<dataset>_<label>.json``, one panel
    per dataset."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = sorted((out / "curves").glob(f"{prefix}_*.json"))
    datasets = sorted({path.stem.split("_")[1] for path in curves})
    if not datasets:
        return
    fig, axes = plt.subplots(1, len(datasets), figsize=(7 * len(datasets), 4.5), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        shown = metric
        for path in (c for c in curves if c.stem.split("_")[1] == dataset):
            saved = json.loads(path.read_text())
            shown = metric if metric in saved else next(iter(saved))  # a dataset of another protocol has its own
            scores = saved[shown]
            ax.plot(range(1, len(scores) + 1), scores, lw=1, marker=".", label=path.stem.split("_", 2)[2])
        ax.set(title=dataset, xlabel="epoch", ylabel=shown)
        ax.legend(fontsize=6)
    fig.tight_layout()
    save_png(fig, out / png)
    plt.close(fig)


def one_thread_epoch(spec: dict, batches: int = 20) -> float:
    """Seconds per training epoch on one thread, from ``batches`` timed steps (after 2 warm-up steps) with the
    optimizer the run's trainer builds (e.g. fused Adam)."""
    import time

    import torch

    import recbole_ext  # noqa: F401  (registers the models)
    from recbole_ext.quick_start import _build, build_config
    from recbole_ext.trainer.base import resolve_trainer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    config = build_config(spec["model"], spec["dataset"], config_dict=spec["config"])
    net, train, _, _ = _build(config)
    optimizer = resolve_trainer(config)(config, net).optimizer
    train.trainer_ready = True  # a loader that refuses RecBole's plain Trainer: this loop trains the model _build made
    times = []
    for step, interaction in enumerate(train):
        start = time.perf_counter()
        optimizer.zero_grad()
        loss = net.calculate_loss(interaction)
        (sum(loss) if isinstance(loss, tuple) else loss).backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
        if step == batches + 1:
            break
    torch.set_num_threads(threads)
    return sum(times[2:]) / len(times[2:]) * len(train)


def parse(ap, name: str, one_run, summarise):
    """Add the flags every benchmark has (``--one`` for the child, ``--data_path``, ``--src``, ``--out``,
    ``--summarise_only``) and parse. Runs the child's ``one_run`` or rebuilds ``<name>.md`` with ``summarise`` and returns None; otherwise
    returns ``(args, data_path, out, csv)``."""
    import argparse
    import json
    from pathlib import Path

    import pandas as pd

    root = Path(__file__).resolve().parents[1]
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--data_path", default=str(root / "dataset"))
    add_src(ap)
    ap.add_argument("--out", default=str(root / "docs" / "results"))
    ap.add_argument("--summarise_only", action="store_true", help=f"rebuild {name}.md from {name}.csv")
    ap.add_argument("--time_budget", type=float, default=None,
                    help="seconds per training stage: a safety net that stops a run at its next validation (the row's "
                         "stop column says so); early stopping is the rule, --max_epochs the cap")
    args = ap.parse_args()
    if args.one:
        print("RESULT " + json.dumps(one_run(json.loads(args.one))), flush=True)
        return None
    data_path, out = Path(args.data_path).resolve(), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    csv = out / f"{name}.csv"
    if args.summarise_only:
        print(summarise(pd.read_csv(csv), out))
        return None
    return args, data_path, out, csv


def base_config(data_path, protocol: str, seed: int, epochs: int) -> dict:
    """The settings every benchmark run shares: quiet, checkpoints in the temp folder."""
    import tempfile
    from pathlib import Path

    return {"data_path": str(data_path), "protocol": protocol, "seed": seed, "epochs": epochs, "show_progress": False,
            "state": "WARNING", "checkpoint_dir": str(Path(tempfile.gettempdir()) / "recbole_ext_bench")}


def measured_run(spec: dict, curve_key: str) -> tuple[dict, dict]:
    """In the child: ``recbole_ext.run`` of ``spec`` (model, dataset, config, curve), the valid curve written to
    ``spec['curve']`` under ``curve_key``; -> (RecBole's result, its costs: epochs, parameters, s/epoch on all cores and
    on one thread, peak RSS, wall time)."""
    import json
    import resource
    import time
    from pathlib import Path

    import recbole_ext

    counted = {}
    start = time.perf_counter()
    result = recbole_ext.run(spec["model"], spec["dataset"], config_dict=spec["config"], on_trainer=lambda trainer:
                             counted.update(parameters=sum(p.numel() for p in trainer.model.parameters())))
    wall = time.perf_counter() - start
    single = one_thread_epoch(spec)
    curve = Path(spec["curve"])
    curve.parent.mkdir(parents=True, exist_ok=True)
    curve.write_text(json.dumps({curve_key: result["valid_scores"]}))
    return result, {
        "epochs": result["epochs"],
        "stop": result["stop"],
        "parameters": counted["parameters"],
        "s/epoch_train": sum(result["train_seconds"]) / max(len(result["train_seconds"]), 1),
        "s/epoch_eval": sum(result["valid_seconds"]) / max(len(result["valid_seconds"]), 1),
        "s/epoch_1thread": single,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "wall_s": wall,
    }


def ensure_ml1m_half(data_path, src) -> None:
    """Convert ``src/ml-1m-first-half`` (ml-1m users 1-2,999) into ``data_path/ml-1m-half`` once."""
    from pathlib import Path

    from recbole_ext.data.convert import convert_ml1m

    if not (Path(data_path) / "ml-1m-half").is_dir():
        convert_ml1m(raw_data(src, "ml-1m-first-half"), data_path, "ml-1m-half")


def cpu_name() -> str:
    """``lscpu``'s model name (the CPU a number was measured on), else the platform's word for it."""
    import platform
    import subprocess

    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or platform.machine()


def commit() -> str:
    """The short hash of the code a row was measured with (``+dirty`` when the tree had uncommitted changes)."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "recbole_ext", "properties"],
                               cwd=root, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def stamp() -> dict:
    """What every result row carries: commit, CPU, date."""
    import datetime

    return {"commit": commit(), "cpu": cpu_name(), "date": datetime.date.today().isoformat()}


def machine() -> str:
    import os
    import platform

    return f"{cpu_name()} ({os.cpu_count()} CPUs), Python {platform.python_version()}, CPU only"


def stamps_of(frame) -> str:
    """One line naming the commits, CPUs and dates of a page's rows."""
    parts = []
    for col, label in (("commit", "commits"), ("cpu", "CPUs"), ("date", "dates")):
        if col in frame:
            values = sorted({str(v) for v in frame[col].dropna()})
            parts.append(f"{label}: {', '.join(values) or 'not recorded'}")
    return "Rows measured at " + "; ".join(parts) + "." if parts else ""


def write_page(out, name: str, title: str, intro: str, table: str, reference: str, curve_metric: str) -> str:
    """``out/<name>.md`` (title, the machine, intro, table, reference figures) and ``out/<name>_curves.png``."""
    (out / f"{name}.md").write_text(f"# {title}\n\nGenerated by `benchmarks/{name}.py` on {machine()}. {intro}\n\n"
                                    f"{table}\n\n{reference}\n")
    plot_curves(out, name, f"{name}_curves.png", curve_metric)
    return table


def grid(script: str, name: str, args, data_path, out, csv, protocol: str, runs: dict, label: str, summarise,
         datasets: list[str]) -> None:
    """Every ``dataset × seed × run`` in a fresh child (``script --one``), each row printed and appended to ``csv``,
    then the page rebuilt. ``runs``: label -> (model, config overrides, extra row columns)."""
    import json

    import pandas as pd

    for dataset in datasets:
        for seed in args.seeds:
            for tag, (model, settings, extra) in runs.items():
                config = {**base_config(data_path, protocol, seed, args.max_epochs), **settings}
                curve = out / "curves" / f"{name}_{dataset}_{tag.replace(' ', '-')}_e{args.max_epochs}_seed{seed}.json"
                if getattr(args, "time_budget", None):
                    config["time_budget"] = args.time_budget
                row = {"dataset": dataset, label: tag, "seed": seed, "max_epochs": args.max_epochs, **extra, **stamp(),
                       **launch(script, "--one", json.dumps({"model": model, "dataset": dataset, "config": config,
                                                             "curve": str(curve.resolve())}))}
                print(json.dumps(row), flush=True)
                append_row(csv, row)
    print(summarise(pd.read_csv(csv), out))


def table_page(out, name: str, title: str, intro: str, frame):
    """``out/<name>.csv`` and ``out/<name>.md`` (title, the machine, intro, the table); -> pyplot, ready for the
    page's ``out/<name>.png``."""
    frame.to_csv(out / f"{name}.csv", index=False)
    (out / f"{name}.md").write_text(f"# {title}\n\nGenerated by `benchmarks/{name}.py` on {machine()}. {intro}\n\n"
                                    + frame.to_markdown(index=False) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
