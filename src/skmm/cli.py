"""The ``skmm`` command: a thin layer over :func:`skmm.select` and friends.

Input problems (missing files, pickles, bad shapes, unknown options) end with a one-line
``skmm: error: ...`` on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from . import __version__, distributed
from .api import get_method, methods, select
from .distributed import is_main
from .inputs import MissingDependencyError
from .io import load_array
from .selection import Selection, SelectionWarning
from .sources import check_same_sketch, open_features, source_blocks

EXIT_INPUT_ERROR = 2


class InputError(Exception):
    """A problem with what the user asked for, reported without a traceback."""


TARGET_TASK_NAMES = ("fashion-mnist-tops", "fashion-mnist-shift", "text-food")
"""The tasks of ``skmm bench target`` (bench.target.TARGET_TASKS and bench.text_target's)."""


def _parse_option(text: str) -> tuple[str, Any]:
    name, sep, raw = text.partition("=")
    if not sep or not name:
        raise InputError(f"--option expects NAME=VALUE, got {text!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return name.strip().replace("-", "_"), value


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="skmm",
        description="Select the few most useful examples of a large pool for finetuning.",
    )
    parser.add_argument("--version", action="version", version=f"skmm {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    sel = commands.add_parser(
        "select",
        help="select n rows of a feature/gradient matrix",
        description="Select n rows of an (N, r) matrix read from .npy, .npz or .safetensors.",
    )
    sel.add_argument(
        "features",
        help="matrix file (.npy memory-mapped, .npz dense or from scipy.sparse.save_npz, "
        ".safetensors) or a `skmm sketch` store",
    )
    sel.add_argument("--n", type=int, required=True, help="number of rows to select")
    sel.add_argument("--method", default="skmm", help="selection method (see `skmm methods`)")
    sel.add_argument("--seed", type=int, default=None, help="random seed (default: fresh)")
    sel.add_argument("--out", help="write the selection to .json (all), .npy or .npz")
    sel.add_argument("--key", help="array name inside an .npz/.safetensors features file")
    sel.add_argument("--labels", help="labels file (.npy, .npz, .safetensors or one per line)")
    sel.add_argument("--labels-key", help="array name inside the labels file")
    sel.add_argument(
        "--target",
        help="skmm, less, knn: select for a target set: its features as a matrix file or a "
        "`skmm sketch` store of the same model, parameters and sketch as the pool (less and "
        "knn need it)",
    )
    sel.add_argument("--target-key", help="array name inside an .npz/.safetensors target file")
    sel.add_argument("--sketch-dim", type=int, help="SkMM: sketch dimension m")
    sel.add_argument("--sketch", help="SkMM: gaussian, sparse_sign or none")
    sel.add_argument("--c", type=float, help="SkMM: moment target constant c")
    sel.add_argument("--rounding", help="SkMM: systematic, pivotal, topn or weighted")
    sel.add_argument(
        "--stratify",
        help="per-class budgets from --labels (or the store's labels): true/yes/1 or "
        "proportional, balanced; false/no/0 for none",
    )
    sel.add_argument("--plot", help="write a PNG picture of the selection (needs matplotlib)")
    sel.add_argument("--device", help="compute device, e.g. cpu or cuda")
    sel.add_argument(
        "--option",
        "-o",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="any other method option (VALUE parsed as JSON when it can be)",
    )
    sel.add_argument(
        "--quiet", action="store_true", help="no progress or summary (warnings still print)"
    )

    commands.add_parser("methods", help="list the selection methods and their options")

    sk = commands.add_parser(
        "sketch",
        help="sketch per-sample gradients of a model over a dataset into a store",
        description=(
            "Sketch per-sample gradients of the finetuned parameters into an on-disk store "
            "(resumable: rerun the same command after an interruption). TASK is "
            "MODULE:FUNCTION or path/to/file.py:FUNCTION; the function takes no arguments "
            "and returns (model, dataset)."
        ),
    )
    sk.add_argument("--task", required=True, help="MODULE:FUNCTION returning (model, dataset)")
    sk.add_argument("--out", required=True, help="store directory (created, or resumed)")
    sk.add_argument(
        "--params",
        nargs="+",
        default=["trainable"],
        help="finetuned parameters: names or glob patterns, last:K, or trainable (default)",
    )
    sk.add_argument("--sketch-dim", type=int, default=256, help="sketch dimension m")
    sk.add_argument(
        "--sketch", default="sparse_sign", help="sparse_sign (default), gaussian or kronecker"
    )
    sk.add_argument(
        "--target",
        default="jacobian",
        help="jacobian (default), loss, loss_random or jacobian_blocks (every output's "
        "gradient, K sketches per example)",
    )
    sk.add_argument("--seed", type=int, default=0, help="seed of the sketch and random targets")
    sk.add_argument("--batch-size", type=int, default=64, help="examples per vmap batch")
    sk.add_argument("--shard-rows", type=int, default=4096, help="rows per store shard")
    sk.add_argument("--device", help="compute device, e.g. cpu or cuda")
    sk.add_argument("--quiet", action="store_true", help="no progress bar or summary")

    bench = commands.add_parser("bench", help="run a benchmark and write its report")
    benches = bench.add_subparsers(dest="benchmark", required=True)
    synthetic = benches.add_parser(
        "synthetic",
        help="the paper's synthetic regression study (Gaussian mixture, ridge on the coreset)",
    )
    synthetic.add_argument("--out", default="bench-out/synthetic", help="output folder")
    synthetic.add_argument("--quick", action="store_true", help="small pool, few seeds")
    synthetic.add_argument("--ablation", action="store_true", help="SkMM's ablation instead")
    synthetic.add_argument("--seeds", type=int, help="selection seeds per pool (default 16)")
    synthetic.add_argument("--budgets", type=int, nargs="+", help="coreset sizes n")
    synthetic.add_argument("--pool-seeds", type=int, nargs="+", default=[0], help="pool seeds")
    synthetic.add_argument("--rows", type=int, help="pool size N (default 2000)")
    synthetic.add_argument("--features", type=int, help="dimension r (default 2400)")
    synthetic.add_argument("--clusters", type=int, help="number of clusters (default 8)")
    synthetic.add_argument("--methods", nargs="+", help="labels of the methods to run")
    synthetic.add_argument("--quiet", action="store_true", help="no progress bar")

    real = benches.add_parser(
        "real",
        help="real finetuning: select, train on the coreset, test (offline models and data)",
    )
    real.add_argument(
        "--task",
        default="food-reviews",
        help="food-reviews, fashion-mnist (offline) or stanford-cars (downloads from the hub)",
    )
    real.add_argument(
        "--out",
        default="bench-out/real",
        help="output folder: runs.csv journal (resumed; several processes may share it)",
    )
    real.add_argument("--cache", default="bench-out/cache", help="encodings and gradient store")
    real.add_argument("--protocols", nargs="+", default=["linear", "finetune"])
    real.add_argument(
        "--methods",
        nargs="+",
        help="methods (default: every method); METHOD@TARGET (skmm@jacobian_blocks, skmm@loss, "
        "skmm@loss_random) selects from that gradient target's sketch (finetune protocol)",
    )
    real.add_argument("--budgets", type=int, nargs="+", help="coreset sizes n")
    real.add_argument("--seeds", type=int, default=5, help="selection seeds")
    real.add_argument("--max-length", type=int, default=128, help="food-reviews: tokens per text")
    real.add_argument(
        "--image-size", type=int, default=96, help="fashion-mnist: pixels per side fed to the model"
    )
    real.add_argument(
        "--limit-train",
        type=int,
        help="pool = the first rows of the training split (default: food-reviews all 4,000, "
        "fashion-mnist 10,000)",
    )
    real.add_argument("--limit-test", type=int, help="use only the first rows of the test split")
    real.add_argument("--dataset", help="stanford-cars: hub id or save_to_disk folder")
    real.add_argument("--linear-model", help="stanford-cars: CLIP hub id or local folder")
    real.add_argument("--finetune-model", help="stanford-cars: ResNet hub id or local folder")
    real.add_argument(
        "--no-tune",
        action="store_true",
        help="finetune with the task's default learning rates instead of tuning them",
    )
    real.add_argument(
        "--stratify",
        action="store_true",
        help="every method selects with class-proportional budgets (stratify=True)",
    )
    real.add_argument("--quick", action="store_true", help="tiny pool, one seed (smoke test)")
    real.add_argument("--quiet", action="store_true", help="no progress bars")

    target = benches.add_parser(
        "target",
        help="select for a target task: a pool, a target set of other classes, its test split",
    )
    target.add_argument(
        "--task",
        default="fashion-mnist-tops",
        choices=TARGET_TASK_NAMES,
        help="fashion-mnist-tops (four classes), fashion-mnist-shift (a shifted class mix) or "
        "text-food (SmolLM2 with LoRA; a pool of three text tasks, the food reviews the target)",
    )
    target.add_argument(
        "--out", default="bench-out/target", help="output folder: runs.csv journal (resumed)"
    )
    target.add_argument("--cache", default="bench-out/cache", help="encodings and tuning")
    target.add_argument(
        "--methods",
        nargs="+",
        help="uniform, less, knn, skmm-targeted (SkMM given the target), skmm-near (the same, "
        "choosing among the 4n pool rows nearest the target), skmm (default: all); "
        "skmm-near-2 and skmm-near-8 (other candidate factors) run only when named",
    )
    target.add_argument(
        "--features",
        choices=["embeddings", "gradients", "jacobian"],
        help="what the selectors see: the embeddings, LESS's sketched warm-up loss gradients, "
        "or (text-food only) the warm-up model's sketched Jacobian (default: embeddings for "
        "the image tasks, gradients for text-food)",
    )
    target.add_argument("--budgets", type=int, nargs="+", help="coreset sizes n")
    target.add_argument(
        "--seeds", type=int, help="selection seeds (default: 5 for images, 3 for text-food)"
    )
    target.add_argument(
        "--image-size", type=int, default=96, help="pixels per side fed to the model"
    )
    target.add_argument(
        "--limit-train", type=int, help="pool: the first rows of the training split"
    )
    target.add_argument("--limit-test", type=int, help="use only the first rows of the test split")
    target.add_argument(
        "--no-references",
        action="store_true",
        help="skip the reference runs (oracle, target set only, full pool, zero-shot): they "
        "do not depend on --features, so one grid of each task can hold them",
    )
    target.add_argument("--quick", action="store_true", help="tiny pool, one seed (smoke test)")
    target.add_argument("--quiet", action="store_true", help="no progress bars")

    demo = commands.add_parser("demo", help="run the end-to-end demo")
    demo.add_argument(
        "--synthetic", action="store_true", help="the synthetic regression demo instead"
    )
    demo.add_argument("--quick", action="store_true", help="with --synthetic: a smaller pool")
    return parser


STRATIFY_WORDS: dict[str, bool | str | None] = {
    **dict.fromkeys(("true", "yes", "1"), True),
    **dict.fromkeys(("false", "no", "0"), False),
    "proportional": "proportional",
    "balanced": "balanced",
}


def _stratify(text: str | None) -> bool | str | None:
    """--stratify as the API's value: True, "proportional", "balanced", False (no strata), or
    None when not given (each method's default: SkMM stratifies whenever labels are given)."""
    if text is None:
        return None
    word = text.strip().lower()
    if word not in STRATIFY_WORDS:
        raise InputError(
            f"--stratify takes true/false (also yes/no, 1/0), proportional or balanced; "
            f"got {text!r}"
        )
    return STRATIFY_WORDS[word]


def _select_command(args: argparse.Namespace) -> int:
    options: dict[str, Any] = dict(_parse_option(text) for text in args.option)
    stratify = _stratify(args.stratify)
    named = {
        "sketch_dim": args.sketch_dim,
        "sketch": args.sketch,
        "c": args.c,
        "rounding": args.rounding,
        "stratify": stratify,
        "device": args.device,
    }
    options.update({k: v for k, v in named.items() if v is not None})
    if not args.quiet:
        options.setdefault("progress", None)
    if not args.target and args.method in methods() and get_method(args.method).requires_target:
        raise InputError(
            f"--method {args.method} selects for a target set: pass --target FILE (the "
            "target's features, of the same kind as the pool's)"
        )
    blocks = source_blocks(args.features)
    if args.method == "skmm" and (blocks or 1) > 1:  # a store of jacobian_blocks gradients
        options.setdefault("blocks", blocks)
    features, labels = open_features(args.features, args.key)
    target = None
    if args.target:
        check_same_sketch(args.features, args.target)
        target = open_features(args.target, args.target_key)[0]
    if args.labels:
        labels = load_array(args.labels, args.labels_key, mmap=False)
    elif stratify not in (None, False) and labels is None:
        raise InputError("--stratify needs --labels (or a store that holds labels)")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SelectionWarning)
        selection = select(
            features,
            args.n,
            args.method,
            labels=labels,
            target=target,
            random_state=args.seed,
            **options,
        )
    for warning in caught:
        if not issubclass(warning.category, SelectionWarning):
            warnings.warn_explicit(
                warning.message, warning.category, warning.filename, warning.lineno
            )
    if not is_main():
        return 0
    if args.out:
        try:
            selection.save(args.out)
        except OSError as exc:
            raise InputError(f"cannot write --out {args.out}: {_os_problem(exc)}") from None
    else:
        sys.stdout.write("\n".join(str(i) for i in selection.indices) + "\n")
    if args.plot:
        selection.plot(features, labels, path=args.plot)
    if args.quiet:
        for warning in caught:
            if issubclass(warning.category, SelectionWarning):
                sys.stderr.write(f"skmm: warning: {warning.message}\n")
    else:
        _print_summary(selection, args.out, args.plot)
    return 0


