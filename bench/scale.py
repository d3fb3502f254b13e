"""Scale: `niche curate --engine ray` against the single-process path, and the Ray driver's memory against input
size.

Data: CLINC150's training utterances with their intents (../shared/datasets/clinc150), replicated with noise as
bench/curate_speed.py does (each copy one random edit), so the rows hold exact and near duplicates and
conflicts; without ../shared/datasets the project's example inputs, and the results file says so.

1. Throughput: the same `--rows` rows curated by the local engine (one process), and on Ray with 1 and with 2
   workers (a head on loopback started with that many CPUs), each a fresh `niche curate` process, interleaved
   round by round (a first warm-up round dropped, >= 3 measured). Same work: every side writes the same split
   files and the same rejects (their SHA-256, the rejects sorted), or the ratios are invalid.
2. Driver memory: for each of `--sizes` rows, the peak resident memory (VmHWM) of the `niche curate` process,
   the Ray driver, against the local engine's at the same size. Criterion fixed before the run: the Ray
   driver's peak at the largest size is within 20% of its peak at the smallest (flat); the local engine's is
   reported beside it for contrast, not judged.

What 2 cores can prove: that the Ray path makes the local path's decisions with a driver whose memory does not
grow with the input, and what Ray's per-stage overhead costs against one process at this size. What they
cannot: speed-up from more machines; a second worker on a 2-core box shares the cores the first one and the
driver use, so the 1-to-2-worker ratio is a floor, not a scaling curve. Batch inference on Ray (eval, synth) is
not built yet and is not measured.

    python bench/scale.py [--rows 200000] [--sizes 100000,300000,1000000] [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from curate_speed import noisy_copy  # noqa: E402
from harness import (  # noqa: E402
    Report,
    add_arguments,
    format_range,
    interleave,
    ratio,
    same_answers,
    summarize,
)
from public_data import CLINC, EXAMPLES  # noqa: E402
from ray_cluster import local_ray_cluster  # noqa: E402

REPO = BENCH.parent
WORKDIR = REPO / "build" / "bench-scale"
FLAT_TOLERANCE = 0.20
SIDES = {"local": None, "ray, 1 worker": 1, "ray, 2 workers": 2}


def labelled_base() -> tuple[list[tuple[str, str]], str]:
    clinc = CLINC / "data_full.json"
    if clinc.is_file():
        train = json.loads(clinc.read_text())["train"]
        return [(text, label) for text, label in train], f"CLINC150 train ({len(train)} utterances)"
    print(f"{clinc} not found: falling back to examples/cloudsec/train.jsonl", file=sys.stderr)
    rows = [json.loads(line) for line in (EXAMPLES / "cloudsec" / "train.jsonl").read_text().splitlines() if line]
    return [(row["text"], row["label"]) for row in rows], "FALLBACK, not CLINC150: examples/cloudsec/train.jsonl"


def write_rows(path: Path, count: int, base: list[tuple[str, str]], seed: int = 0) -> Path:
    """`count` label rows: the base rows, then noisy copies of random base rows with their labels."""
    if path.is_file() and sum(1 for _ in path.open()) == count:
        return path
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        for index in range(count):
            text, label = base[index] if index < len(base) else rng.choice(base)
            if index >= len(base):
                text = noisy_copy(text, rng)
            handle.write(json.dumps({"text": text, "label": label}) + "\n")
    return path


DRIVER = """
import json, sys, time
from pathlib import Path
from niche.config import CurateSettings
from niche.curate import curate
inputs, out, engine, address = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4] or None
started = time.perf_counter()
report = curate([inputs], out, CurateSettings(engine=engine, ray_address=address))
seconds = time.perf_counter() - started
status = Path("/proc/self/status").read_text().splitlines()
peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024
print("RESULT " + json.dumps({"seconds": seconds, "driver_peak_mb": peak, "kept": report.stages["kept"]}))
"""


def curate_process(rows: Path, out: Path, address: str | None) -> dict[str, Any]:
    """One `curate` in a process of its own (the driver, on Ray): its time, its peak memory, its outputs' digest."""
    engine = "ray" if address else "local"
    command = [sys.executable, "-c", DRIVER, str(rows), str(out), engine, address or ""]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=7200, cwd=REPO)
    if finished.returncode:
        raise RuntimeError(f"curate --engine {engine} failed:\n{finished.stderr[-3000:]}")
    result = json.loads(next(line[7:] for line in finished.stdout.splitlines() if line.startswith("RESULT ")))
    return result | {"rows_per_minute": _rows(rows) / result["seconds"] * 60, "outputs": outputs_digest(out)}


def _rows(path: Path) -> int:
    return sum(1 for _ in path.open())


def outputs_digest(out: Path) -> str:
    digest = hashlib.sha256()
    for name in ("train", "validation", "test"):
        digest.update((out / f"{name}.jsonl").read_bytes())
    digest.update("\n".join(sorted((out / "rejects.jsonl").read_text().splitlines())).encode())
    return digest.hexdigest()[:16]


def throughput(rows: Path, repeats: int, clusters: dict[str, str]) -> tuple[dict[str, list[dict]], Any]:
    def side(name: str):
        return lambda round_: curate_process(rows, WORKDIR / "out" / name.replace(" ", "-"), clusters.get(name))

    return interleave({name: side(name) for name in SIDES}, repeats=repeats, warmup=1, on_result=print_run)


