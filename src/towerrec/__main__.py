"""``python -m towerrec ...`` runs the CLI (what ``torchrun -m towerrec train CONFIG`` starts in each process)."""

from towerrec.cli.app import main

if __name__ == "__main__":
    main()
