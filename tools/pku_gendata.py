"""python tools/pku_gendata.py --skeleton_path PKU_Skeleton_Renew --label_path Train_Label_PKU_final ...

The command line of the PKU-MMD converter, feeder/prepare/pku.py (`--help` lists the options).
"""
if __package__ in (None, ""):  # run as a script: the repository root on sys.path
    import _bootstrap  # noqa: F401
from feeder.prepare.pku import main  # noqa: E402

if __name__ == "__main__":
    main()
