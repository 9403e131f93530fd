"""The ``semprobe`` command line."""

from __future__ import annotations

import argparse
import json
import sys
import time


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="semprobe")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the study for a preset")
    run.add_argument("--preset", default="cpu")
    run.add_argument("--workspace", default=".semprobe")
    args = parser.parse_args(argv)
    if args.command == "run":
        import karel

        cfg = karel.DataConfig() if args.preset != "paper" else karel.DataConfig.paper()
        t = time.time()
        manifest = karel.generate_dataset(cfg, f"{args.workspace}/data", workers=2, overwrite=True)
        print(json.dumps({s: m["stats"] for s, m in manifest["splits"].items()}, indent=2))
        print(f"dataset written in {time.time() - t:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