def _os_problem(exc: OSError) -> str:
    """The reason of an OSError, naming its path unless it is a temporary file of ours."""
    name = Path(str(exc.filename)).name if exc.filename else ""
    if not exc.strerror or not name or (name.startswith(".") and name.endswith(".tmp")):
        return exc.strerror or str(exc)
    return f"{exc.strerror}: {exc.filename}"


def _print_summary(selection: Selection, out: str | None, plot: str | None) -> None:
    """:meth:`Selection.summary` on stderr (stdout holds the indices), and what was written."""
    lines = [selection.summary()]
    if out:
        lines.append(f"  written to {out}")
    if plot:
        lines.append(f"  picture written to {plot}")
    sys.stderr.write("\n".join(lines) + "\n")


def _load_task(spec: str) -> Callable[[], Any]:
    """The function named by MODULE:FUNCTION or path/to/file.py:FUNCTION (the one import)."""
    module_name, sep, function_name = spec.rpartition(":")
    if not sep or not module_name or not function_name:
        raise InputError(f"--task expects MODULE:FUNCTION, got {spec!r}")
    if module_name.endswith(".py"):
        path = Path(module_name)
        if not path.is_file():
            raise InputError(f"--task file {path} does not exist")
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        if module_spec is None or module_spec.loader is None:
            raise InputError(f"--task file {path} cannot be imported")
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            raise InputError(f"--task module {module_name!r} not found ({exc})") from exc
    function = getattr(module, function_name, None)
    if not callable(function):
        raise InputError(f"--task: {module_name} has no function {function_name!r}")
    return function


