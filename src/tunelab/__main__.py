"""`python -m tunelab ...`: what torchrun and `accelerate launch -m tunelab` start in each process."""

from tunelab.cli import main

main()
