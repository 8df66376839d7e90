"""The `gc2bench` console script: one entry point, one subcommand per tool."""

from __future__ import annotations

import argparse
import sys

from gc2bench.errors import ConfigError, Gc2benchError, report


def _table(args: argparse.Namespace) -> int:
    from gc2bench.results.table import print_table

    return print_table(
        args.results_dir,
        fmt=args.format,
        paper=args.paper,
        ci=args.ci,
        model=args.model,
        iterations=args.ci_iterations,
        tokens=args.tokens,
    )


def _plot(args: argparse.Namespace) -> int:
    from gc2bench.results.plots import plot_results

    return plot_results(args.results_dir, args.kind, args.out, model=args.model, method=args.method)


def _conformance(args: argparse.Namespace) -> int:
    from gc2bench.compressors.conformance import run_conformance

    return run_conformance(args.method, args.file)


BENCH_REPEATS = {"selection": 20, "hooks": 20, "prefill": 3, "gpu": 3}


def _flops(args: argparse.Namespace) -> int:
    from gc2bench.efficiency.flops import print_flops

    return print_flops(
        args.model, args.visual_tokens, args.text_tokens, as_json=args.json, bytes_per_element=args.bytes
    )


def _bench(args: argparse.Namespace) -> int:
    if args.repeats is None:
        args.repeats = BENCH_REPEATS[args.what]
    if args.what == "gpu":
        from gc2bench.bench.gpu import bench_gpu

        return bench_gpu(
            args.budget,
            args.out,
            args.compressors,
            args.ratios or "0.5,0.25,0.1",
            decode_tokens=args.decode_tokens,
            max_batch=args.max_batch,
            repeats=args.repeats,
            parts=args.parts,
        )
    if args.what == "prefill":
        from gc2bench.bench.prefill import bench_prefill

        return bench_prefill(
            args.model,
            args.compressors or None,
            args.ratios or "1,0.5,0.25,0.1",
            repeats=args.repeats,
            images=args.images,
            device=args.device,
            dtype=args.dtype,
            threads=args.threads,
            as_json=args.json,
        )
    if args.what == "selection":
        if not args.file:
            raise ConfigError("gc2bench bench selection: give the vectors FILE")
        from gc2bench.bench.selection import bench_selection

        return bench_selection(args.file, dim=args.dim, repeats=args.repeats)
    if args.what == "hooks":
        from gc2bench.bench.hooks import bench_hooks

        return bench_hooks(
            views=args.views,
            layers=args.layers,
            width=args.width,
            repeats=args.repeats,
            device=args.device,
            dtype=args.dtype or "float32",
        )
    raise ConfigError(f"gc2bench bench: unknown benchmark {args.what!r}")


def _run(args: argparse.Namespace) -> int:
    from gc2bench.entry import main as run_main

    sys.argv = ["gc2bench run", *args.overrides]
    run_main()
    return 0


def _env(args: argparse.Namespace) -> int:
    from gc2bench.environment import main as environment_main

    return environment_main((["--summary"] if args.summary else []) + (["--check"] if args.check else []))


def _inspect(args: argparse.Namespace) -> int:
    from gc2bench.inspection import main as inspect_main

    return inspect_main(args.overrides)


def _paragraphs(*texts: str) -> str:
    """Paragraphs wrapped for a RawDescriptionHelpFormatter description."""
    import textwrap

    return "\n\n".join(textwrap.fill(text, 100) for text in texts)


def _analyze(args: argparse.Namespace) -> int:
    from gc2bench.analysis.positional_bias import Options, main, parse_grid

    return main(
        Options(
            overrides=args.overrides,
            orders=args.orders,
            images=args.images,
            num_images=args.num_images,
            grid=parse_grid(args.grid),
            prompt=args.prompt,
            out=args.out,
            json_path=args.json,
            seed=args.seed,
        )
    )


