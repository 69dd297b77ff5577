"""``recast-study --config STUDY.yaml [--quick] [--report-only] [--set key=value ...]``.

    recast-study --config examples/study/ml-100k.yaml            # run (or resume) the study, then the report
    recast-study --config examples/study/ml-100k.yaml --quick    # the tiny variant (its `quick:` section)
    recast-study --config examples/study/ml-100k.yaml --report-only   # rebuild report.md + PNGs from the runs
    recast-study --config examples/study/ml-100k.yaml --shared-only   # data, references, SFT, SASRec; no arms

Runs are subprocesses (recast-train / recast-eval) one after another; kill and rerun to resume.
Exit codes: 0 done, 2 bad config or setup, 1 a stage failed (its log's tail is printed).
"""

from __future__ import annotations

import argparse
import sys

from recast_mcore.config.base import ConfigError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="recast-study", description="GRPO vs ReCast study at a matched rollout budget")
    parser.add_argument("--config", required=True, help="study YAML (see examples/study/)")
    parser.add_argument("--quick", action="store_true", help="merge the file's `quick:` mapping (tiny variant)")
    parser.add_argument("--report-only", action="store_true", help="only rebuild the report from the study directory")
    parser.add_argument("--shared-only", action="store_true",
                        help="run only what every arm shares (data, references, SFT, SASRec), then stop")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a study-config value, e.g. --set study_dir=runs/s2 (repeatable)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from recast_mcore.study.runner import StudyError, run_study
    from recast_mcore.study.spec import StudyPlan, load_study

    try:
        cfg, base = load_study(args.config, quick=args.quick, overrides=args.overrides)
        if args.report_only:
            from recast_mcore.study.report import write_report

            write_report(cfg.study_dir)
            return 0
        plan = StudyPlan(cfg, base)
    except (ConfigError, FileNotFoundError) as exc:
        print(f"recast-study: error: {exc}", file=sys.stderr)
        return 2
    try:
        run_study(plan, shared_only=args.shared_only)
    except StudyError as exc:
        print(f"recast-study: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
