"""python feeder/preprocess_ntu.py --dataset_path <gendata out_folder> --out_folder <dir> [--frames 64]

The release's command line (docs/method.md §6) of the preprocessing, feeder/prepare/preprocess.py
(`--help` lists the options).
"""
import os
import sys

if not __package__:
    # Run as a script: Python put feeder/ first on the path, where feeder.py would shadow the package.
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from feeder.prepare.preprocess import main  # noqa: E402

if __name__ == "__main__":
    main()
