"""``python -m fedmosaic.privacy.attacks RUN_DIR [--round N] [--json FILE]``: attack a run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fedmosaic.privacy.attacks.run import attack_run


def main(argv: list[str] | None = None) -> dict:
    """Parse arguments, run the attacks, print a table and optionally write JSON."""
    parser = argparse.ArgumentParser(prog="python -m fedmosaic.privacy.attacks",
                                     description=__doc__)
    parser.add_argument("run_dir", type=Path, help="a fedmosaic run folder")
    parser.add_argument("--round", type=int, default=None,
                        help="checkpoint round to attack (default: the last)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    results = attack_run(args.run_dir, args.round)
    membership = results["membership_loss_threshold"]
    reident = results["reidentification_from_embeddings"]
    print(f"attacks on {results['run_dir']} (round {results['round']})")
    print(f"  membership (loss threshold): AUC {membership['auc']:.4f}, TPR@1%FPR "
          f"{membership['tpr_at_1pct_fpr']:.4f}, TPR@0.1%FPR {membership['tpr_at_01pct_fpr']:.4f}"
          f" ({membership['members']} members, {membership['non_members']} non-members)")
    print(f"  re-identification from embeddings: accuracy {reident['accuracy']:.4f} "
          f"(chance {reident['chance']:.4f}, {reident['targets']} samples)")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
