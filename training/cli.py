"""The ``dicomnode-train`` command line (SPEC section 7).

Exit codes as for ``dicomnode``: 0 success, 1 a user, config or data error with a one-line
message naming what to fix, 2 usage error. Expected errors never print a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from dicomnode.errors import DicomNodeError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dicomnode-train",
                                     description="Train, evaluate and export dicomnode models.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    tcia = sub.add_parser("tcia", help="query and download series from The Cancer Imaging "
                                       "Archive (public NBIA REST API)")
    tcia.add_argument("--base-url", default=None,
                      help="API root (default: TCIA's public NBIA v1 services)")
    tsub = tcia.add_subparsers(dest="tcia_command", required=True, metavar="ACTION")
    tsub.add_parser("collections", help="list the public collections")
    series = tsub.add_parser("series", help="list the series of a collection")
    series.add_argument("--collection", required=True)
    series.add_argument("--modality")
    series.add_argument("--json", action="store_true", help="print the API's JSON")
    download = tsub.add_parser("download", help="download series as DICOM (resumable)")
    download.add_argument("--collection", required=True)
    download.add_argument("--modality")
    download.add_argument("--max-series", type=int, default=None)
    download.add_argument("--out", required=True, type=Path)

    train = sub.add_parser("train", help="train a network from a TOML config")
    train.add_argument("config", type=Path)
    train.add_argument("--resume", action="store_true",
                       help="continue from the run folder's checkpoint")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("--minutes", type=float, default=None,
                       help="override [train] time_limit_minutes (a short run)")

    evaluate = sub.add_parser("evaluate", help="metrics of a model against the baselines")
    evaluate.add_argument("--model", required=True, help="model name in the zoo, or a "
                                                          "checkpoint file / run folder")
    evaluate.add_argument("--data", required=True, type=Path, action="append",
                          help="DICOM folder (any layout); repeat for several")
    evaluate.add_argument("--json", type=Path, help="write the full results here")
    evaluate.add_argument("--panels", type=Path,
                          help="folder for the PNG panels (default: beside --json, or "
                               "./eval_panels)")
    evaluate.add_argument("--models-dir", type=Path)
    evaluate.add_argument("--device", default="cpu")
    evaluate.add_argument("--threads", type=int, default=1)
    evaluate.add_argument("--no-guards", action="store_true",
                          help="score the network alone, without the node's guards (shows what "
                               "the guards cost or gain; never written to a card)")
    evaluate.add_argument("--max-slices", type=int, default=None,
                          help="at most N slices per series, evenly spaced (the same N "
                               "reproduces the same numbers)")
    evaluate.add_argument("--cross-scanner", action="store_true",
                          help="the data is from scanner models absent from the training "
                               "data: with --update-card, write [cross_scanner_metrics]")
    evaluate.add_argument("--update-card", action="store_true",
                          help="write these numbers into the zoo card's [metrics] (a zoo "
                               "model only; weights and the rest of the card unchanged)")

    pack = sub.add_parser("pack", help="a config's train and validation series as numpy "
                                       "packs (for a machine without the DICOM folders)")
    pack.add_argument("config", type=Path)
    pack.add_argument("out", type=Path, help="folder for train/, val/<source>/ and PACK.json")
    pack.add_argument("--max-mib", type=float, default=50.0,
                      help="fail when the packs are larger (default 50)")
    pack.add_argument("--val-slices", type=int, default=10,
                      help="validation slices per series, evenly spaced (default 10)")
    pack.add_argument("--slice-step", type=int, default=None,
                      help="override [data] slice_step: every Nth training slice")
    pack.add_argument("--val", action="append", default=None, metavar="FOLDER",
                      help="validation folder instead of [data] val (repeat for several)")

    export = sub.add_parser("export", help="write models/NAME/ (card + safetensors) from a "
                                           "checkpoint")
    export.add_argument("checkpoint", type=Path, help="checkpoint file or run folder")
    export.add_argument("--name", required=True)
    export.add_argument("--models-dir", type=Path)
    export.add_argument("--metrics", type=Path,
                        help="an evaluate --json file (default: the run's eval.json)")
    export.add_argument("--version")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return _run(args)
    except (DicomNodeError, ValueError, FileNotFoundError, OSError) as exc:
        print(f"dicomnode-train {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"dicomnode-train {args.command}: interrupted", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    if args.command == "tcia":
        from training import tcia

        return tcia.run_cli(args)
    if args.command == "train":
        from training.config import load_config
        from training.train import train

        config = load_config(args.config)
        if args.minutes is not None:
            if args.minutes <= 0:
                raise ValueError(f"--minutes must be positive, got {args.minutes}")
            config = dataclasses.replace(
                config, train={**config.train, "time_limit_minutes": args.minutes})
        run = train(config, resume=args.resume, progress=not args.no_progress)
        print(f"run folder: {run}")
        return 0
    if args.command == "evaluate":
        import torch

        from training.data import evenly_spaced, load_series
        from training.evaluate import evaluate, load_model, summary_lines

        if args.no_guards and args.update_card:
            raise ValueError("--update-card with --no-guards: a card's metrics are the node's "
                             "output, which always runs the guards; drop one of the two")
        if args.update_card and Path(args.model).exists():
            raise ValueError("--update-card needs a model name from the zoo, not a "
                             "checkpoint (export a checkpoint instead)")
        torch.set_num_threads(max(1, args.threads))
        model = load_model(args.model, args.models_dir)
        if args.no_guards:
            model = dataclasses.replace(model, guards=())
        series = load_series(args.data, model.modalities if len(model.modalities) == 1
                             and "*" not in model.modalities else None)
        if not series:
            raise ValueError(f"no DICOM image series under {', '.join(map(str, args.data))}")
        if args.max_slices is not None:
            if args.max_slices < 1:
                raise ValueError(f"--max-slices must be positive, got {args.max_slices}")
            series = [evenly_spaced(s, args.max_slices) for s in series]
        panels = args.panels or (args.json.parent / (args.json.stem + "_panels") if args.json
                                 else Path("eval_panels"))
        result = evaluate(model, series, panels, device=args.device, progress=True)
        if not result["series"]:
            raise ValueError(f"no series of the model's modalities ({', '.join(model.modalities)})"
                             " in the data")
        result["validation_data"] = [str(p.resolve()) for p in args.data]
        if args.max_slices is not None:
            result["max_slices"] = args.max_slices
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=1))
        print("\n".join(summary_lines(result)))
        print(f"panels: {panels}")
        if args.update_card:
            from training.export import update_card_metrics

            card = update_card_metrics(args.model, result, args.json or Path("evaluate"),
                                       args.models_dir, cross_scanner=args.cross_scanner)
            print(f"card updated: {card}")
        return 0
    if args.command == "pack":
        return _pack(args)
    from training.export import export

    folder = export(args.checkpoint, args.name, args.models_dir, args.metrics, args.version)
    print(f"wrote {folder}")
    return 0


def _pack(args: argparse.Namespace) -> int:
    """Training's own series selection (``load_data``: split, slice_step), then the packs."""
    from training.config import load_config
    from training.data import evenly_spaced
    from training.pack import pack
    from training.train import load_data

    if args.val_slices < 1:
        raise ValueError(f"--val-slices must be positive, got {args.val_slices}")
    config = load_config(args.config)
    # inverted copies are made again where the packs are trained on (data.invert)
    data = {**config.data, "invert": False}
    if args.slice_step is not None:
        if args.slice_step < 1:
            raise ValueError(f"--slice-step must be positive, got {args.slice_step}")
        data["slice_step"] = args.slice_step
    if args.val:
        data["val"] = [str(Path(v).resolve()) for v in args.val]
    config = dataclasses.replace(config, data=data)
    train, val = load_data(config)
    val = [evenly_spaced(s, args.val_slices) for s in val]
    summary = pack(train, val, args.out, max_mib=args.max_mib, about={
        "config": str(args.config), "name": config.name,
        "licences": list(config.data["licences"]), "slice_step": data["slice_step"]})
    print(f"packed {len(summary['train'])} train and {len(summary['val'])} validation series, "
          f"{summary['mib']} MiB, into {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
