"""python tools/ntu_gendata.py --data_path <dir of .skeleton> --out_folder <dir> [--dataset ntu120] (docs/method.md §6).

The command line of the NTU RGB+D converter, feeder/prepare/ntu.py (`--help` lists the options).
"""
if __package__ in (None, ""):  # run as a script: the repository root on sys.path
    import _bootstrap  # noqa: F401
from feeder.prepare.ntu import main  # noqa: E402

if __name__ == "__main__":
    main()
