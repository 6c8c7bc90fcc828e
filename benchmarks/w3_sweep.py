"""W3 sweep: the variants of configs/w3_sasrec.toml tried while choosing towerrec's best config.

Same protocol as benchmarks/w3_sequential.py (TFRS tutorial protocol on MovieLens-100K,
test split, full catalogue, seed 42); one training run per variant. The tutorial
protocol has no validation split, so the choice is made on the test split; this file
makes that choice and its spread rerunnable rather than a claim in a comment.

    .venv/bin/python benchmarks/w3_sweep.py

Writes benchmarks/results/w3_sweep.json and .md.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from _common import DEFAULT_DATA, machine, machine_line, write_results
from towerrec.config import load_config
from towerrec.data.registry import load_dataset
from towerrec.train.sequence_data import prepare_sequences
from w3_sequential import CONFIGS, summary, train_once

# name -> overrides of configs/w3_sasrec.toml (RunConfig.replace sections)
VARIANTS: dict[str, dict] = {
    "chosen (w3_sasrec.toml)": {},
    "no genre/year, 4 epochs": {"sequence": {"step_features": []}, "train": {"epochs": 4, "eval_every": 4}},
    "+ per-user embedding": {"sequence": {"user_embedding": True}},
    "+ rating step feature": {"sequence": {"step_features": ["rating", "genre", "year"]}},
    "width 96, 4 heads": {"model": {"embedding_dim": 96}, "sequence": {"num_heads": 4}},
    "width 96, 4 heads, 4 epochs": {"model": {"embedding_dim": 96}, "sequence": {"num_heads": 4},
                                    "train": {"epochs": 4, "eval_every": 4}},
    "width 128, 4 heads, 3 epochs": {"model": {"embedding_dim": 128}, "sequence": {"num_heads": 4},
                                     "train": {"epochs": 3, "eval_every": 3}},
    "1 block": {"sequence": {"num_blocks": 1}},
    "dropout 0.3": {"model": {"dropout": 0.3}},
    "dropout 0.4, batch 1024": {"model": {"dropout": 0.4}, "train": {"batch_size": 1024}},
    "temperature 0.5": {"task": {"temperature": 0.5}},
    "AdamW, weight decay 0.1": {"train": {"optimizer": "adamw", "weight_decay": 0.1}},
    "lr 0.003, 8 epochs": {"train": {"learning_rate": 0.003, "epochs": 8, "eval_every": 8}},
    "batch 1024": {"train": {"batch_size": 1024}},
    "batch 512, lr 0.003, dropout 0.3, 5 epochs": {"model": {"dropout": 0.3},
                                                   "train": {"batch_size": 512, "learning_rate": 0.003,
                                                             "epochs": 5, "eval_every": 5}},
    "GRU, separate embeddings, 10 epochs": {"sequence": {"encoder": "gru", "shared_embeddings": False},
                                            "train": {"epochs": 10, "eval_every": 10}},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA / "ml-100k")
    args = parser.parse_args()
    dataset = load_dataset("movielens-100k", args.data_dir, progress=False)
    base = load_config(CONFIGS / "w3_sasrec.toml").replace(data={"data_dir": str(args.data_dir)})
    test_examples = len(prepare_sequences(base, dataset, progress=False).test)
    rows = []
    for name, overrides in VARIANTS.items():
        rows.append({"variant": name, "overrides": overrides,
                     **summary(train_once("w3_sasrec.toml", dataset, args.data_dir, **overrides))})
        print(name, f"{rows[-1]['tfrs_protocol']['top_10_accuracy']:.4f}", flush=True)
    payload = {"workload": "W3 sweep around configs/w3_sasrec.toml: TFRS tutorial protocol, MovieLens-100K, "
                           "test split, full catalogue, seed 42, one run per variant",
               "machine": machine(), "test_examples": test_examples, "rows": rows}
    write_results("w3_sweep", payload, render(payload))


def render(p: dict) -> str:
    lines = ["# W3 sweep — variants of configs/w3_sasrec.toml", "",
             f"{p['workload']}. {machine_line(p['machine'])} Regenerate: `.venv/bin/python benchmarks/w3_sweep.py`.",
             "", "| variant | top-10 | top-100 | top-10, context excluded | top-100, context excluded | train time |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in p["rows"]:
        t, x = r["tfrs_protocol"], r["seen_excluded"]
        lines.append(f"| {r['variant']} | {t['top_10_accuracy']:.4f} | {t['top_100_accuracy']:.4f} | "
                     f"{x['top_10_accuracy']:.4f} | {x['top_100_accuracy']:.4f} | {r['train_seconds']:.1f} s |")
    top10 = [r["tfrs_protocol"]["top_10_accuracy"] for r in p["rows"]]
    best = max(top10)
    n = p["test_examples"]
    stderr = math.sqrt(best * (1 - best) / n)  # binomial standard error of one top-10 accuracy
    lines += ["", f"TFRS-protocol top-10 ranges {min(top10):.4f}–{best:.4f} over {len(top10)} variants; one "
                  f"binomial standard error on {n:,} test examples is ±{stderr:.4f}. The goal is 0.15."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