@contextlib.contextmanager
def _task_code(what: str, hint: str) -> Iterator[None]:
    """Report an unexpected exception from the task's own code as one error line.

    skmm's own input errors (ValueError, TypeError, OSError, ...) pass through unchanged.
    """
    try:
        yield
    except (InputError, ValueError, TypeError, OSError, MissingDependencyError):
        raise
    except Exception as exc:
        raise InputError(f"{what} raised {type(exc).__name__}: {exc} ({hint})") from exc


def _sketch_command(args: argparse.Namespace) -> int:
    from .gradients import sketch_gradients

    with _task_code(f"--task {args.task}", "call it in Python for the traceback"):
        produced = _load_task(args.task)()
    if not isinstance(produced, (tuple, list)) or len(produced) != 2:
        raise InputError(f"--task {args.task} must return (model, dataset)")
    model, data = produced
    params = args.params[0] if len(args.params) == 1 else args.params
    with _task_code(
        f"the model or dataset of --task {args.task}",
        "the store keeps every complete shard: fix the task and rerun to resume",
    ):
        result = sketch_gradients(
            model,
            data,
            params=params,
            sketch_dim=args.sketch_dim,
            sketch=args.sketch,
            seed=args.seed,
            target=args.target,
            batch_size=args.batch_size,
            device=args.device,
            store=args.out,
            shard_rows=args.shard_rows,
            progress=False if args.quiet else None,
            load=False,
        )
    if not args.quiet and is_main():
        meta = result.metadata
        sys.stderr.write(
            f"sketched {result.features.shape[0]} examples: r = {meta['n_params']} parameters "
            f"({len(meta['params'])} tensors) -> m = {meta['sketch_dim']} ({meta['sketch']}, "
            f"target {meta['target']}); store {args.out}"
            f"{'' if result.labels is None else ' (with labels)'}\n"
        )
    return 0


