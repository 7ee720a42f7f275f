"""Recipe stage entry point: not implemented yet (tracked in issue 6)."""

import sys

if __name__ == "__main__":
    print("bins/tts/inference.py: not implemented yet (issue 6)", file=sys.stderr)
    sys.exit(2)