def print_run(name: str, round_: int, run: dict[str, Any]) -> None:
    print(
        f"  round {round_} {name}: {run['rows_per_minute']:,.0f} rows/min, driver peak {run['driver_peak_mb']:.0f} MB"
    )


def driver_memory(sizes: list[int], base: list[tuple[str, str]], address: str) -> dict[str, Any]:
    readings = []
    for size in sizes:
        rows = write_rows(WORKDIR / f"rows-{size}.jsonl", size, base)
        on_ray = curate_process(rows, WORKDIR / "out" / f"memory-ray-{size}", address)
        local = curate_process(rows, WORKDIR / "out" / f"memory-local-{size}", None)
        print(f"  {size:,} rows: ray driver {on_ray['driver_peak_mb']:.0f} MB, local {local['driver_peak_mb']:.0f} MB")
        readings.append(
            {
                "rows": size,
                "ray_driver_peak_mb": round(on_ray["driver_peak_mb"], 1),
                "local_peak_mb": round(local["driver_peak_mb"], 1),
                "same_outputs": on_ray["outputs"] == local["outputs"],
            }
        )
    growth = readings[-1]["ray_driver_peak_mb"] / readings[0]["ray_driver_peak_mb"] - 1
    return {
        "readings": readings,
        "criterion": f"the Ray driver's peak at {sizes[-1]:,} rows within {FLAT_TOLERANCE:.0%} of its peak at "
        f"{sizes[0]:,} rows (fixed before the run)",
        "ray_driver_growth": round(growth, 4),
        "flat": growth <= FLAT_TOLERANCE and all(reading["same_outputs"] for reading in readings),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000, help="rows of the throughput comparison")
    parser.add_argument("--sizes", default="100000,300000,1000000", help="input sizes of the driver-memory readings")
    add_arguments(parser)
    args = parser.parse_args()
    report = Report("scale", args)
    if args.quick:
        args.rows, args.sizes = 5_000, "5000,20000"
    sizes = [int(size) for size in args.sizes.split(",")]
    base, source = labelled_base()
    rows = write_rows(WORKDIR / f"rows-{args.rows}.jsonl", args.rows, base)
    with (
        tempfile.TemporaryDirectory(prefix="niche-scale-") as scratch,
        local_ray_cluster(1, Path(scratch) / "one") as one,
        local_ray_cluster(2, Path(scratch) / "two") as two,
    ):
        measured, schedule = throughput(rows, report.repeats, {"ray, 1 worker": one, "ray, 2 workers": two})
        memory = driver_memory(sizes, base, two)
    runs = {name: summarize([round(run["rows_per_minute"]) for run in runs]) for name, runs in measured.items()}
    reference = [run["outputs"] for run in measured["local"]]
    comparisons = {}
    for numerator, denominator in (("ray, 2 workers", "local"), ("ray, 2 workers", "ray, 1 worker")):
        check = same_answers(
            reference, [run["outputs"] for run in measured[numerator]], tolerance=0.0, what="output files"
        )
        comparisons[f"{numerator} / {denominator}"] = ratio(
            [run["rows_per_minute"] for run in measured[numerator]],
            [run["rows_per_minute"] for run in measured[denominator]],
            [check],
        )
    written = report.write(
        {
            "data": {"source": source, "rows": args.rows, "sizes": sizes},
            "schedule": schedule.as_dict(),
            "rows_per_minute": runs,
            "driver_peak_mb": {
                name: summarize([round(run["driver_peak_mb"], 1) for run in runs]) for name, runs in measured.items()
            },
            "comparisons": comparisons,
            "driver_memory": memory,
            "what_two_cores_show": __doc__.split("What 2 cores can prove: ", 1)[1].split("\n\n", 1)[0],
        }
    )
    for name, markdown in tables(json.loads(written.read_text())).items():
        print(f"{name}:\n{markdown}")


def tables(results: dict) -> dict[str, str]:
    """The README tables, from the results file alone."""
    throughput_lines = [
        "| side | rows per minute | driver peak (MB) |",
        "|---|---|---|",
        *(
            f"| {name} | {format_range(stats, 0)} | {format_range(results['driver_peak_mb'][name], 0)} |"
            for name, stats in results["rows_per_minute"].items()
        ),
        "",
        "| comparison (rows per minute) | ratio | same work |",
        "|---|---|---|",
        *(
            f"| {name} | {format_range(result, 2, 'x')} | "
            + (
                "yes: the same split and reject files"
                if result["valid"]
                else "no: " + "; ".join(result["invalid_because"])
            )
            + " |"
            for name, result in results["comparisons"].items()
        ),
    ]
    memory = results["driver_memory"]
    memory_lines = [
        "| rows | Ray driver peak (MB) | local engine peak (MB) | same outputs |",
        "|---|---|---|---|",
        *(
            f"| {reading['rows']:,} | {reading['ray_driver_peak_mb']:.0f} | {reading['local_peak_mb']:.0f} "
            f"| {'yes' if reading['same_outputs'] else 'no'} |"
            for reading in memory["readings"]
        ),
        "",
        f"Criterion: {memory['criterion']}: growth {memory['ray_driver_growth']:+.1%}, "
        + ("met." if memory["flat"] else "**not met**."),
    ]
    return {"throughput": "\n".join(throughput_lines) + "\n", "driver-memory": "\n".join(memory_lines) + "\n"}


if __name__ == "__main__":
    main()
