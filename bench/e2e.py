"""End-to-end latency: last instance received -> last derived instance acknowledged by Orthanc.

Starts a real Orthanc and a real ``dicomnode serve`` on loopback, sends a series with DCMTK
storescu, and prints the latency and the node's peak RSS. Needs DCMTK and Orthanc
(``make test`` installs them).

    .venv/bin/python bench/e2e.py [--series DIR] [--model bicubic-x2] [--idle 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.peers import NodeProcess, Orthanc, storescu, wait_for  # noqa: E402


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--series", type=Path,
                        default=REPO / "tests/data/mr_siemens_prisma_t1_fl2d_sag_35sl")
    parser.add_argument("--model", default="bicubic-x2")
    parser.add_argument("--modality", default="MR")
    parser.add_argument("--idle", type=float, default=2.0, help="series_idle_seconds")
    args = parser.parse_args(argv)
    count = len(list(args.series.rglob("*.dcm")))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        pacs = Orthanc(work / "orthanc")
        pacs.start()
        rule = (f'[[rules]]\nname = "bench"\nmatch = {{ Modality = "{args.modality}" }}\n'
                f'model = "{args.model}"\ndestinations = ["pacs"]\n')
        destination = (f'[[destinations]]\nname = "pacs"\ntype = "dicom"\n'
                       f'ae_title = "ORTHANC"\nhost = "127.0.0.1"\nport = {pacs.dicom_port}\n')
        (work / "node").mkdir()
        node = NodeProcess(work / "node", rule, destination, idle_seconds=args.idle)
        node.start()
        try:
            started = time.monotonic()
            storescu(args.series, node.port)
            sent = time.monotonic()
            wait_for(lambda: pacs.instance_count() >= count, 1800, "the derived series",
                     interval=0.02)
            done = time.monotonic()
            assert node.process is not None
            rss = peak_rss_mb(node.process.pid)
        finally:
            node.stop()
            pacs.stop()
    print(f"series: {args.series.name} ({count} instances), model {args.model}, "
          f"series_idle_seconds {args.idle:g}")
    print(f"send (storescu)                   : {sent - started:6.2f} s")
    print(f"last received -> last acknowledged: {done - sent:6.2f} s "
          f"(of which idle wait {args.idle:g} s)")
    print(f"node peak RSS                     : {rss:6.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
