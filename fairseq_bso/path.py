"""Print the folder to pass to ``--user-dir`` for the installed plugin.

    fairseq-train --user-dir "$(python -m fairseq_bso.path)" ...
"""

import os


def user_dir() -> str:
    return os.path.dirname(os.path.abspath(__file__))


if __name__ == "__main__":
    print(user_dir())
