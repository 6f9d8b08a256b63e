"""The demo-over-seeds benchmark's aggregation (benchmarks/demo_seeds.py), on hand-made demo summaries."""

from __future__ import annotations

from _tiny import load_benchmark


def _summary(main_volume: float, dpo_volume: float, main_concise: float) -> dict:
    nan = float("nan")
    return {"dimensions": ["concise", "polite"], "methods": {
        "λ-DPO": {"spearman_means": {"concise": main_concise, "polite": 0.9}, "target_gap": 0.05,
                  "hypervolume": main_volume, "heldout_accuracy": 0.9},
        "unconditioned": {"spearman_means": {"concise": nan, "polite": nan}, "target_gap": 0.2,
                          "hypervolume": 0.01, "heldout_accuracy": 0.6},
        "DPO": {"spearman_means": {"concise": 0.5, "polite": 0.7}, "target_gap": 0.1, "hypervolume": dpo_volume,
                "heldout_accuracy": 0.95},
        "oracle": {"spearman_means": {"concise": 0.9, "polite": 0.95}, "target_gap": None, "hypervolume": 0.2,
                   "heldout_accuracy": None},
    }}


def test_table_gives_mean_and_std_over_seeds_and_counts_the_fronts_above():
    table = load_benchmark("demo_seeds").table([_summary(0.12, 0.10, 0.6), _summary(0.10, 0.14, 0.8)])
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[1:] for line in table.splitlines()[2:]}
    # λ-DPO: concise (0.6, 0.8) → +0.70 ± 0.14; its front is above DPO's in 1 of the 2 seeds, above the
    # unconditioned control's in both; the oracle has no accuracy and no gap; a constant model has no Spearman.
    assert rows["λ-DPO"][:3] == ["+0.70 ± 0.14", "+0.90 ± 0.00", "0.050 ± 0.000"]
    assert rows["λ-DPO"][3] == "0.110 ± 0.014" and rows["λ-DPO"][4] == "—"
    assert rows["DPO"][4] == "1 / 2" and rows["unconditioned"][4] == "2 / 2"
    assert rows["unconditioned"][:2] == ["n/a", "n/a"]
    assert rows["oracle"][2] == "—" and rows["oracle"][5].rstrip(" |") == "—"
