"""``python -m twotier.feature_jobs {online,offline,import,validate} --project P ...``."""

from __future__ import annotations

import argparse
import logging
import sys

from twotier.config import load_settings
from twotier.feature_jobs.batch_cli import BATCH_MODES, add_batch_parsers, run_batch_args


def main(argv: list[str] | None = None) -> int:
    """Run one feature-job mode; returns the process exit code."""
    parser = argparse.ArgumentParser(prog="python -m twotier.feature_jobs")
    parser.add_argument(
        "--config", help="twotier.yaml (default: $TWOTIER_CONFIG or ./twotier.yaml)"
    )
    modes = parser.add_subparsers(dest="mode", required=True)
    online = modes.add_parser("online", help="Kafka events → online store (Structured Streaming)")
    online.add_argument("--project", help="project name (default: settings.project)")
    online.add_argument(
        "--available-now", action="store_true", help="process what is in Kafka now, then stop"
    )
    online.add_argument(
        "--max-offsets-per-trigger", type=int, default=None, help="Kafka records per micro-batch"
    )
    online.add_argument(
        "--trigger-seconds", type=float, default=None, help="micro-batch interval (continuous)"
    )
    online.add_argument(
        "--retry-initial-s", type=float, default=1.0, help="first wait after a fault (s)"
    )
    online.add_argument("--retry-max-s", type=float, default=30.0, help="longest wait (s)")
    online.add_argument(
        "--retry-attempts",
        type=int,
        default=None,
        help="give up after this many faults in a row (default: never; 3 with --available-now)",
    )
    add_batch_parsers(modes)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("py4j").setLevel(logging.WARNING)
    # kafka-python logs every reconnect attempt; the jobs log one line per fault themselves.
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    if args.mode in BATCH_MODES:
        return run_batch_args(args, load_settings(args.config))

    from twotier.errors import TwotierError
    from twotier.feature_jobs.online_job import (
        DEFAULT_MAX_OFFSETS_PER_TRIGGER,
        online_backoff,
        run_online,
    )

    settings = load_settings(args.config)
    project = args.project or settings.project
    try:
        run_online(
            settings,
            project,
            available_now=args.available_now,
            max_offsets_per_trigger=args.max_offsets_per_trigger or DEFAULT_MAX_OFFSETS_PER_TRIGGER,
            trigger_seconds=args.trigger_seconds,
            retry=online_backoff(
                args.retry_initial_s, args.retry_max_s, args.retry_attempts, args.available_now
            ),
        )
    except TwotierError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
