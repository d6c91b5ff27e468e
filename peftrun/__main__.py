"""`python -m peftrun ...` (also what `torchrun -m peftrun` runs)."""

from peftrun.cli import main

if __name__ == "__main__":
    main()
