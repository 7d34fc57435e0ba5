"""python -m course.fl_project leaderboard GRADING_FOLDER   (rank a grading run's project scores)
python -m course.fl_project baseline [--seeds 0 1 2]      (score the starter submission)"""

import argparse
import sys
from pathlib import Path

from course import fl_project


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m course.fl_project", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    board = sub.add_parser("leaderboard", help="rank the score lines of a grading run's autograded notebooks")
    board.add_argument("grading",
                       help="the --out folder of `python -m autograders.grade 05b_federated_privacy`")
    base = sub.add_parser("baseline", help="score the starter submission with the harness")
    base.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    if args.command == "leaderboard":
        grading = Path(args.grading)
        if not (grading / "grades.csv").is_file() or not (grading / "autograded").is_dir():
            sys.exit(f"{grading} is not a grading run's output: it should hold grades.csv and autograded/. "
                     "Pass the --out folder of `python -m autograders.grade 05b_federated_privacy SUBMISSIONS "
                     "--out FOLDER` (not the submissions themselves).")
        print(fl_project.format_leaderboard(fl_project.leaderboard(grading)))
    else:
        score = fl_project.evaluate(fl_project.baseline(), seeds=args.seeds)
        print(score.summary())
        print(fl_project.score_line(score))


if __name__ == "__main__":
    main()
