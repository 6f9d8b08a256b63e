"""What ``lambda-dpo convert`` prints and writes: the summary table of a loaded dataset (records in/out, the
distribution of k, a histogram of each dimension's scores, how many scores are missing per dimension, rejections
by reason) and a dataset row as native listwise JSON."""

from __future__ import annotations

from collections import Counter


def _histogram(values: list[float], bins: int = 5) -> str:
    if not values:
        return "-"
    counts = Counter(values)
    if len(counts) <= 10:
        return "  ".join(f"{value:g}:{count}" for value, count in sorted(counts.items()))
    low, high = min(values), max(values)
    width = (high - low) / bins
    binned = Counter(min(int((v - low) / width), bins - 1) for v in values)
    return "  ".join(f"[{low + b * width:.3g},{low + (b + 1) * width:.3g}):{binned[b]}" for b in range(bins))


def summary_table(dataset, report) -> str:
    """The convert summary: records, k distribution, per-dimension histogram and masked counts, rejections."""
    ks = Counter(len(responses) for responses in dataset["responses"])
    lines = [
        report.summary(max_examples=0),
        "",
        f"records in (rows read): {report.rows_read}    records out: {len(dataset)}    "
        f"rejected: {len(report.rejections)}",
        "k (responses per prompt): " + "  ".join(f"{k}:{n}" for k, n in sorted(ks.items())),
        "",
    ]
    lines.append(f"{'dimension':<24}{'scores':>8}{'masked':>8}  histogram (value:count)")
    all_scores = dataset["scores"]
    for name in report.dimensions:
        values = [v for scores in all_scores for v in scores[name]]
        present = [v for v in values if v is not None]
        lines.append(f"{name:<24}{len(values):>8}{len(values) - len(present):>8}  {_histogram(present)}")
    return "\n".join(lines)


def native_record(record: dict) -> dict:
    """A dataset row as native listwise JSON: a single user message is written as a plain prompt string."""
    prompt = record["prompt"]
    if len(prompt) == 1 and prompt[0]["role"] == "user":
        prompt = prompt[0]["content"]
    out = {"id": record["id"], "prompt": prompt, "responses": record["responses"], "scores": record["scores"]}
    if record["system"]:
        out["system"] = record["system"]
    return out
