"""`python -m scorer` runs the `digits-score` command."""

from scorer.cli import main

main()
