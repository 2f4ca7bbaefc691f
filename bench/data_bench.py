"""`data check` and `data clean` (near-duplicate detection included) on N rows of about 1 KB each.

Goal (issue 3): at most 60 s each for 100,000 rows on the 2-core machine, peak memory under 2 GB.
Each stage runs in its own process so its peak RSS is its own. The baseline in the same run is a naive reading
of the same file with per-row Python MinHash updates (datasketch `MinHash.update` per shingle), measured on a
subset and extrapolated, as the issue describes it being too slow.

    .venv/bin/python bench/data_bench.py [--rows 100000]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import subprocess
import sys
import tempfile
from pathlib import Path

WORDS = ("bill charge refund plan roaming data signal router phone sim esim port number account payment card "
         "invoice credit late fee upgrade contract cancel outage speed network store app password voicemail "
         "international call text minutes travel europe pass family line discount student order delivery").split()


def make_file(path: Path, rows: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as handle:
        previous = None
        for i in range(rows):
            if previous and rng.random() < 0.03:  # a near copy of the previous row
                prompt, answer = previous[0].replace(" the ", " a ", 1), previous[1]
            else:
                prompt = " ".join(rng.choice(WORDS) for _ in range(40)) + f" ticket {i}?"
                answer = " ".join(rng.choice(WORDS) for _ in range(120)) + "."
                if rng.random() < 0.01:
                    answer += f" Mail me at user{i}@example.com or call +44 20 7946 {i % 10000:04d}."
            previous = (prompt, answer)
            handle.write(json.dumps({"prompt": prompt, "completion": answer}) + "\n")


STAGE = r"""
import json, resource, sys, time
from pathlib import Path
from tunesmith.data.check import scan
from tunesmith.data.clean import CleanOptions, clean
path, stage = sys.argv[1], sys.argv[2]
started = time.perf_counter()
if stage == "check":  # what `tunesmith data check --json` does: stream, then read the findings back in order
    report = scan([Path(path)], folder=str(Path(path).parent))
    listed = sum(1 for _ in report.findings.sorted())
    report.findings.close()
    detail = {"findings": listed, "usable": report.usable}
else:
    result = clean(path, path + ".clean.jsonl", CleanOptions(dedup="near", redact_pii="mask"))
    detail = {"rows_out": result.rows_out, "removed": dict(result.removed)}
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  **detail}))
"""

BASELINE = r"""
import json, sys, time
from datasketch import MinHash, MinHashLSH
path, limit = sys.argv[1], int(sys.argv[2])
started = time.perf_counter()
lsh = MinHashLSH(threshold=0.8, num_perm=128)
with open(path) as handle:
    for i, line in enumerate(handle):
        if i == limit:
            break
        row = json.loads(line)
        words = (row["prompt"] + " " + row["completion"]).lower().split()
        m = MinHash(num_perm=128)
        for j in range(len(words) - 2):
            m.update(" ".join(words[j:j + 3]).encode())
        lsh.query(m)
        lsh.insert(str(i), m)
print(json.dumps({"seconds": time.perf_counter() - started}))
"""


def run(code: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", default="100000", help="row counts, comma-separated (e.g. 100000,400000 "
                                                             "shows how memory grows with the file)")
    parser.add_argument("--baseline-rows", type=int, default=5_000)
    args = parser.parse_args()
    print(f"{platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores\n")
    print("| rows | file MB | stage | seconds | rows/s | peak RSS MB | goal | vs naive per-row MinHash (dedup only) |")
    print("|---:|---:|---|---:|---:|---:|---|---:|")
    notes = []
    for rows in (int(r) for r in args.rows.split(",")):
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "rows.jsonl"
            make_file(path, rows)
            size_mb = path.stat().st_size / 2**20
            check_result = run(STAGE, str(path), "check")
            clean_result = run(STAGE, str(path), "clean")
            baseline = run(BASELINE, str(path), str(args.baseline_rows))
        naive = baseline["seconds"] * rows / args.baseline_rows
        for name, result in (("data check", check_result), ("data clean --dedup near --redact-pii mask",
                                                            clean_result)):
            print(f"| {rows:,} | {size_mb:.0f} | {name} | {result['seconds']:.1f} | {rows / result['seconds']:,.0f} "
                  f"| {result['peak_mb']:.0f} | ≤ 60 s at 100k, < 2048 MB | {naive / result['seconds']:.1f}x |")
        print(f"| {rows:,} | {size_mb:.0f} | naive baseline: per-row MinHash.update + LSH, {args.baseline_rows:,} "
              f"rows extrapolated | {naive:.1f} | {rows / naive:,.0f} | | | 1.0x |")
        notes.append(f"{rows:,} rows: check {check_result['findings']:,} findings; clean "
                     f"{clean_result['rows_out']:,} rows out, removed {clean_result['removed']}")
    print("\n" + "\n".join(notes))


if __name__ == "__main__":
    main()
