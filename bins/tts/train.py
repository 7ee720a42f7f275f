"""Recipe stage entry point: not implemented yet (tracked in issue 5)."""

import sys

if __name__ == "__main__":
    print("bins/tts/train.py: not implemented yet (issue 5)", file=sys.stderr)
    sys.exit(2)
