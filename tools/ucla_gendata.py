"""python tools/ucla_gendata.py --data_path ./nwucla --out_folder ./data/ucla [--layout ntu-rgb+d]

The command line of the NW-UCLA converter, feeder/prepare/ucla.py (`--help` lists the options).
"""
if __package__ in (None, ""):  # run as a script: the repository root on sys.path
    import _bootstrap  # noqa: F401
from feeder.prepare.ucla import main  # noqa: E402

if __name__ == "__main__":
    main()