def _methods_command() -> int:
    for name in methods():
        cls = get_method(name)
        options = [p for p in cls.param_names() if p != "n"]
        summary = (cls.__doc__ or "").strip().splitlines()[0]
        if cls.requires_target:
            summary = f"[needs --target] {summary}"
        print(f"{name:12s} {summary}")
        print(f"{'':12s} options: {', '.join(options)}")
    return 0


def _bench_command(args: argparse.Namespace) -> int:
    if args.benchmark == "real":
        return _real_command(args)
    if args.benchmark == "target":
        return _target_command(args)
    from .bench.synthetic import synthetic_report

    pool = {
        key: value
        for key, value in (
            ("n_rows", args.rows),
            ("n_features", args.features),
            ("n_clusters", args.clusters),
        )
        if value is not None
    }
    report = synthetic_report(
        Path(args.out),
        quick=args.quick,
        ablation=args.ablation,
        seeds=args.seeds,
        budgets=args.budgets,
        pool_seeds=args.pool_seeds,
        pool_options=pool,
        labels=args.methods,
        progress=False if args.quiet else None,
    )
    print(report.markdown)
    print("written: " + ", ".join(str(path) for path in report.files))
    return 0


def _target_command(args: argparse.Namespace) -> int:
    from .bench.text_target import TEXT_TASKS

    if args.task in TEXT_TASKS:
        return _text_target_command(args)
    from .bench.target import target_report

    given = {
        name: value
        for name in ("methods", "budgets", "limit_train", "limit_test")
        if (value := getattr(args, name))
    }
    report = target_report(
        args.out,
        args.task,
        quick=args.quick,
        cache_dir=args.cache,
        seeds=5 if args.seeds is None else args.seeds,
        features=_image_features(args.features),
        references=not args.no_references,
        image_size=args.image_size,
        progress=False if args.quiet else None,
        **given,
    )
    print(report.markdown)
    print("written: " + ", ".join(str(path) for path in report.files))
    return 0


