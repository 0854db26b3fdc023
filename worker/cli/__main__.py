"""`python -m worker.cli`: the carewatch command."""

from .main import main

main()
