"""Held-out QA evaluation: every QA pair of every sample answered by greedy generation with the prefix from
every modality, each modality alone, and none (blind), beside the majority answer per question; normalized
exact match and token F1, overall and per question; eval.json and the printed table.

Each rank answers its share of the split; the shares are gathered and de-duplicated by (sample key,
QA index), so the scores are those of the whole split whatever the world size.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
import string
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from eg_data import LoaderConfig, ShardLoader, merge_data_reports
from eg_train import DistInfo, all_gather_objects
from torch import nn

from apps.common.loaders import check_shard_dir, eval_loader
from apps.qa.config import BATCH_KEY, QAConfig

ARTICLES = re.compile(r"\b(a|an|the)\b")
PUNCTUATION = str.maketrans("", "", string.punctuation)
MAJORITY = "majority"
BLIND = "blind"
OTHER_QUESTIONS = "(other)"


# ---- scoring ----------------------------------------------------------------------------------
def normalize_answer(text: str) -> str:
    """Lowercase, drop punctuation and the articles a/an/the, collapse whitespace (SQuAD's normalization)."""
    text = text.lower().translate(PUNCTUATION)
    return " ".join(ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the normalized strings are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    """F1 of the normalized tokens (bag of words, as SQuAD); two empty answers score 1.0."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def prefix_variants(modalities: Sequence[str]) -> dict[str, list[str]]:
    """{name: prefix modalities}: all of them, each alone (when there are several), and none (blind)."""
    names = [BATCH_KEY[m] for m in modalities]
    variants = {"+".join(names): list(modalities)}
    if len(modalities) > 1:
        variants.update({BATCH_KEY[m]: [m] for m in modalities})
    variants[BLIND] = []
    return variants


def majority_answers(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The most frequent answer per question (ties: the alphabetically first); "" maps to the overall one."""
    per_question: dict[str, Counter] = {}
    overall: Counter = Counter()
    for question, answer in pairs:
        per_question.setdefault(question, Counter())[answer] += 1
        overall[answer] += 1

    def top(counts: Counter) -> str:
        best = max(counts.values())
        return min(a for a, n in counts.items() if n == best)

    result = {q: top(c) for q, c in per_question.items()}
    result[""] = top(overall) if overall else ""
    return result


def score_rows(rows: list[dict[str, Any]], variants: Sequence[str], max_questions: int) -> dict[str, Any]:
    """Exact match and token F1 per variant, overall and per question (the `max_questions` most frequent
    questions; the others pooled as "(other)")."""
    counts = Counter(row["question"] for row in rows)
    shown = [q for q, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:max_questions]]
    kept = set(shown)
    group = [row["question"] if row["question"] in kept else OTHER_QUESTIONS for row in rows]
    sizes = Counter(group)
    questions = shown + ([OTHER_QUESTIONS] if OTHER_QUESTIONS in sizes else [])
    result: dict[str, Any] = {"exact_match": {}, "token_f1": {}}
    for metric, fn in (("exact_match", exact_match), ("token_f1", token_f1)):
        for variant in variants:
            sums = dict.fromkeys(questions, 0.0)
            for row, g in zip(rows, group):
                sums[g] += fn(row["generated"][variant], row["reference"])
            result[metric][variant] = {
                "overall": sum(sums.values()) / len(rows) if rows else float("nan"),
                "per_question": {q: sums[q] / sizes[q] for q in questions},
            }
    result["question_counts"] = {q: sizes[q] for q in questions}
    return result


# ---- generation -------------------------------------------------------------------------------
@torch.no_grad()
def collect_answers(
    model: nn.Module,
    loader: Iterable[dict[str, Any]],
    variants: dict[str, list[str]],
    max_new_tokens: int,
    device: torch.device,
    max_samples: int = 0,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Answer every QA row of `loader` with each prefix variant: ([{key, qa_index, question, reference,
    generated}], eg-data's report of the samples read and skipped as bad, summed over ranks).

    Runs on every rank and returns the whole split on every rank (gathered, de-duplicated by
    (key, qa_index, question)), in that order. `max_samples` > 0 stops after that many samples per rank.
    """
    model = getattr(model, "module", model)  # DDP's wrapper
    local: list[dict[str, Any]] = []
    seen_keys: set[str] = set()
    for batch in loader:
        if max_samples and len(seen_keys) >= max_samples:
            break
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        has_qa = batch.get("qa_present")
        qa_index = batch.get("qa_index")
        rows = [i for i in range(len(batch["question"])) if has_qa is None or bool(has_qa[i])]
        if not rows:
            continue
        answers = {name: model.generate(batch, mods, max_new_tokens) for name, mods in variants.items()}
        for i in rows:
            seen_keys.add(batch["key"][i])
            local.append(
                {
                    "key": batch["key"][i],
                    "qa_index": -1 if qa_index is None else int(qa_index[i]),
                    "question": batch["question"][i],
                    "reference": batch["answer"][i],
                    "generated": {name: answers[name][i] for name in variants},
                }
            )
    parts = all_gather_objects({"rows": local, "data": loader.data_report()})
    merged: dict[tuple[str, int, str], dict[str, Any]] = {}
    for part in parts:
        for row in part["rows"]:
            merged.setdefault((row["key"], row["qa_index"], row["question"]), row)
    return [merged[k] for k in sorted(merged)], merge_data_reports(p["data"] for p in parts)


# ---- reports ----------------------------------------------------------------------------------
def build_report(
    rows: list[dict[str, Any]],
    data: dict[str, Any],
    cfg: QAConfig,
    variants: dict[str, list[str]],
    majority: dict[str, str],
) -> dict[str, Any]:
    """The eval dict: scores per variant (majority first), the variants' modalities, sample rows, and the
    data report (samples read, bad ones skipped by reason)."""
    for row in rows:
        row["generated"][MAJORITY] = majority.get(row["question"], majority.get("", ""))
    names = [MAJORITY, *variants]
    scores = score_rows(rows, names, cfg.eval.max_questions)
    picked = sorted(random.Random(cfg.seed).sample(range(len(rows)), min(cfg.eval.num_rows, len(rows))))
    return {
        "experiment_name": cfg.experiment_name,
        "num_samples": len({row["key"] for row in rows}),
        "num_pairs": len(rows),
        "variants": {MAJORITY: "most frequent training answer per question", **variants},
        **scores,
        "majority_answers": {q: a for q, a in majority.items() if q},
        "rows": [rows[i] for i in picked],  # a fixed random sample of the rows
        "data": data,
    }


def format_table(report: dict[str, Any]) -> str:
    """Exact match per question (rows) and variant (columns), then the overall token F1 line."""
    names = list(report["exact_match"])
    width = max([len("question")] + [len(q) for q in report["question_counts"]]) + 2
    head = f"{'question':<{width}}{'n':>6}" + "".join(f"{n:>14}" for n in names)
    lines = [head, "-" * len(head)]
    em = report["exact_match"]
    lines.append(
        f"{'exact match (all)':<{width}}{report['num_pairs']:>6}"
        + "".join(f"{em[n]['overall']:>14.3f}" for n in names)
    )
    for question, count in report["question_counts"].items():
        lines.append(
            f"{question:<{width}}{count:>6}"
            + "".join(f"{em[n]['per_question'][question]:>14.3f}" for n in names)
        )
    f1 = report["token_f1"]
    lines.append(
        f"{'token F1 (all)':<{width}}{report['num_pairs']:>6}"
        + "".join(f"{f1[n]['overall']:>14.3f}" for n in names)
    )
    return "\n".join(lines)


def print_report(report: dict[str, Any], num_rows: int) -> None:
    """The table with a one-line header, then a few (question, reference, generated) rows."""
    print(
        f"\nheld-out QA ({report.get('split', '?')}, {report['num_samples']} samples, {report['num_pairs']} "
        f"question-answer pairs), exact match by prefix:"
    )
    print(format_table(report))
    for row in report["rows"][:num_rows]:
        answers = ", ".join(f"{n}: {a!r}" for n, a in row["generated"].items())
        print(f"  {row['key']}  {row['question']!r} -> {row['reference']!r} | {answers}")
    bad = {reason: n for reason, n in report["data"]["bad"].items() if n}
    if bad:
        examples = report["data"]["examples"]
        listed = ", ".join(f"{reason} {n} (e.g. {examples.get(reason, '?')!r})" for reason, n in bad.items())
        print(f"skipped {sum(bad.values())} unreadable samples of the {report['split']} split: {listed}")


def write_report(report: dict[str, Any], out_dir: str | Path) -> None:
    """eval.json in `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(report, indent=2) + "\n")


class QAValidator:
    """eg-train's `evaluate_fn(model, step)`: exact match and token F1 on val with the full prefix."""

    def __init__(self, cfg: QAConfig, loader: Iterable[dict[str, Any]], device: torch.device) -> None:
        self.cfg, self.loader, self.device = cfg, loader, device
        name, modalities = next(iter(prefix_variants(cfg.model.modalities).items()))  # every modality
        self.variant = {name: modalities}

    def __call__(self, model: nn.Module, step: int) -> dict[str, float]:
        """{"qa/exact_match", "qa/token_f1"} (logged as val/qa/...)."""
        rows, _ = collect_answers(
            model,
            self.loader,
            self.variant,
            self.cfg.eval.max_new_tokens,
            self.device,
            self.cfg.eval.max_val_samples,
        )
        (name,) = self.variant
        scores = score_rows(rows, [name], 1)
        return {
            "qa/exact_match": scores["exact_match"][name]["overall"],
            "qa/token_f1": scores["token_f1"][name]["overall"],
        }


ALL_PAIRS: dict[str, Any] = {"qa_pairs": "all"}  # with eval mode: every sample once, each QA pair a row


def qa_eval_loader(loader_cfg: LoaderConfig, shard_dir: str, batch_size: int, key: str) -> ShardLoader:
    """Every sample of `shard_dir` once, each QA pair of it a row, in a fixed order."""
    return eval_loader(loader_cfg, shard_dir, batch_size, key, **ALL_PAIRS)


def training_pairs(loader_cfg: LoaderConfig, batch_size: int) -> Iterator[tuple[str, str]]:
    """Every (question, answer) of the training split, reading the json only, on whichever rank calls it
    (the majority baseline, the demo tokenizer's corpus)."""
    check_shard_dir("data.train.shard_dir", loader_cfg.shard_dir)
    qa_only = dataclasses.replace(
        loader_cfg,
        batch_size=batch_size,
        num_workers=0,  # json only: nothing worth a worker process
        shuffle=False,
        mode="eval",
        modalities=["qa"],
        required=["qa"],
        **ALL_PAIRS,
    ).build(rank=0, world_size=1)
    qa_only.set_epoch(0)
    for batch in qa_only:
        yield from zip(batch["question"], batch["answer"])


def evaluate_model(
    model: nn.Module, cfg: QAConfig, loader_cfg: LoaderConfig, shard_dir: str, key: str, info: DistInfo
) -> dict[str, Any]:
    """Answer every QA pair of `shard_dir` with every prefix variant; the eval dict on rank 0 ({} elsewhere)."""
    loader = qa_eval_loader(loader_cfg, shard_dir, cfg.eval.batch_size, key)
    variants = prefix_variants(cfg.model.modalities)
    rows, data = collect_answers(model, loader, variants, cfg.eval.max_new_tokens, info.device)
    if not info.is_main:
        return {}
    majority = majority_answers(training_pairs(loader_cfg, cfg.eval.batch_size))
    report = build_report(rows, data, cfg, variants, majority)
    return {"split": Path(shard_dir).name, **report}


def evaluate_checkpoint(cfg: QAConfig, checkpoint: str, split_dir: str = "") -> dict[str, Any]:
    """Rebuild the QA model (stage-1 towers + decoder), load `checkpoint`, evaluate the test split (or
    `split_dir`); rewrites outputs/<experiment_name>/eval.json and returns the eval dict."""
    from eg_train import init_distributed

    from apps.qa.build import load_trained, qa_loader_config

    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    info = init_distributed(cfg.train.device)
    model, aligned, meta = load_trained(cfg, checkpoint, info.device)
    loader_cfg = qa_loader_config(cfg, aligned.towers)
    key = "--split-dir" if split_dir else "data.test_dir"
    report = evaluate_model(model, cfg, loader_cfg, split_dir or cfg.data.test_dir, key, info)
    if info.is_main:
        report["checkpoint"] = str(checkpoint)
        report["checkpoint_step"] = meta.get("step")
        write_report(report, cfg.train.output_dir)
        print_report(report, cfg.eval.print_rows)
    return report
