"""`python -m services.auth`: run the service; `python -m services.auth rotate-key`: rotate."""

import sys

from services.auth.app import main, rotate_key_command

if __name__ == "__main__":
    if sys.argv[1:] == ["rotate-key"]:
        rotate_key_command()
    else:
        main()
