"""Imported first by a tools/ script run as `python tools/<name>.py`: puts the repository root on sys.path,
so the script imports feeder, net, processor and torchlight as main.py and the tests do. The one place
that touches sys.path (besides feeder/preprocess_ntu.py's own, for its docs/method.md §6 command line)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
