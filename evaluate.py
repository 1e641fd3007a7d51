"""Evaluate a saved run without training: ``python evaluate.py RUN [options]`` (installed as
``anil-evaluate``). The code is ``anil/run/evaluate.py``; ``--help`` lists the options."""

from anil.run.evaluate import main

if __name__ == "__main__":
    main()
