"""The `gc2bench` console script: one entry point, one subcommand per tool."""

from __future__ import annotations

import argparse
import sys


def _table(args: argparse.Namespace) -> int:
    from gc2bench.results.table import print_table

    return print_table(args.results_dir, fmt=args.format)


def _conformance(args: argparse.Namespace) -> int:
    from gc2bench.compressors.conformance import run_conformance

    return run_conformance(args.method, args.file)


def _bench(args: argparse.Namespace) -> int:
    if args.what == "selection":
        if not args.file:
            raise SystemExit("gc2bench bench selection: give the vectors FILE")
        from gc2bench.efficiency.bench_selection import bench_selection

        return bench_selection(args.file, dim=args.dim, repeats=args.repeats)
    if args.what == "hooks":
        from gc2bench.efficiency.bench_hooks import bench_hooks

        return bench_hooks(views=args.views, layers=args.layers, width=args.width, repeats=args.repeats,
                           device=args.device, dtype=args.dtype)
    raise SystemExit(f"gc2bench bench: unknown benchmark {args.what!r}")


def _inspect(args: argparse.Namespace) -> int:
    from gc2bench.inspect import main as inspect_main

    return inspect_main(args.overrides)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gc2bench",
        description="Tools around gc2bench runs. Runs themselves start with `python run.py ...` (Hydra).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("table", help="paper-style table from run records",
                       description="Read the JSON records under DIR and print one row per method x ratio, "
                                   "one column per benchmark, and Average (%% of the uncompressed run).")
    p.add_argument("results_dir", metavar="DIR", help="a results directory (searched recursively for records)")
    p.add_argument("--format", choices=["md", "csv", "latex"], default="md")
    p.set_defaults(func=_table)

    p = sub.add_parser("conformance", help="check a compressor against reference vectors",
                       description="Run a compressor's selection in its default (reference) mode on every case "
                                   "of a vectors file and compare with the expected selection.")
    p.add_argument("method", choices=["globalcom2"])
    p.add_argument("file", help="vectors JSON, e.g. ../shared/vectors/globalcom2_reference.json")
    p.set_defaults(func=_conformance)

    p = sub.add_parser("inspect", help="one image through a model and compressor, as JSON",
                       description="Run one image through the configured model and compressor and print one JSON "
                                   "object (tokens before/kept, newline tokens, kept per view, crop budgets, answer). "
                                   "Own keys: image=PATH (required), prompt=TEXT, viz=OUT.png (figure of the kept "
                                   "tokens), max_new_tokens=N. Every other KEY=VALUE is a Hydra override as for "
                                   "run.py, e.g. compressor=globalcom2 ratio=0.1 model=tiny.")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p.set_defaults(func=_inspect)

    p = sub.add_parser("bench", help="micro-benchmarks (see BENCHMARKS.md)")
    p.add_argument("what", choices=["selection", "hooks"],
                   help="selection: GlobalCom² selection + packing, ms/image on CPU; "
                        "hooks: CLS-attention capture cost next to the CLIP tower")
    p.add_argument("file", nargs="?", help="selection: vectors JSON whose cases give the image sizes, scores, ratios")
    p.add_argument("--dim", type=int, default=4096, help="feature dimension D (4096 = LLaVA-NeXT-7B)")
    p.add_argument("--repeats", type=int, default=20, help="timed repeats (median taken)")
    p.add_argument("--views", type=int, default=1, help="hooks: views per forward")
    p.add_argument("--layers", type=int, default=24, help="hooks: CLIP layers (24 = CLIP-L)")
    p.add_argument("--width", type=int, default=1024, help="hooks: CLIP width (1024 = CLIP-L)")
    p.add_argument("--device", default="cpu", help="hooks: cpu or cuda")
    p.add_argument("--dtype", default="float32", help="hooks: float32, float16 or bfloat16")
    p.set_defaults(func=_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
