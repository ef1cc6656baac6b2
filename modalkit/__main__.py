"""`python -m modalkit`: the `modalkit` command, for when the script is not on PATH."""

from modalkit.cli import main

if __name__ == "__main__":
    main(prog_name="modalkit")
