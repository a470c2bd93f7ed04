"""python main.py <processor> [--config X.yaml] [--key value ...]: run one processor of the registry.

Command line > config file > processor preset > code defaults; nested keys as --model_args.dropout 0.
`python main.py <processor> --help` lists every key with its default and meaning; `--print_config` prints
the merged config as YAML and runs nothing.
"""
import sys

from torchlight.threads import configure_openmp

configure_openmp()  # before torch loads OpenMP
import yaml  # noqa: E402

from processor import PROCESSORS, configure, describe  # noqa: E402
from torchlight.config import ConfigError, load_yaml, parse_overrides  # noqa: E402
from torchlight.dist import leave_process_group  # noqa: E402
from torchlight.util import logged_errors  # noqa: E402


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__ + "\nprocessors: " + ", ".join(PROCESSORS))
        return None
    failed = True
    try:
        wants_help = any(arg in ("-h", "--help") for arg in argv[1:])
        overrides = parse_overrides([arg for arg in argv[1:] if arg not in ("-h", "--help")])
        config_path = overrides.pop("config", None)
        print_config = overrides.pop("print_config", False)
        config = load_yaml(config_path) if config_path else {}
        cls, cfg = configure(argv[0], config, overrides, source=config_path or "config", need_method=not wants_help)
        if wants_help or print_config:
            if print_config and cfg.get("work_dir", "") is None and hasattr(cls, "default_work_dir"):
                cfg["work_dir"] = cls.default_work_dir(cfg)  # where the run would write
            failed = False
            print(describe(argv[0], cls, cfg) if wants_help else yaml.safe_dump(cfg, sort_keys=False), end="\n")
            return None
        processor = cls(cfg)
        with logged_errors(processor.log):  # the error line in log.txt too
            result = processor.start()
        failed = False
        return result
    except (ConfigError, OSError, ValueError) as e:
        # Bad input, or a full or unreadable disk, is one line naming the file, key or value; bugs keep their
        # traceback.
        raise SystemExit(f"error: {e}") from None
    finally:
        leave_process_group(failed)  # under torchrun: a failing rank exits at once, never waits on the others


if __name__ == "__main__":
    main()
