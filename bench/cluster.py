"""Throughput of ``[cluster] engine = "ray"`` with one and two Ray nodes, and the kill test.

Starts a real Ray cluster on this machine (tests/ray_cluster.py: one CPU and one replica per
node), drives it through the node's own client (``dicomnode.cluster.ClusterEngine``) from two
threads (two node workers), and enhances the 35-slice MR series of tests/data with a model of
known cost (mr-denoise by default: a network, real arithmetic, the same FLOPs every slice).
Prints slices/s for 1 and 2 nodes, the speed-up, and a run where node 2 is SIGKILLed halfway:
how many calls were re-sent and whether every output equals the undisturbed run's.

    nice -n 15 .venv/bin/python bench/cluster.py [--model mr-denoise] [--chunk 4] [--repeat 1]

Ray nodes run at the nice level of this script; on a machine whose cores are busy (a training)
two one-CPU nodes compete with it, so the speed-up says what this machine gave, not Ray's.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pydicom

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dicomnode.cluster import ClusterEngine
from dicomnode.config import ClusterConfig, WorkerConfig
from tests.conftest import MR_DIR
from tests.peers import wait_for
from tests.ray_cluster import RayCluster


def slices() -> np.ndarray:
    """The MR series in modality values, in file order."""
    out = []
    for path in sorted(MR_DIR.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        out.append(ds.pixel_array.astype(np.float32) * float(getattr(ds, "RescaleSlope", 1))
                   + float(getattr(ds, "RescaleIntercept", 0)))
    return np.stack(out)


def run(engine: ClusterEngine, model: str, volume: np.ndarray, chunk: int, threads: int,
        on_half: threading.Event | None = None) -> tuple[float, list[np.ndarray]]:
    """Enhance ``volume`` in chunks from ``threads`` threads; seconds and outputs in order."""
    enhancer = engine.enhancer(model)
    sample = list(volume[np.linspace(0, len(volume) - 1, 16).astype(int)])
    bound = enhancer.for_series(sample)
    c = enhancer.context
    starts = list(range(0, len(volume), chunk))
    results: dict[int, np.ndarray] = {}
    lock = threading.Lock()

    def work(mine: list[int]) -> None:
        for start in mine:
            picks = np.clip(np.arange(start - c, min(start + chunk, len(volume)) + c), 0,
                            len(volume) - 1)
            out = bound(volume[picks])
            with lock:
                results[start] = out
                if on_half is not None and len(results) == len(starts) // 2:
                    on_half.set()

    began = time.perf_counter()
    pool = [threading.Thread(target=work, args=(starts[i::threads],)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return time.perf_counter() - began, [results[s] for s in starts]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="mr-denoise")
    parser.add_argument("--chunk", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    volume = slices()
    n = len(volume)
    load = os.getloadavg()
    print(f"machine: {os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f}; "
          f"this script's nice level {os.nice(0)}; model {args.model}, {n} slices "
          f"{volume.shape[1]}x{volume.shape[2]}, chunks of {args.chunk}, {args.threads} "
          "client threads")
    cluster = RayCluster(cpus_per_node=1)
    stop = threading.Event()
    storage = cluster.root / "node"
    engine = None
    try:
        cluster.start_head()
        engine = ClusterEngine(ClusterConfig("ray", cluster.address),
                               WorkerConfig(device="cpu", batch_size=args.chunk), storage, stop)
        engine.start()
        wait_for(lambda: engine.status()["alive"] == 1, 180, "one replica")
        run(engine, args.model, volume[:args.chunk], args.chunk, 1)  # load the model (warm-up)
        one = [run(engine, args.model, volume, args.chunk, args.threads)
               for _ in range(args.repeat)]
        t1 = min(s for s, _ in one)
        reference = one[0][1]
        print(f"1 node : {n / t1:6.2f} slices/s ({t1:.1f} s for {n} slices)")

        second = cluster.add_node()
        wait_for(lambda: engine.status()["alive"] == 2, 180, "a replica on node 2")
        run(engine, args.model, volume[:2 * args.chunk], args.chunk, 2)  # warm node 2's model
        two = [run(engine, args.model, volume, args.chunk, args.threads)
               for _ in range(args.repeat)]
        t2 = min(s for s, _ in two)
        print(f"2 nodes: {n / t2:6.2f} slices/s ({t2:.1f} s for {n} slices); "
              f"speed-up {t1 / t2:.2f}x")
        same = all(np.array_equal(a, b) for a, b in zip(reference, two[0][1], strict=True))
        print(f"2-node outputs equal to 1-node outputs: {same}")

        half = threading.Event()
        before = engine.status()["failovers"]
        killer = threading.Thread(target=lambda: (half.wait(), cluster.kill_node(second)))
        killer.start()
        seconds, outputs = run(engine, args.model, volume, args.chunk, args.threads, half)
        killer.join()
        status = engine.status()
        same = all(np.array_equal(a, b) for a, b in zip(reference, outputs, strict=True))
        print(f"kill test: node 2 SIGKILLed after half the chunks; {len(outputs)}/"
              f"{len(reference)} chunks back in {seconds:.1f} s, "
              f"{status['failovers'] - before} call(s) re-sent to the other replica, "
              f"replicas alive {status['alive']}/{status['replicas']}, outputs equal to the "
              f"undisturbed run: {same}")
    finally:
        if engine is not None:
            engine.close()
        cluster.stop()
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
