"""Meta-train ANIL: ``python train.py [options]`` (installed as ``anil-train``).

The whole training script, read top to bottom, is ``anil/train.py``; this file only runs it
from a clone of the repository. ``python train.py --help`` lists the options.
"""

from anil.train import main

if __name__ == "__main__":
    main()
