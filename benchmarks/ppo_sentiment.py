"""PPO on the sentiment task with SmolLM2-135M: against a reward model trained on
oracle-labelled pairs, and against the oracle itself, each compared with the starting
policy on held-out prompts (mean oracle reward, KL to the start).

Reuses a quickstart run folder (`--run`, default runs/quickstart): its pairs, reward
model and PPO-vs-reward-model policy are trained there if missing (finished stages are
skipped), then PPO with the oracle as reward is trained with the same settings.

Run with `make bench-ppo`; numbers go to benchmarks/results/ppo_sentiment.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from alignkit.quickstart import Quickstart, format_summary


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", type=Path, default=Path("runs/quickstart"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ppo_sentiment.json"))
    args = parser.parse_args()
    quickstart = Quickstart(args.run, preset="full")
    for _title, name, stage in quickstart.stages[:3]:  # pairs, reward model, PPO vs RM
        if not (args.run / f"{name}.done").is_file():
            stage()
            (args.run / f"{name}.done").write_text("{}")
    if not (args.run / "ppo-oracle" / "final" / "config.json").is_file():
        quickstart.train_ppo("ppo-oracle", reward="task:sentiment", critic="policy")
    rows, samples = quickstart.evaluate_policies(
        {
            "start": None,
            "PPO vs reward model": args.run / "ppo" / "final",
            "PPO vs oracle": args.run / "ppo-oracle" / "final",
        }
    )
    summary = {"preset": "full", "held_out_prompts": len(samples["start"]), "policies": rows}
    print(format_summary(summary))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
