"""The README's commands as a reader finds them: each indented code block whose lines start
with a command (``pip``, ``snakemake``, ``brainage``, ``export``, ...), and the inline
```snakemake ...``` commands of the prose. tests/test_readme_commands.py runs each, or says
why not."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
#: a code block is a command block when its first line starts with one of these
COMMAND_WORDS = ("pip ", "snakemake ", "brainage ", "export ", "mkdir ", "wget ", "python ", "pytest")


def code_blocks(text: str | None = None) -> list[str]:
    """Every indented code block (4+ spaces, after a blank line or inside a list item), its lines
    dedented and backslash continuations joined, as one string of lines."""
    lines = (README.read_text() if text is None else text).splitlines() + [""]
    blocks, current, blank_before = [], [], True
    for line in lines:
        if not line.strip():
            if current:
                blocks.append(current)
                current = []
            blank_before = True
            continue
        if re.match(r"^ {4,}\S", line) and (current or blank_before):
            current.append(line)
        elif current:
            blocks.append(current)
            current = []
        blank_before = False
    out = []
    for block in blocks:
        indent = min(len(b) - len(b.lstrip()) for b in block)
        joined = "\n".join(b[indent:] for b in block).replace("\\\n", " ")
        out.append("\n".join(re.sub(r"\s+", " ", line).strip() for line in joined.splitlines()))
    return out


def command_blocks(text: str | None = None) -> list[str]:
    return [b for b in code_blocks(text) if b.startswith(COMMAND_WORDS)]


def inline_snakemake(text: str | None = None) -> list[str]:
    """Inline ```snakemake <target or option>...``` commands of the prose (not ``snakemake`` alone)."""
    text = README.read_text() if text is None else text
    return sorted({m for m in re.findall(r"`(snakemake\s[^`]+)`", text)})


def run_command() -> str:
    """The README's "run the pipeline" command without its install part: ``snakemake --cores all``."""
    line = next(b for b in command_blocks() if b.startswith("pip install") and b.endswith("snakemake --cores all"))
    return line.split(" && ", 1)[1]
