"""python tools/pose_gendata.py --annotation poses.pkl --out_folder ./data/mine [--frames 64]

The command line of the PYSKL / MMAction2 skeleton-annotation converter, feeder/prepare/pose.py (`--help`
lists the options; docs/datasets.md, "Your own data", walks through an example).
"""
if __package__ in (None, ""):  # run as a script: the repository root on sys.path
    import _bootstrap  # noqa: F401
from feeder.prepare.pose import main  # noqa: E402

if __name__ == "__main__":
    main()
