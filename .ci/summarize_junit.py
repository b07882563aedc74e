"""Print CI summary lines from pytest JUnit XML files (stdlib only; used by .ci/run).

Usage: summarize_junit.py LABEL JUNIT.xml WALL_SECONDS [--by-suite] [--slowest N]
One line: LABEL, passed / failed / skipped counts and seconds. With --by-suite, also one line per
suite of a whole-repo run: `packages/eg-x` or `tests`, from each test's file (or class) name. With
--slowest N, the N test files that took longest (where CI's time goes, to keep it within budget).
"""

import sys
import xml.etree.ElementTree as ET
from collections import defaultdict


def file_of(case: ET.Element) -> str:
    """The test file of one testcase element (from its file or class name)."""
    return case.get("file") or case.get("classname", "").replace(".", "/")


def suite_of(case: ET.Element) -> str:
    """`packages/eg-x` or `tests` for one testcase element."""
    parts = file_of(case).split("/")
    return "/".join(parts[:2]) if parts[0] == "packages" and len(parts) > 1 else parts[0] or "(unknown)"


def outcome(case: ET.Element) -> str:
    """passed, failed or skipped."""
    if case.find("failure") is not None or case.find("error") is not None:
        return "failed"
    if case.find("skipped") is not None:
        return "skipped"
    return "passed"


def line(label: str, counts: dict, seconds: float) -> str:
    status = "FAIL" if counts["failed"] else ("EMPTY" if not counts["passed"] else "ok")
    return (
        f"{label:<34} {counts['passed']:>5} passed {counts['failed']:>4} failed "
        f"{counts['skipped']:>4} skipped {seconds:>8.1f} s  {status}"
    )


def main() -> None:
    label, path, wall = sys.argv[1], sys.argv[2], float(sys.argv[3])
    options = sys.argv[4:]
    by_suite = "--by-suite" in options
    slowest = int(options[options.index("--slowest") + 1]) if "--slowest" in options else 0
    try:
        cases = list(ET.parse(path).getroot().iter("testcase"))
    except (OSError, ET.ParseError):
        cases = []
    total = defaultdict(int)
    groups = defaultdict(lambda: defaultdict(int))
    times = defaultdict(float)
    file_times = defaultdict(float)
    for case in cases:
        file_times[file_of(case)] += float(case.get("time") or 0.0)
        result = outcome(case)
        total[result] += 1
        groups[suite_of(case)][result] += 1
        times[suite_of(case)] += float(case.get("time") or 0.0)
    print(line(label, total, wall))
    if by_suite:
        for name in sorted(groups):
            print(line(f"  {name}", groups[name], times[name]))
    if slowest:
        print(f"  slowest {slowest} test files:")
        for name, seconds in sorted(file_times.items(), key=lambda item: -item[1])[:slowest]:
            print(f"    {seconds:>8.1f} s  {name}")


if __name__ == "__main__":
    main()
