"""What serving costs over `zoo run`: time to ready, per-request overhead, and 8 clients x 3
requests with 1 and with N instances, on loopback.

    python scripts/bench_serving.py EXPORT_DIR [--steps 2] [--requests 10] [--instances 2] [--json FILE]

Per-request overhead is the median of a request through the server minus the median of the same
request through the same service in this process (the sampler and writer alone).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from test_serving import start_server  # noqa: E402

from runtimes.serving import Payload, Service  # noqa: E402
from runtimes.triton import stream_request  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("export", type=Path)
    parser.add_argument("--prompt", default="a red fox in the snow")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--instances", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    payload = lambda seed: Payload({"prompt": args.prompt, "steps": args.steps}, seed=seed, out_name="x.png")  # noqa: E731

    service = Service(args.export)
    service.run(payload(0))  # backends loaded
    local = []
    for i in range(args.requests):
        start = time.perf_counter()
        service.run(payload(i))
        local.append(time.perf_counter() - start)
    service.close()
    model = None
    report: dict = {"export": str(args.export), "steps": args.steps, "in_process_ms": 1000 * statistics.median(local)}
    for instances in (1, args.instances):
        start = time.perf_counter()
        server = start_server(args.export, "--instances", str(instances))
        ready = time.perf_counter() - start
        try:
            model = model or json.loads((args.export / "manifest.json").read_text())["family"]
            stream_request(server.url, model, payload(0))  # backends loaded in this instance
            served = []
            for i in range(args.requests):
                start = time.perf_counter()
                stream_request(server.url, model, payload(i))
                served.append(time.perf_counter() - start)
            start = time.perf_counter()
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(lambda s, url=server.url, model=model: stream_request(url, model, payload(s)), range(24)))
            concurrent = time.perf_counter() - start
        finally:
            server.stop()
        report[f"instances_{instances}"] = {
            "ready_s": ready,
            "served_ms": 1000 * statistics.median(served),
            "overhead_ms": 1000 * (statistics.median(served) - statistics.median(local)),
            "clients_8x3_s": concurrent,
        }
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