def build_parser() -> argparse.ArgumentParser:
    from gc2bench.bench import PREFILL_COMPRESSORS

    parser = argparse.ArgumentParser(
        prog="gc2bench",
        description="Tools around gc2bench runs. Runs themselves start with `python run.py ...` (Hydra).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "run",
        help="one run or a -m sweep (the same as python run.py)",
        add_help=False,
        description="Hydra overrides exactly as for python run.py, e.g. gc2bench run "
        "compressor=globalcom2 ratio=0.1; gc2bench run --help lists the config groups.",
    )
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p.set_defaults(func=_run)

    p = sub.add_parser(
        "table",
        help="paper-style table from run records",
        description="Read the finished JSON records under DIR and print, per model, one row per "
        "method x ratio (baseline first), one column per benchmark in the papers' order, "
        "and Average (mean over benchmarks of score / uncompressed score, %). "
        "Missing runs show as -, never 0.",
    )
    p.add_argument("results_dir", metavar="DIR", help="a results directory (searched recursively for records)")
    p.add_argument("--format", choices=["md", "csv", "latex"], default="md")
    p.add_argument(
        "--paper",
        metavar="FILE",
        help="a published table (CSV as in experiments/*/: ratio, method, benchmark columns, "
        "average_pct): adds per row the paper's numbers and ours - paper",
    )
    p.add_argument(
        "--ci",
        action="store_true",
        help="95%% confidence intervals of each score, of its difference to the uncompressed run and of "
        "Average, by a paired bootstrap over documents (needs samples[].metric_value in records)",
    )
    p.add_argument("--ci-iterations", type=int, default=2000, metavar="N", help="bootstrap resamples (default 2000)")
    p.add_argument("--model", metavar="NAME", help="only this model's table (the records' model.name)")
    p.add_argument(
        "--tokens",
        action="store_true",
        help="add each row's mean equivalent image tokens (layer-averaged over the LLM's layers, newlines "
        "counted; vision-stage methods: the kept count) and their share of the uncompressed image",
    )
    p.set_defaults(func=_table)

    p = sub.add_parser(
        "plot",
        help="figures from run records (PNG)",
        description="ratio: Average (% of the uncompressed run) vs retention ratio R, one line per "
        "method (the papers' Fig. 1). sensitivity: Average vs tau and vs alpha for "
        "GlobalCom2, one line per ratio, from the records' compressor parameters "
        "(TCSVT Fig. 3). Average is taken over the benchmarks every plotted run has.",
    )
    p.add_argument("results_dir", metavar="DIR", help="a results directory (searched recursively for records)")
    p.add_argument("--kind", choices=["ratio", "sensitivity"], default="ratio")
    p.add_argument("--out", required=True, metavar="FILE.png", help="where to write the figure")
    p.add_argument("--model", metavar="NAME", help="only this model (default: one panel per model)")
    p.add_argument("--method", default="globalcom2", help="sensitivity: the compressor whose tau/alpha vary")
    p.set_defaults(func=_plot)

    p = sub.add_parser(
        "conformance",
        help="check a compressor against reference vectors",
        description="Run a compressor's selection in its default (reference) mode on every case "
        "of a vectors file and compare with the expected selection.",
    )
    p.add_argument("method", choices=["globalcom2"])
    p.add_argument("file", help="vectors JSON, e.g. tests/data/globalcom2_reference.json (the authors' selection)")
    p.set_defaults(func=_conformance)

    p = sub.add_parser(
        "inspect",
        help="one image through a model and compressor, as JSON",
        description="Run one image through the configured model and compressor and print one JSON "
        "object (tokens before/kept, newline tokens, kept per view, crop budgets, answer). "
        "Own keys: image=PATH (required), prompt=TEXT, viz=OUT.png (figure of the kept "
        "tokens), max_new_tokens=N, protocol=lmms_eval|llava_eval (how the prompt is rendered; default "
        "suite.protocol; the report shows the rendered prompt). Every other KEY=VALUE is "
        "a Hydra override as for "
        "run.py, e.g. compressor=globalcom2 ratio=0.1 model=tiny.",
    )
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p.set_defaults(func=_inspect)

    p = sub.add_parser(
        "flops",
        help="analytic LLM prefill TFLOPs and KV cache",
        description="TFLOPs of the LLM prefill (per layer 4Td*d_q + 4Td*d_kv + 4T^2*d_q + 6Tdm; "
        "= the papers' 8Td^2 + 4T^2d + 6Tdm for MHA) and the KV cache after it (K and V, "
        "all layers, MB = 10^6 bytes), for T = visual + text tokens.",
    )
    p.add_argument(
        "--model",
        required=True,
        help="a preset (llava_next_7b, llava_next_13b, llava_onevision_7b, cpu_small, tiny) or a local "
        "checkpoint/config directory (its text_config for multimodal models)",
    )
    p.add_argument("--visual-tokens", type=int, required=True, help="visual tokens entering the LLM, e.g. 2880")
    p.add_argument("--text-tokens", type=int, default=0, help="text tokens (the papers count none)")
    p.add_argument("--bytes", type=int, default=2, help="bytes per KV-cache element (2 = fp16/bf16, the papers')")
    p.add_argument("--json", action="store_true", help="one JSON object instead of text")
    p.set_defaults(func=_flops)

    p = sub.add_parser("bench", help="micro-benchmarks (see BENCHMARKS.md)")
    p.add_argument(
        "what",
        choices=["selection", "hooks", "prefill", "gpu"],
        help="gpu: every GPU claim in one command within --budget seconds (gpu-marked tests, 7B-shape "
        "prefill/decode/memory/throughput per method and R, KV cache = recomputation; tiny shapes "
        "on CPU); selection: GlobalCom² selection + packing, ms/image on CPU; "
        "hooks: CLS-attention capture cost next to the CLIP tower; "
        "prefill: measured LLM prefill vs analytic TFLOPs per method and ratio (random weights)",
    )
    p.add_argument("file", nargs="?", help="selection: vectors JSON whose cases give the image sizes, scores, ratios")
    p.add_argument("--dim", type=int, default=4096, help="feature dimension D (4096 = LLaVA-NeXT-7B)")
    p.add_argument(
        "--repeats", type=int, default=None, help="timed repeats, median taken (default: 20; prefill: 3 rounds)"
    )
    p.add_argument("--views", type=int, default=1, help="hooks: views per forward")
    p.add_argument("--layers", type=int, default=24, help="hooks: CLIP layers (24 = CLIP-L)")
    p.add_argument("--width", type=int, default=1024, help="hooks: CLIP width (1024 = CLIP-L)")
    p.add_argument("--device", default="cpu", help="hooks, prefill: cpu or cuda")
    p.add_argument(
        "--dtype",
        default=None,
        help="hooks, prefill: float32, float16 or bfloat16 (default float32; prefill on cuda: bfloat16)",
    )
    p.add_argument(
        "--model",
        default="cpu_small",
        help="prefill: a preset (LLaVA-NeXT: cpu_small, tiny, llava_next_7b, llava_next_13b; "
        "LLaVA-OneVision: cpu_small_onevision, tiny_onevision, llava_onevision_7b) or a directory "
        "with a LLaVA-NeXT or LLaVA-OneVision config.json; weights are random (OneVision: "
        "compressors asking for a CLS score run with compressor.score=cosine)",
    )
    p.add_argument(
        "--compressors",
        default=None,
        help="prefill, gpu: comma-separated conf/compressor names, none always run as the reference "
        f"(prefill default: {','.join(PREFILL_COMPRESSORS)}; gpu: every conf/compressor)",
    )
    p.add_argument(
        "--ratios",
        default=None,
        help="prefill, gpu: comma-separated retention ratios R (prefill default 1,0.5,0.25,0.1; gpu 0.5,0.25,0.1)",
    )
    p.add_argument("--budget", type=float, default=480, help="gpu: wall-clock budget in seconds (default 480)")
    p.add_argument(
        "--out", default=None, help="gpu: folder for bench_gpu.json and bench_gpu.md (default bench_gpu/<date>)"
    )
    p.add_argument("--decode-tokens", type=int, default=8, help="gpu: new tokens per answer (forced; default 8)")
    p.add_argument("--max-batch", type=int, default=32, help="gpu: largest batch tried (default 32)")
    p.add_argument(
        "--parts", default=None, help="gpu: comma-separated parts (default tests,llava_next,onevision,kv_cache)"
    )
    p.add_argument("--images", type=int, default=1, help="prefill: synthetic images per round")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="prefill: torch CPU threads (default: torch's, one per core; 1 is steadier on a shared machine)",
    )
    p.add_argument("--json", action="store_true", help="prefill: one JSON list of rows instead of the table")
    p.set_defaults(func=_bench)

    p = sub.add_parser(
        "env",
        help="the running environment against the lock",
        description="Whether every package gc2bench's lock (gc2bench/requirements-lock.txt) pins for "
        "this Python and platform is installed at its version, and the ones that are not "
        "(what every record's versions.lock holds). Refresh the lock: bash .ci/lock.",
    )
    p.add_argument("--summary", action="store_true", help="one line instead of JSON")
    p.add_argument("--check", action="store_true", help="exit 1 when the environment differs from the lock")
    p.set_defaults(func=_env)

    p = sub.add_parser(
        "analyze",
        help="analyses of compressor behaviour (positional-bias)",
        description="Analyses of how a compressor behaves on a model (not benchmark scores).",
    )
    analyses = p.add_subparsers(dest="analysis", required=True, metavar="ANALYSIS")
    p = analyses.add_parser(
        "positional-bias",
        help="image tokens an LLM-stage method keeps per crop position, crops in order and reversed",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=_paragraphs(
            "The AAAI GlobalCom2 paper's Fig. 4: do LLM-attention methods (FastV, PDrop, SparseVLM) keep more "
            "tokens in later crops, whatever the crops show?",
            "Each image is answered (one prefill) once per crop order: 'sequential' feeds the LLM the "
            "thumbnail, then crop 1, ..., crop n one after another; 'reversed' the thumbnail, then crop n, "
            "..., crop 1 (each crop its rows, a newline after each; 'packed' = transformers' "
            "row-interleaved order). After the method's last pruning stage, the image tokens the decoder "
            "kept are counted per crop. Prints a table (crop position x order: mean kept tokens, kept "
            "share, share of the method's ranking attention), writes a grouped bar chart (kept by "
            "position and by crop) and, with --json, every number. If position, not content, decides, "
            "later positions keep more in both orders and the two orders agree by position, not by crop.",
        ),
        epilog="examples:\n"
        "  gc2bench analyze positional-bias                                   # tiny model, FastV, R=0.25\n"
        "  gc2bench analyze positional-bias model=llava_next_7b ratio=0.1 --images textvqa_imgs/ "
        "--num-images 200 --out fig4.png --json fig4.json\n"
        "  gc2bench analyze positional-bias compressor=pdrop ratio=0.5 compressor.layers=[2,3]\n"
        "as a run option: python run.py -m compressor=fastv compressor.crop_order=sequential,reversed ...",
    )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="Hydra overrides as for run.py (all before or all after the options): model=NAME "
        "(default tiny), compressor=NAME (a conf/compressor config with crop_order; default fastv), "
        "ratio=R (default 0.25), and any other key, e.g. model.path=/ckpt compressor.layer=3",
    )
    p.add_argument(
        "--orders",
        default="sequential,reversed",
        help="comma-separated crop orders: sequential, reversed, packed (default sequential,reversed)",
    )
    p.add_argument(
        "--images",
        action="append",
        metavar="PATH",
        help="an image file or a folder of images; repeat for more (default: synthetic images, see "
        "--num-images, --grid)",
    )
    p.add_argument(
        "--num-images",
        type=int,
        default=None,
        metavar="N",
        help="synthetic images to make (default 8), or the first N of --images",
    )
    p.add_argument(
        "--grid",
        metavar="ROWSxCOLS",
        help="synthetic images' crop grid, one of the model's (default 2x2 if it has one, else its largest)",
    )
    p.add_argument("--prompt", default="What is in the image?", help="the question asked about every image")
    p.add_argument("--out", default="positional_bias.png", metavar="FILE.png", help="the bar chart (PNG)")
    p.add_argument(
        "--json",
        metavar="FILE",
        help="also write setup, rows, summaries and per-image counts as JSON "
        "(- for stdout; the table then goes to stderr)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic images")
    p.set_defaults(func=_analyze)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["run"]:  # everything after `run` is Hydra's (overrides, -m, --help, --cfg job)
        return _run(argparse.Namespace(overrides=argv[1:]))
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except Gc2benchError as error:
        return report(error)


if __name__ == "__main__":
    sys.exit(main())
