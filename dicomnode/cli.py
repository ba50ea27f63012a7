"""The ``dicomnode`` command line: parses arguments, configures logging, maps errors to exits.

Exit codes: 0 success, 1 user/config/data error (a message naming what to fix; a config error
lists each problem on its own line), 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from dicomnode import __version__
from dicomnode.config import Config, load_config
from dicomnode.engine.choices import DEVICE_PATTERN, RUNTIME_CHOICES
from dicomnode.errors import ConfigError, DeriveError, DicomNodeError, ModelError

log = logging.getLogger("dicomnode.cli")

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
_AE_ADDRESS = re.compile(r"^(?P<aet>[^@]{1,16})@(?P<host>[^:]+):(?P<port>\d{1,5})$")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    from dicomnode.logs import configure

    configure(args.log_level, args.log_json)
    try:
        return int(args.handler(args) or EXIT_OK)
    except DicomNodeError as exc:
        print(f"dicomnode {args.command}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"dicomnode {args.command}: interrupted", file=sys.stderr)
        return EXIT_ERROR


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, default=Path("config.toml"),
                        help="configuration file (default: ./config.toml)")
    common.add_argument("--log-json", action="store_true", help="log one JSON object per line")
    common.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser = argparse.ArgumentParser(
        prog="dicomnode", description="DICOM processing node: enhance and return derived series"
    )
    parser.add_argument("--version", action="version", version=f"dicomnode {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", parents=[common], help="run the node until SIGINT/SIGTERM")
    p.set_defaults(handler=_serve)
    p = sub.add_parser("check-config", parents=[common],
                       help="validate the config and every model it names")
    p.set_defaults(handler=_check_config)
    p = sub.add_parser("echo", parents=[common], help="C-ECHO a destination or AET@host:port")
    p.add_argument("destination", metavar="DEST")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")
    p.set_defaults(handler=_echo)
    p = sub.add_parser("status", parents=[common], help="series and jobs by state")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_status)
    p = sub.add_parser("retry", parents=[common], help="re-queue failed work")
    p.add_argument("series_uid", nargs="?", metavar="SERIES_UID")
    p.add_argument("--failed", action="store_true", help="every failed job")
    p.set_defaults(handler=_retry)
    p = sub.add_parser("enhance", parents=[common],
                       help="offline: enhance every series in IN_DIR into OUT_DIR")
    p.add_argument("in_dir", type=Path, metavar="IN_DIR")
    p.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    p.add_argument("--model", required=True, help="model name in the zoo (dicomnode models)")
    p.add_argument("--device", default="auto", type=_device, help="auto|cpu|cuda|cuda:N|mps")
    p.add_argument("--runtime", default="auto", choices=RUNTIME_CHOICES,
                   help="what runs a learned model on a CPU: auto (ONNX Runtime where it "
                        "measures >= 1.5x faster than torch at load), torch or onnxruntime")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--difference", action="store_true",
                   help="also write each image's difference series (derived minus source)")
    p.set_defaults(handler=_enhance)
    p = sub.add_parser("init", parents=[common],
                       help="write a commented config.toml and the storage folders into DIR")
    p.add_argument("directory", type=Path, metavar="DIR")
    p.add_argument("--ae-title", default="DICOMNODE", help="called AE title (default DICOMNODE)")
    p.add_argument("--port", type=int, default=11112, help="DICOM port (default 11112)")
    p.add_argument("--http-port", type=int, default=8080, help="status port (default 8080)")
    p.add_argument("--force", action="store_true", help="replace an existing config.toml")
    p.set_defaults(handler=_init)
    p = sub.add_parser("models", parents=[common], help="list the model zoo")
    p.add_argument("--json", action="store_true")
    p.add_argument("--architectures", action="store_true",
                   help="list the registered network families instead")
    p.set_defaults(handler=_models)
    return parser


def _device(value: str) -> str:
    if not DEVICE_PATTERN.match(value):
        raise argparse.ArgumentTypeError(f"{value!r}: expected auto, cpu, cuda, cuda:N or mps")
    return value


def _load(args: argparse.Namespace) -> Config:
    """The checked config, TLS files included (missing or world-readable keys refused)."""
    from dicomnode.config import check_files
    from dicomnode.engine.cards import model_names

    config = load_config(args.config, model_names())
    problems = check_files(config)
    if problems:
        raise ConfigError(problems, str(args.config))
    return config


def _serve(args: argparse.Namespace) -> int:
    from dicomnode.node import Node
    from dicomnode.worker import load_worker_model

    config = _load(args)
    for rule in config.rules:  # refuse to start with a model that cannot load
        load_worker_model(rule.model, config.worker)
    Node(config).run()
    return EXIT_OK


def _open_index(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from dicomnode.spool import Spool

    config = _load(args)
    if not (config.node.storage_dir / "index.sqlite").exists():
        raise DicomNodeError(
            f"no index at {config.node.storage_dir / 'index.sqlite'}: the node has not "
            "received anything yet, or node.storage_dir points elsewhere"
        )
    return Spool(config.node.storage_dir)


def _status(args: argparse.Namespace) -> int:
    spool = _open_index(args)
    try:
        status = spool.status()
        cluster = _cluster_status(_load(args))
        if cluster is not None:
            status["cluster"] = cluster
        if args.json:
            status["series_list"] = spool.series_list()
            print(json.dumps(status, indent=2, default=str))
            return EXIT_OK
    finally:
        spool.close()
    print(f"instances: {status['instances']}")
    print("series:  " + (", ".join(f"{k}={v}" for k, v in sorted(status["series"].items()))
                         or "none"))
    print("jobs:    " + (", ".join(f"{k}={v}" for k, v in sorted(status["jobs"].items()))
                         or "none"))
    for name, counts in sorted(status["destinations"].items()):
        error = counts.pop("last_error", "")
        line = ", ".join(f"{k}={v}" for k, v in sorted(counts.items()))
        print(f"destination {name}: {line}" + (f"; last error: {error}" if error else ""))
    for failed in status["failed_jobs"]:
        print(f"failed: series {failed['series_uid']} rule {failed['rule']}: {failed['error']}")
    if cluster is not None:
        print(_cluster_line(cluster))
    return EXIT_OK


def _cluster_status(config: Config) -> dict | None:
    """``[cluster] engine = "ray"``: the state the running node last wrote (or that it has
    written none yet)."""
    if config.cluster.engine != "ray":
        return None
    from dicomnode.cluster import read_status

    return read_status(config.node.storage_dir) or {
        "engine": "ray", "address": config.cluster.address, "up": False,
        "reason": "no cluster status written yet: is the node running?"}


def _cluster_line(cluster: dict) -> str:
    where = f"cluster: ray at {cluster.get('address')}"
    if cluster.get("up"):
        return (f"{where}: up, {cluster.get('alive', 0)}/{cluster.get('replicas', 0)} model "
                f"replicas alive, {cluster.get('failovers', 0)} call(s) sent to another replica")
    return (f"{where}: DOWN ({cluster.get('reason') or 'unknown'}); queued jobs wait for it, "
            "the node keeps receiving")


def _retry(args: argparse.Namespace) -> int:
    if bool(args.series_uid) == bool(args.failed):
        print("dicomnode retry: give either SERIES_UID or --failed", file=sys.stderr)
        return EXIT_USAGE
    spool = _open_index(args)
    try:
        count = spool.retry(args.series_uid)
    finally:
        spool.close()
    print(f"re-queued {count} failed job(s)")
    return EXIT_OK


def _check_config(args: argparse.Namespace) -> int:
    from dicomnode.engine.cards import load_card, verify_weights

    try:
        config = _load(args)
    except ConfigError as exc:
        print(f"dicomnode check-config: {exc}", file=sys.stderr)
        return EXIT_ERROR
    problems = []
    for i, rule in enumerate(config.rules):
        try:
            card = load_card(rule.model)
            if card.learned:
                verify_weights(card)
        except ModelError as exc:
            problems.append(f"rules[{i}].model: {exc}")
    if problems:
        print(f"dicomnode check-config: {args.config}: {len(problems)} problem(s):",
              file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        return EXIT_ERROR
    for warning in runtime_warnings(config.worker.runtime, config.worker.device):
        print(f"dicomnode check-config: warning: worker.runtime: {warning}", file=sys.stderr)
    if config.cluster.engine == "ray":
        from dicomnode.cluster import reachable

        unreachable = reachable(config.cluster.address)
        if unreachable is not None:  # a warning: the node runs and queues jobs meanwhile
            print(f"dicomnode check-config: warning: cluster.address: {unreachable}; "
                  "jobs stay queued until the cluster answers", file=sys.stderr)
    print(f"{args.config}: OK ({len(config.destinations)} destination(s), "
          f"{len(config.rules)} rule(s))")
    return EXIT_OK


def runtime_warnings(runtime: str, device: str) -> list[str]:
    """Why ``[worker] runtime`` will not do what it says here (the node still runs: torch)."""
    import importlib.util

    if runtime == "torch":
        return []
    found = []
    if importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None:
        found.append(f"{runtime!r} needs the onnxruntime and onnx packages, which are not "
                     "installed (pip install onnxruntime onnx); learned models run on torch")
    if runtime == "onnxruntime" and device not in ("cpu", "auto"):
        found.append(f"'onnxruntime' is used on CPU devices only; device = {device!r} runs torch")
    return found


def _echo(args: argparse.Namespace) -> int:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    config = _load(args)
    match = _AE_ADDRESS.match(args.destination)
    if match:
        called, host, port = match["aet"], match["host"], int(match["port"])
        calling = config.node.ae_title
    else:
        try:
            dest = config.destination(args.destination)
        except KeyError:
            names = ", ".join(d.name for d in config.destinations) or "none configured"
            raise ConfigError([f"no destination {args.destination!r} (destinations: {names}); "
                               "or give AET@host:port"], str(args.config)) from None
        if dest.type != "dicom":
            raise ConfigError([f"destination {dest.name!r} is a {dest.type}, not DICOM"],
                              str(args.config))
        called, host, port, calling = dest.ae_title, dest.host, dest.port, dest.calling_ae_title
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = args.timeout
    ae.add_requested_context(Verification)
    assoc = ae.associate(host, port, ae_title=called)
    if not assoc.is_established:
        print(f"dicomnode echo: no association with {called}@{host}:{port} "
              "(refused, rejected or unreachable)", file=sys.stderr)
        return EXIT_ERROR
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    code = int(status.Status) if status and "Status" in status else None
    if code != 0:
        print(f"dicomnode echo: {called}@{host}:{port} answered status {code}", file=sys.stderr)
        return EXIT_ERROR
    print(f"echo {called}@{host}:{port}: success")
    return EXIT_OK


def _enhance(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from dicomnode.engine import load as load_model
    from dicomnode.enhance import derivation_for, enhance_series
    from dicomnode.files import write_dataset
    from dicomnode.series import scan

    if args.batch_size < 1:
        raise ConfigError(["--batch-size: expected an integer >= 1"], "enhance")
    enhancer = load_model(args.model, device=args.device, batch_size=args.batch_size,
                          runtime=args.runtime)
    if not args.in_dir.exists():
        raise DicomNodeError(f"input folder {args.in_dir} does not exist")
    started = time.perf_counter()
    result = scan(args.in_dir)
    images = sum(len(s) for s in result.series)
    if not result.series:
        raise DicomNodeError(
            f"no DICOM images found under {args.in_dir} ({len(result.skipped)} file(s) skipped)"
        )
    sources = {im.path.resolve() for s in result.series for im in s.images}
    out_dir = args.out_dir
    derived: dict[str, Path] = {}  # derived SOP Instance UID -> where it was written

    def sink(ds):  # type: ignore[no-untyped-def]
        path = out_dir / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
        if path.resolve() in sources:
            raise DicomNodeError(f"refusing to overwrite the source file {path}")
        if str(ds.SOPInstanceUID) in derived:  # derived UIDs follow from the source's
            source = ds.SourceImageSequence[0].ReferencedSOPInstanceUID
            raise DeriveError(f"another file with SOPInstanceUID {source} was already derived "
                              f"to {derived[str(ds.SOPInstanceUID)]}: duplicate refused")
        derived[str(ds.SOPInstanceUID)] = path
        return write_dataset(ds, path)

    suffix = f" [dicomnode {enhancer.card.name}]"
    derivation = derivation_for(enhancer.card, "enhance", suffix)
    written = refused = differences = 0
    with tqdm(total=images, unit="img", disable=args.no_progress or None,
              file=sys.stderr) as bar:
        for series in result.series:
            outcome = enhance_series(series, enhancer, derivation, sink,
                                     batch_size=args.batch_size, on_image=lambda: bar.update(1),
                                     difference=args.difference)
            written += len(outcome.written) - outcome.differences
            differences += outcome.differences
            refused += len(outcome.rejected)
            if outcome.skipped_reason:
                bar.update(len(series))
                print(f"series {series.series_instance_uid}: skipped: {outcome.skipped_reason}",
                      file=sys.stderr)
            for path, reason in outcome.rejected:
                print(f"{path}: refused: {reason}", file=sys.stderr)
    seconds = time.perf_counter() - started
    extra = f", {differences} difference image(s)" if args.difference else ""
    print(f"enhance: {len(result.series)} series, {written} image(s) derived{extra}, "
          f"{refused} refused, "
          f"{len(result.skipped)} file(s) skipped, {seconds:.2f} s -> {out_dir}")
    if written == 0:
        print("dicomnode enhance: nothing usable was derived (see the reasons above)",
              file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


def _init(args: argparse.Namespace) -> int:
    from dicomnode.scaffold import write_node_dir

    created = write_node_dir(args.directory, args.ae_title, args.port, args.http_port,
                             force=args.force)
    print(f"wrote {created[0]}")
    for folder in created[1:]:
        print(f"folder {folder}")
    print(f"next: dicomnode check-config --config {created[0]}")
    return EXIT_OK


def _models(args: argparse.Namespace) -> int:
    if args.architectures:
        return _architectures(args)
    from dicomnode.engine.cards import list_cards

    cards, problems = list_cards()
    if args.json:
        print(json.dumps([
            {"name": c.name, "version": c.version, "task": c.task, "scale": c.scale,
             "modalities": list(c.modalities), "architecture": c.architecture,
             "learned": c.learned, "guards": list(c.active_guards), "metrics": c.metrics,
             "description": c.description}
            for c in cards
        ], indent=2, default=str))
    else:
        print(f"{'NAME':<16} {'VERSION':<8} {'TASK':<17} {'SCALE':<5} {'MODALITIES':<14} "
              "ARCHITECTURE / METRICS")
        for c in cards:
            metrics = _metrics_summary(c.metrics)
            print(f"{c.name:<16} {c.version:<8} {c.task:<17} {c.scale:<5} "
                  f"{','.join(c.modalities):<14} {c.architecture} {metrics}")
    for problem in problems:
        print(f"dicomnode models: {problem}", file=sys.stderr)
    return EXIT_ERROR if problems else EXIT_OK


def _architectures(args: argparse.Namespace) -> int:
    try:
        from dicomnode.nets import list_architectures
    except ImportError as exc:
        raise ModelError(f"the network registry cannot be imported: {exc}") from exc
    infos = list_architectures()
    if args.json:
        print(json.dumps([{"name": a.name, "role": a.role, "scales": list(a.scales),
                           "summary": a.summary} for a in infos], indent=2))
    else:
        for a in infos:
            scales = ",".join(str(s) for s in a.scales)
            print(f"{a.name:<22} {a.role:<17} scales {scales:<9} {a.summary}")
    return EXIT_OK


def _metrics_summary(metrics: dict) -> str:
    numbers = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
    return " ".join(f"{k}={v:g}" for k, v in numbers.items()) or ""


if __name__ == "__main__":
    sys.exit(main())
