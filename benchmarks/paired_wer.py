"""Is one system's WER really lower than another's on the same test utterances? A paired
bootstrap over utterances (asrkd.scoring.paired_bootstrap) of the hyps-*.txt files `asrkd
evaluate` (and `asrkd demo`) write, one pair per --pair:

    .venv/bin/python benchmarks/paired_wer.py \
        --pair runs/old/eval/student/hyps-test-other-greedy.txt runs/new/eval/student/hyps-test-other-greedy.txt \
        [--pair A B ...] [--rounds 5000] [--seed 0]

Prints a Markdown table: both WERs, the difference (second minus first) with its 95 % interval,
and the share of resamples in which the second is better. The interval covers the choice of
test utterances only; training noise (another seed, another checkpoint) comes on top.
"""

from __future__ import annotations

import argparse

from asrkd.scoring import paired_bootstrap, read_results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pair", nargs=2, action="append", required=True, metavar=("A", "B"))
    ap.add_argument("--rounds", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(
        "| first | second | utterances | words | WER first | WER second | difference | 95 % interval | second better in |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for a, b in args.pair:
        r = paired_bootstrap(read_results(a), read_results(b), args.rounds, args.seed)
        lo, hi = r["ci95"]
        print(
            f"| {a} | {b} | {r['n_utterances']} | {r['n_words']} | {r['wer_a']:.1%} | "
            f"{r['wer_b']:.1%} | {100 * r['difference']:+.1f} | [{100 * lo:+.1f}, {100 * hi:+.1f}] | "
            f"{r['b_better']:.1%} |"
        )


if __name__ == "__main__":
    main()