def _image_features(features: str | None) -> str:
    if features == "jacobian":
        raise ValueError(
            "--features jacobian is for text-food; the image tasks' probe has "
            "embeddings as its Jacobian (use --features embeddings)"
        )
    return features or "embeddings"


def _text_target_command(args: argparse.Namespace) -> int:
    from .bench.text_target import text_target_report

    if args.limit_train is not None:
        raise ValueError("--limit-train does not apply to text-food (its pool is fixed)")
    given = {name: value for name in ("methods", "budgets") if (value := getattr(args, name))}
    report = text_target_report(
        args.out,
        quick=args.quick,
        cache_dir=args.cache,
        seeds=3 if args.seeds is None else args.seeds,
        features=args.features or "gradients",
        test_rows=args.limit_test,
        references=not args.no_references,
        progress=False if args.quiet else None,
        **given,
    )
    print(report.markdown)
    print("written: " + ", ".join(str(path) for path in report.files))
    return 0


def _real_command(args: argparse.Namespace) -> int:
    from .bench.real import real_report

    given = ("protocols", "methods", "budgets", "seeds", "max_length", "image_size", "stratify")
    sources = ("dataset", "linear_model", "finetune_model")
    report = real_report(
        args.out,
        args.task,
        quick=args.quick,
        cache_dir=args.cache,
        tune=not args.no_tune,
        sources={name: value for name in sources if (value := getattr(args, name)) is not None},
        limit_train=args.limit_train or None,
        limit_test=args.limit_test or None,
        progress=False if args.quiet else None,
        **{name: getattr(args, name) for name in given},
    )
    print(report.markdown)
    print("written: " + ", ".join(str(path) for path in report.files))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``skmm`` command; returns the exit status."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    ended = False
    try:
        status = _run_command(args)
        ended = True
        return status
    except (InputError, ValueError, TypeError, OSError, MissingDependencyError) as exc:
        sys.stderr.write(f"skmm: error: {exc}\n")
        return EXIT_INPUT_ERROR
    except KeyboardInterrupt:
        sys.stderr.write("skmm: interrupted\n")
        return 130
    finally:
        distributed.shutdown(synchronize=ended)


def _run_command(args: argparse.Namespace) -> int:
    if args.command == "select":
        return _select_command(args)
    if args.command == "methods":
        return _methods_command()
    if args.command == "sketch":
        return _sketch_command(args)
    if args.command == "bench":
        return _bench_command(args)
    from .demo import run_demo, run_real_demo

    return run_demo(quick=args.quick) if args.synthetic else run_real_demo()


if __name__ == "__main__":
    sys.exit(main())
