"""Rewrite the `name==version` pins of envs/*.yaml from requirements.lock (run by update_lock.sh).

Only the version changes; which packages an environment holds, and its comments, stay as written.
A package an environment names that the lock does not hold is an error: add it to pyproject.toml.
"""

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^(\s*-\s*)([A-Za-z0-9_.\-]+)==(\S+)\s*$")


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def main() -> int:
    locked = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==(\S+)", line.strip())
        if m:
            locked[normalise(m.group(1))] = m.group(2)
    missing = []
    for path in sorted((REPO / "envs").glob("*.yaml")):
        lines = []
        for line in path.read_text().splitlines(keepends=True):
            m = PIN.match(line)
            if m:
                name = m.group(2)
                if normalise(name) not in locked:
                    missing.append(f"{path.name}: {name}")
                else:
                    line = f"{m.group(1)}{name}=={locked[normalise(name)]}\n"
            lines.append(line)
        path.write_text("".join(lines))
    if missing:
        print("not in requirements.lock (add them to pyproject.toml):", ", ".join(missing), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
