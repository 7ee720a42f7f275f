"""Recipe stage entry point: not implemented yet (tracked in issue 3)."""

import sys

if __name__ == "__main__":
    print("bins/tts/preprocess.py: not implemented yet (issue 3)", file=sys.stderr)
    sys.exit(2)
