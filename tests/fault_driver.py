"""``deepnmf`` with one fault injected, for tests/test_faults.py: a real process that kills itself
with SIGKILL at a chosen instant, as a power cut or the OOM killer would.

    python -m tests.fault_driver --kill-at-rename best/12 -- train --config ... --workdir ...

``--kill-at-rename PARENT/NAME`` kills the process when orbax renames a finished temporary checkpoint
folder to ``.../PARENT/NAME`` (the instant that makes a save complete): the save is cut short with
its temporary folder left behind.
"""

import argparse
import os
import signal
import sys

from orbax.checkpoint._src.path import async_path

from deepnmf_jax import cli


def kill_at_rename(target: str) -> None:
    rename = async_path.rename

    async def renaming(src, dst):
        if str(dst).rstrip("/").endswith("/" + target):
            os.kill(os.getpid(), signal.SIGKILL)
        return await rename(src, dst)

    async_path.rename = renaming


def main() -> int:
    argv = sys.argv[1:]
    split = argv.index("--")
    parser = argparse.ArgumentParser()
    parser.add_argument("--kill-at-rename", required=True)
    args = parser.parse_args(argv[:split])
    kill_at_rename(args.kill_at_rename)
    return cli.main(argv[split + 1 :])


if __name__ == "__main__":
    sys.exit(main())
