"""python main.py <processor> [--config X.yaml] [--key value ...]: run one processor of the registry.

Command line > config file > processor preset > code defaults; nested keys as --model_args.dropout 0.
"""
import sys

from processor import PROCESSORS, configure
from torchlight.config import ConfigError, load_yaml, parse_overrides
from torchlight.dist import leave_process_group


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        raise SystemExit(__doc__ + "\nprocessors: " + ", ".join(PROCESSORS))
    failed = True
    try:
        overrides = parse_overrides(argv[1:])
        config_path = overrides.pop("config", None)
        config = load_yaml(config_path) if config_path else {}
        cls, cfg = configure(argv[0], config, overrides, source=config_path or "config")
        result = cls(cfg).start()
        failed = False
        return result
    except (ConfigError, FileNotFoundError, ValueError) as e:
        # Bad input is reported in one line naming the file, key or value; bugs keep their traceback.
        raise SystemExit(f"error: {e}") from None
    finally:
        leave_process_group(failed)  # under torchrun: a failing rank exits at once, never waits on the others


if __name__ == "__main__":
    main()
