"""Run the ``distill`` command and SIGKILL it at the N-th checkpoint it writes, as a crash
or an out-of-memory kill would (launched by tests/test_resume_run.py).

    python tests/kill_run.py written 6 run recipe.yaml --set ...   # after checkpoint 6
    python tests/kill_run.py renaming 6 run recipe.yaml --set ...  # checkpoint 6 whole in
                                                                   # step_N.tmp, not renamed
"""

from __future__ import annotations

import os
import signal
import sys

from distill.training import checkpoint


def main() -> None:
    where, count, *command = sys.argv[1:]
    calls = {"n": 0}
    save, checksums = checkpoint.save_checkpoint, checkpoint.write_checksums

    def kill_after_save(*args, **kwargs):
        result = save(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == int(count):
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    def kill_before_rename(folder, names):
        result = checksums(folder, names)  # the last write into step_N.tmp
        calls["n"] += 1
        if calls["n"] == int(count):
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    if where == "written":
        checkpoint.save_checkpoint = kill_after_save
    else:
        checkpoint.write_checksums = kill_before_rename

    from distill.cli import app

    sys.argv = ["distill", *command]
    app()


if __name__ == "__main__":
    main()
