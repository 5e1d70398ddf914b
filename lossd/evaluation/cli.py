"""``lossd eval PATH...``: the loss summary of dataset files, on this machine or on Dask.

Only argparse at import: ``lossd --help`` must not load pyarrow, Dask or the kernels.
Exit codes: 0 answered, 2 a bad argument, column, file or value (the message names it).
"""

from __future__ import annotations

import argparse
import sys

FORMATS = ("table", "json", "csv")


def _quantiles(text: str) -> tuple[float, ...]:
    try:
        qs = tuple(float(q) for q in text.split(",") if q.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None
    if not all(0.0 <= q <= 1.0 for q in qs):
        raise argparse.ArgumentTypeError(f"{text!r}: every quantile must be in [0, 1]")
    return qs


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("paths", nargs="+", metavar="PATH",
                    help="Parquet, Arrow IPC (Feather) or CSV files, folders, globs or fsspec URLs")
    ap.add_argument("--predictions", required=True, metavar="COL", help="column of predictions")
    ap.add_argument("--labels", required=True, metavar="COL", help="column of labels")
    ap.add_argument("--weights", metavar="COL", help="column of sample weights (sample_weight)")
    ap.add_argument("--by", metavar="COL", help="column of group keys (integers or strings): one summary per key")
    ap.add_argument("--input", default="logits", help="logits (default), probabilities or margins")
    ap.add_argument("--loss", default="cross_entropy", help="cross_entropy (default), focal, hinge, ...")
    ap.add_argument("--pos-weight", type=float, help="weight of positive labels (cross_entropy)")
    ap.add_argument("--label-smoothing", type=float, default=0.0, help="default 0")
    ap.add_argument("--eps", type=float, help="clip probabilities to [eps, 1-eps] (probabilities)")
    ap.add_argument("--gamma", type=float, default=2.0, help="focal loss gamma (default 2)")
    ap.add_argument("--alpha", type=float, help="focal loss alpha (default: none)")
    ap.add_argument("--dtype", default="float64", help="float64 (default) or float32")
    ap.add_argument("--quantiles", type=_quantiles, default=(), metavar="Q,Q",
                    help="loss quantiles from a KLL sketch, e.g. 0.5,0.99 (the sketch is built only then: "
                         "about 4x slower)")
    ap.add_argument("--format", choices=FORMATS, default="table", help="output (default table)")
    ap.add_argument("--file-format", choices=("parquet", "ipc", "csv"),
                    help="input format (default: by extension)")
    where = ap.add_mutually_exclusive_group()
    where.add_argument("--scheduler", metavar="ADDRESS", help="run on this Dask scheduler (tcp://host:8786)")
    where.add_argument("--workers", type=int, metavar="N",
                       help="run on a local Dask cluster of N one-thread worker processes")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar (none either when not a terminal)")
    ap.add_argument("--batch-rows", type=int, default=None, metavar="N",
                    help="rows per record batch (default 1048576); memory grows with it")


def run(args: argparse.Namespace) -> int:
    try:
        import pyarrow  # noqa: F401

        from lossd.evaluation import BATCH_ROWS, evaluate
        from lossd.evaluation.report import render
        from lossd.evaluation.sources import DatasetError
        from lossd.kernels import InputError
    except ImportError as exc:
        print(f"lossd eval: {exc.name} is missing: install the eval extra (pip install 'lossd[eval]')",
              file=sys.stderr)
        return 2
    try:
        result = evaluate(args.paths if len(args.paths) > 1 else args.paths[0],
                          predictions=args.predictions, labels=args.labels, weights=args.weights, by=args.by,
                          input=args.input, loss=args.loss, pos_weight=args.pos_weight,
                          label_smoothing=args.label_smoothing, eps=args.eps, gamma=args.gamma,
                          alpha=args.alpha, dtype=args.dtype, file_format=args.file_format,
                          sketch=bool(args.quantiles),  # only quantiles need it, and it is most of the cost
                          scheduler=args.scheduler, workers=args.workers,
                          progress=not args.no_progress and sys.stderr.isatty(),
                          batch_rows=args.batch_rows or BATCH_ROWS)
        out = render(result, args.format, args.quantiles, weighted=args.weights is not None)
    except (DatasetError, InputError) as exc:
        print(f"lossd eval: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(out)
    return 0
