"""Bad-sample accounting: the reasons a sample is skipped, the per-epoch report a loader keeps for its
rank, and the `max_bad_fraction` stop.

Workers do not count into shared memory: each batch carries the counts of the samples it was cut from
(`REPORT_KEY`, a few integers), and the loader adds them up as it hands the batch over. So the report
covers exactly the batches delivered, whatever the workers have read ahead, and a resumed or abandoned
epoch never counts a sample twice.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from eg_data.errors import DataError

REPORT_KEY = "__report__"  # (samples read, bad count per reason, {reason: first example}) of one batch
# Shard faults (the example is the shard path), then sample faults (the example is the sample key).
SHARD_FAULTS = ("unreadable_shard", "truncated_shard")
BAD_REASONS = (
    "unreadable_shard",  # missing, zero bytes or not a tar: none of its indexed samples could be read
    "truncated_shard",  # a tar cut short or corrupt inside: the indexed samples after the fault are lost
    "json_decode",  # the .json is not a JSON object, its label not an integer or its qa not a list of objects
    "image_decode",  # image bytes that do not decode (garbage, truncated, decompression bomb)
    "audio_decode",  # audio bytes that do not decode, or no samples
    "empty_caption",  # a required caption that is empty or whitespace
    "missing_image",  # a required modality absent from the sample
    "missing_audio",
    "missing_text",
    "missing_qa",  # required QA but no non-empty question/answer pair
    "missing_conversation",  # required conversation but no `conversations` in the json
    "bad_conversation",  # `conversations` whose turns break a rule (conversations.py's reasons)
)
MIN_SAMPLES_FOR_BAD_FRACTION = 100  # max_bad_fraction is checked once a rank has read this many (or all)


def empty_report() -> dict[str, Any]:
    """A report with nothing read: {"samples": 0, "bad": {reason: 0 ...}, "examples": {}}."""
    return {"samples": 0, "bad": dict.fromkeys(BAD_REASONS, 0), "examples": {}}


def merge_data_reports(reports: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The sum of several `ShardLoader.data_report()`s (e.g. one per rank, gathered): samples and bad
    counts added, the first example of each reason kept."""
    total = empty_report()
    for report in reports:
        total["samples"] += int(report["samples"])
        for reason, count in report["bad"].items():
            total["bad"][reason] = total["bad"].get(reason, 0) + int(count)
        for reason, example in report["examples"].items():
            total["examples"].setdefault(reason, example)
    return total


class EpochReport:
    """The running report of one epoch on one rank, fed one batch's counts at a time."""

    def __init__(self, shard_dir: str, max_bad_fraction: float, planned_samples: int):
        self.shard_dir = shard_dir
        self.max_bad_fraction = max_bad_fraction
        self.planned_samples = planned_samples  # still to be read in this iteration
        # The fraction is judged once this many samples were read: 100, or every sample this rank reads.
        self.judge_at = min(MIN_SAMPLES_FOR_BAD_FRACTION, planned_samples)
        self.samples = 0
        self.bad = [0] * len(BAD_REASONS)
        self.examples: dict[str, str] = {}

    def restore(self, report: dict[str, Any]) -> None:
        """Start from the counts of `report` (the epoch's report at a resume point, from `as_dict()`), so
        the fraction is judged over every sample of the epoch, as in the uninterrupted run."""
        bad = report.get("bad") if isinstance(report, dict) else None
        samples = report.get("samples") if isinstance(report, dict) else None
        if not isinstance(samples, int) or samples < 0 or not isinstance(bad, dict):
            raise DataError(
                f"{self.shard_dir}: a restored data report must be {{'samples': int, 'bad': {{reason: int}}, "
                f"'examples': {{reason: key}}}}, got {report!r:.80}"
            )
        unknown = sorted(set(bad) - set(BAD_REASONS))
        if unknown:
            raise DataError(f"{self.shard_dir}: the restored data report has unknown bad reason(s) {unknown}")
        self.samples = samples
        self.bad = [int(bad.get(reason, 0)) for reason in BAD_REASONS]
        self.examples = {
            str(r): str(k) for r, k in (report.get("examples") or {}).items() if r in BAD_REASONS
        }
        self.judge_at = min(MIN_SAMPLES_FOR_BAD_FRACTION, samples + self.planned_samples)

    def add(self, samples: int, bad: list[int], examples: dict[str, str]) -> None:
        """Count one delivered batch; DataError when the epoch's bad fraction has gone past the limit."""
        self.samples += samples
        if not any(bad):
            return
        self.bad = [a + b for a, b in zip(self.bad, bad)]
        for reason, example in examples.items():
            self.examples.setdefault(reason, example)
        num_bad = sum(self.bad)
        if (
            self.judge_at > 0
            and self.samples >= self.judge_at
            and num_bad > self.max_bad_fraction * self.samples
        ):
            top = sorted((i for i, n in enumerate(self.bad) if n), key=lambda i: -self.bad[i])[:3]
            reasons = ", ".join(
                f"{BAD_REASONS[i]} {self.bad[i]} (e.g. {self.examples.get(BAD_REASONS[i], '?')})" for i in top
            )
            raise DataError(
                f"{self.shard_dir}: {num_bad} of the {self.samples} samples read this epoch are bad "
                f"({num_bad / self.samples:.0%} > max_bad_fraction {self.max_bad_fraction}): {reasons}"
            )

    def as_dict(self) -> dict[str, Any]:
        """{"samples": int, "bad": {reason: int for every reason}, "examples": {reason: key or shard}}."""
        return {
            "samples": self.samples,
            "bad": dict(zip(BAD_REASONS, self.bad)),
            "examples": {r: self.examples[r] for r in BAD_REASONS if r in self.examples},
        }
