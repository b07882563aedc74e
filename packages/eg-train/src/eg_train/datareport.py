"""Bad-sample reporting: the train data's `data_report()` summed over ranks, as metrics columns
(`data/samples`, `data/bad/<reason>`) and one summary line per epoch when any sample was skipped."""

from __future__ import annotations

from typing import Any

from eg_train.distributed import all_gather_objects
from eg_train.errors import TrainError

Report = dict[str, Any]  # {"samples": int, "bad": {reason: int}, "examples": {reason: key}}
EMPTY: Report = {"samples": 0, "bad": {}, "examples": {}}


def _check(report: Any) -> Report:
    ok = isinstance(report, dict) and isinstance(report.get("samples"), int)
    if not ok or not isinstance(report.get("bad"), dict):
        raise TrainError(
            f"the train data's data_report() returned {type(report).__name__} {report!r:.80}; expected "
            f"{{'samples': int, 'bad': {{reason: int}}, 'examples': {{reason: key}}}}"
        )
    return report


def add_reports(a: Report, b: Report) -> Report:
    """Counts summed; per reason the first example (from `a` when it has one)."""
    bad = dict(a["bad"])
    for reason, n in b["bad"].items():
        bad[reason] = bad.get(reason, 0) + int(n)
    examples = dict(b.get("examples") or {})
    examples.update({r: k for r, k in (a.get("examples") or {}).items() if k})
    return {"samples": int(a["samples"]) + int(b["samples"]), "bad": bad, "examples": examples}


class DataReporter:
    """Reads `data.data_report()` (cumulative within the current epoch, on this rank), when the data has it.

    A positioned loader (`set_epoch(epoch, start_batch)`) counts from its start batch after a resume; the
    report this rank had reached at the checkpoint is restored as `base`. Data with
    `restore_data_report(report)` is handed the base after its `set_epoch` (`hand_over`) and continues
    the counts itself (so its own checks, e.g. eg-data's `max_bad_fraction`, judge the whole epoch);
    for other data the base is added back here. Either way rows and summaries after a resume equal the
    uninterrupted run's.
    """

    def __init__(self, data: Any) -> None:
        fn = getattr(data, "data_report", None)
        self._fn = fn if callable(fn) else None
        restore = getattr(data, "restore_data_report", None)
        self._restore = restore if callable(restore) and self._fn is not None else None
        self.base: Report | None = None
        self.reasons: list[str] = sorted(_check(self._fn())["bad"]) if self._fn else []

    @property
    def active(self) -> bool:
        """True when the data reports bad samples."""
        return self._fn is not None

    def columns(self) -> list[str]:
        """The metrics.csv columns, known before the first row."""
        return ["data/samples", *(f"data/bad/{r}" for r in self.reasons)] if self.active else []

    def local(self) -> Report | None:
        """This rank's report for the current epoch (the restored base included); saved in checkpoints.
        For data that restores its own counts, its report as it is (extra keys kept for that restore)."""
        if self._fn is None:
            return None
        report = _check(self._fn())
        if self._restore is not None and self.base is None:
            return report
        return add_reports(self.base or EMPTY, report)

    def hand_over(self) -> None:
        """After the data's `set_epoch` for the resumed epoch: data with `restore_data_report` gets the
        restored base and counts on from it; the base is then no longer added here."""
        if self.base is not None and self._restore is not None:
            self._restore(self.base)
            self.base = None

    def new_epoch(self) -> None:
        """The restored base belongs to the epoch it was saved in only."""
        self.base = None

    def gather(self) -> Report | None:
        """The epoch's report summed over ranks (a collective: every rank calls it at the same step)."""
        if self._fn is None:
            return None
        total: Report = {"samples": 0, "bad": {r: 0 for r in self.reasons}, "examples": {}}
        for report in all_gather_objects(self.local()):
            total = add_reports(total, report)
        return total

    @staticmethod
    def row(total: Report) -> dict[str, float]:
        """metrics columns: data/samples and data/bad/<reason> (cumulative within the epoch)."""
        row = {"data/samples": float(total["samples"])}
        row.update({f"data/bad/{r}": float(n) for r, n in sorted(total["bad"].items())})
        return row

    @staticmethod
    def summary(total: Report, epoch: int, partial: bool) -> str | None:
        """One line when any sample was skipped, with one example key per reason; else None."""
        bad = sum(total["bad"].values())
        if bad == 0:
            return None
        parts = []
        for reason, n in sorted(total["bad"].items(), key=lambda kv: (-kv[1], kv[0])):
            if n > 0:
                example = total["examples"].get(reason)
                parts.append(f"{reason} {n}, e.g. {example!r}" if example else f"{reason} {n}")
        where = f"epoch {epoch} so far" if partial else f"epoch {epoch}"
        return f"data: skipped {bad} of {total['samples']} samples in {where} ({'; '.join(parts)})"
