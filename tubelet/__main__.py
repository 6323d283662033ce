"""`python -m tubelet` is the same CLI as the `tubelet` console script (torchrun-friendly)."""

from tubelet.cli import main

if __name__ == "__main__":
    main()
