"""Print how the classifier scores on the hand-labelled corpus (tests/corpus/labelled): the
confusion matrices for automated mail and for acknowledgements, precision and recall, and
every message it got wrong with the rule that decided.

    python benchmarks/classify.py [--peek BYTES]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "corpus"))
from score import Score, score  # noqa: E402

from worker import defaults  # noqa: E402


def matrix(title: str, m: dict[tuple[bool, bool], int], yes: str, no: str) -> None:
    precision, recall = Score.precision_recall(m)  # type: ignore[arg-type]
    print(f"\n{title}\n{'':>22}{'said ' + yes:>16}{'said ' + no:>16}")
    for label, name in ((True, yes), (False, no)):
        print(f"{'labelled ' + name:>22}{m.get((label, True), 0):>16}{m.get((label, False), 0):>16}")
    print(f"precision {precision:.2f}   recall {recall:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--peek", type=int, default=defaults.SNIPPET_BYTES, help="bytes of body read per message")
    args = ap.parse_args()
    s = score(args.peek)
    print(f"{len(s.rows)} messages, body peek {args.peek} bytes")
    matrix("Automated mail", s.auto_matrix(), "machine", "person")
    matrix("Acknowledgements (short replies by people)", s.ack_matrix(), "thanks", "waits")
    wrong = [r for r in s.rows
             if bool(r.kind) != (r.reason is not None) or (r.ack_label and (r.ack_label == "yes") != r.ack)]
    if wrong:
        print("\nWrong:")
        for r in wrong:
            print(f"  {r.file}: labelled {r.kind or 'person'}/{r.ack_label or '-'}; said {r.reason or 'person'}/"
                  f"{r.ack}  ({r.why})")


if __name__ == "__main__":
    main()
