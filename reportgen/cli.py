"""Command line: a thin shell over the library. Only this module turns errors into exit codes.

Exit codes: 0 ok, 1 runtime failure, 2 config or usage error, 3 a gate condition failed (``checks:`` of a run,
``compare --fail-on``; everything is still written), 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from reportgen.errors import ConfigError, ReportgenError, UsageError

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reportgen", description="Batch CNN-visualization reports: HTML + PDF.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run a config and render its report")
    p.add_argument("config", type=Path)
    p.add_argument("--data", type=Path, help="image folder (overrides data.path)")
    p.add_argument("--output", type=Path, help="output folder (overrides run.output)")
    p.add_argument("--cache-dir", type=Path, help="cache folder (overrides run.cache_dir)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N (overrides run.device)")
    p.add_argument("--force", action="store_true", help="replace a finished run in the output folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("validate", help="check a config (and its layer names against the model); write nothing")
    p.add_argument("config", type=Path)
    p.add_argument("--explain", action="store_true",
                   help="also print every key's resolved value and where it came from (its line, or default)")

    p = sub.add_parser("config-schema", help="every config key with its type, default, bounds and help")
    p.add_argument("--format", choices=("text", "json", "markdown"), default="text",
                   help="text for people, json for tools, markdown for docs/CONFIG.md")

    p = sub.add_parser("layers", help="list a model's layers with their output shapes")
    p.add_argument("model", help="a config file, or timm:NAME, torchvision:NAME, factory:pkg.mod:fn, an exported "
                   "program (.pt2, torch.export.save) or a TorchScript file (.pt: listed without output shapes)")
    p.add_argument("--size", type=int, default=None, help="input size (default: the model's)")

    sub.add_parser("methods", help="list the visualization methods")

    p = sub.add_parser("compare", help="compare two finished runs; exit 3 when a --fail-on condition holds")
    p.add_argument("run_a", type=Path, metavar="RUN_A", help="the output folder of the first run (before)")
    p.add_argument("run_b", type=Path, metavar="RUN_B", help="the output folder of the second run (after)")
    p.add_argument("--output", type=Path, help="the comparison's folder (default: compare-A-vs-B beside RUN_B)")
    p.add_argument("--fail-on", action="append", default=[], metavar="CONDITION",
                   help="a gate condition that fails the comparison when true, e.g. 'accuracy_drop > 0.02' "
                        "(repeatable; docs/AUDIT.md lists the facts)")
    p.add_argument("--force", action="store_true", help="replace a previous comparison in the output folder")
    p.add_argument("--no-pdf", action="store_true", help="write no compare.pdf")

    p = sub.add_parser("rerun", help="repeat a finished run from its manifest and say what differs")
    p.add_argument("run_dir", type=Path, metavar="OUTPUT_DIR", help="the finished run's output folder")
    p.add_argument("--output", type=Path, help="where the rerun's report goes (default: OUTPUT_DIR-rerun)")
    p.add_argument("--data", type=Path, help="the image folder (required when the run redacted its paths)")
    p.add_argument("--force", action="store_true", help="replace a previous rerun in the output folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("cache", help="inspect or clear the tensor cache")
    p.add_argument("action", choices=("info", "clear"))
    p.add_argument("config", type=Path, nargs="?", help="a config, to use its run.cache_dir")
    p.add_argument("--cache-dir", type=Path, help="the cache folder")
    return parser


def _load(path: Path, data: Path | None = None):
    from reportgen.config import load_config

    return load_config(path, data_dir=data)


def _cmd_run(args: argparse.Namespace) -> int:
    from reportgen import distributed
    from reportgen.report import PdfJob

    # The PDF printer's interpreter and WeasyPrint import start first, in parallel with everything below
    # (under torchrun only on rank 0, which publishes; a config error is then printed once, by rank 0).
    pdf_job = PdfJob() if distributed.rank() == 0 else None
    try:
        from reportgen.runner import run

        def load():
            if args.data is not None and not args.data.is_dir():
                raise UsageError(f"--data: folder not found: {args.data.resolve()}")
            return _load(args.config, data=args.data).with_overrides(output=args.output, cache_dir=args.cache_dir,
                                                                     device=args.device)

        cfg = distributed.agreed(load, what="config")
        result = run(cfg, force=args.force, progress=not args.quiet, pdf_job=pdf_job)
    finally:
        if pdf_job is not None:
            pdf_job.cancel()
    if distributed.rank() != 0:  # rank 0 prints the run's summary
        return 0
    s = result.stats
    print(f"images: {s.images_ok} rendered, {s.images_skipped} skipped, {s.batches} batches on {s.device}")
    print(f"cache: {s.cache_hits} hits, {s.cache_misses} misses, {s.cache_writes} written ({cfg.run.cache_dir})")
    print(f"model work: {s.forward_passes} forward passes, {s.backward_passes} backward passes, "
          f"{s.map_passes} method runs with passes of their own")
    if s.oom_splits:
        print(f"out of memory {s.oom_splits} time(s): batches were halved and retried (same results)")
    secs = ", ".join(f"{k} {v:.2f}s" for k, v in s.seconds.items())
    print(f"time: {s.duration_s:.2f}s ({secs})")
    if s.metric_images:
        print(f"trust metrics: {s.metric_images} perturbed images through the model")
    print(f"report: {result.html}")
    if result.pdf:
        print(f"pdf:    {result.pdf}")
    if result.comparison:
        print(f"compared with {cfg.compare_to}: {result.comparison / 'compare.html'}")
    return _gates(result.checks)


def _gates(checks) -> int:
    """Print the gate verdicts; 3 when one failed (the run wrote everything), else 0."""
    failed = [c for c in checks if c["failed"]]
    for c in failed:
        print(f"gate failed: {c['condition']}: {c['detail']}", file=sys.stderr)
    if checks:
        print(f"gates: {len(checks) - len(failed)} passed, {len(failed)} failed")
    return 3 if failed else 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from reportgen.modelcard import source_summary
    from reportgen.runner import prepare

    cfg = _load(args.config)
    model = prepare(cfg)  # also refuses what the model source cannot run (TorchScript, exported programs)
    layers = len(cfg.kernels.layers) + len(cfg.feature_maps.layers) + len(cfg.cams.layers) + len(cfg.filters.layers)
    print(f"{args.config}: ok ({model.card.name}, {layers} layer references checked)")
    note = source_summary(cfg.model.source, model.card.layers)
    if note:
        print(f"note: {note}")
    if args.explain:
        from reportgen.config import explain_config

        print(f"resolved values (# line N: given on that line of {args.config}; # default: not given):")
        print("\n".join(explain_config(cfg)))
    return 0


def _cmd_config_schema(args: argparse.Namespace) -> int:
    from reportgen.config import config_schema

    sys.stdout.write(config_schema(args.format))
    return 0


def _cmd_layers(args: argparse.Namespace) -> int:
    from reportgen.config import ModelConfig, PreprocessConfig
    from reportgen.errors import ModelError
    from reportgen.modelcard import source_summary
    from reportgen.models import layer_table, load_model, parse_model_spec

    spec = args.model
    if spec.endswith((".yaml", ".yml")):
        model_cfg = _load(Path(spec)).model
    else:
        try:
            source, name = parse_model_spec(spec)
        except ModelError as exc:
            raise UsageError(str(exc)) from exc
        model_cfg = ModelConfig(source=source, name=name, labels="none", preprocess=PreprocessConfig())
    try:
        lm = load_model(model_cfg, "cpu")
        size = (args.size, args.size) if args.size else lm.preprocess.size
        rows = list(layer_table(lm.module, size, lm.device))
    except ReportgenError:
        raise
    except Exception as exc:  # a model can fail in any way: one line naming it, never a traceback
        raise ModelError(f"model {spec!r}: {type(exc).__name__}: {exc}") from exc
    width = max((len(r[0]) for r in rows), default=10)
    kind_width = max((len(r[1]) for r in rows), default=10)
    print(f"{lm.name}: {len(rows)} layers, input 3x{size[0]}x{size[1]}")
    for name, kind, shape in rows:
        print(f"{name:<{width}}  {kind:<{kind_width}}  {shape}")
    note = source_summary(model_cfg.source, lm.card.layers)
    if note:
        print(f"note: {note}")
    return 0


def _cmd_methods(_args: argparse.Namespace) -> int:
    from reportgen.methods import list_methods

    specs = list_methods()
    width = max(len(s.name) for s in specs)
    for s in specs:
        where = "" if s.kind != "cam" else (" per layer" if s.needs_layer else " on the input")
        print(f"{s.name:<{width}}  [{s.kind}{where}] {s.title}: {s.description} ({s.paper})")
        for p in s.params:
            bounds = f", {p.kind(p.minimum)}..{p.kind(p.maximum)}" if p.minimum is not None and p.maximum is not None else ""
            print(f"{'':<{width}}      {s.name}.{p.name} = {p.default!r} ({p.kind.__name__}{bounds}): {p.help}")
    return 0


def _cmd_cache(args: argparse.Namespace) -> int:
    from reportgen.cache import TensorCache

    if args.cache_dir is not None:
        root = args.cache_dir
    elif args.config is not None:
        root = _load(args.config).run.cache_dir
    else:
        raise UsageError("cache: give a config or --cache-dir")
    from reportgen.figcache import FigureStore

    cache, figures = TensorCache(root), FigureStore(Path(root) / "figures")
    if args.action == "info":
        info, figs = cache.info(), figures.info()
        print(f"cache {info.path}: {info.entries} entries, {info.bytes / 1e6:.2f} MB; "
              f"drawn figures of {figs.entries} images, {figs.bytes / 1e6:.2f} MB")
    else:
        removed, drawn = cache.clear(), figures.clear()
        print(f"cache {root}: removed {removed} entries and the drawn figures of {drawn} images")
    return 0


def _cmd_rerun(args: argparse.Namespace) -> int:
    from reportgen.rerun import rerun

    done = rerun(args.run_dir, output=args.output, data=args.data, force=args.force, progress=not args.quiet)
    print(f"rerun: {done.result.html}")
    if not done.inputs and not done.results:
        print("same inputs, same results: every recorded input and every prediction and raw map are equal")
    for line in done.inputs:
        print(f"differs: {line}")
    for line in done.results:
        print(f"result differs: {line}")
    return _gates(done.result.checks)


def _cmd_compare(args: argparse.Namespace) -> int:
    from reportgen.compare import compare_runs

    result = compare_runs(args.run_a, args.run_b, args.output, fail_on=args.fail_on, force=args.force,
                          pdf=not args.no_pdf)
    c = result.comparison
    print(f"compared {c.images['common']} images ({len(c.images['only_a'])} only in A, "
          f"{len(c.images['only_b'])} only in B): {len(c.flips)} flips")
    print(f"report: {result.html}")
    if result.pdf:
        print(f"pdf:    {result.pdf}")
    print(f"json:   {result.json}\njunit:  {result.xml}")
    for check in result.failed:
        print(f"gate failed: {check.condition}: {check.detail}", file=sys.stderr)
    if result.checks:
        print(f"gates: {len(result.checks) - len(result.failed)} passed, {len(result.failed)} failed")
    return result.exit_code


_COMMANDS = {"run": _cmd_run, "validate": _cmd_validate, "config-schema": _cmd_config_schema, "layers": _cmd_layers,
             "methods": _cmd_methods, "cache": _cmd_cache, "compare": _cmd_compare,
             "rerun": _cmd_rerun}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``reportgen`` and ``python -m reportgen``; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except ConfigError as exc:
        for line in exc.problems:
            print(f"error: {line}", file=sys.stderr)
        return exc.exit_code
    except ReportgenError as exc:
        if not getattr(exc, "quiet", False):  # under torchrun, rank 0 prints what failed on the others
            print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted: the previous report (if any) is untouched; cached results are kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
