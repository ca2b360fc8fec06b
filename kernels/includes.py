"""The text a compiler gets from a .cu file: its `#include "name"` of kernels' own headers spliced in.

    text = includes.expand(source, path)          # source: the text of the .cu at path
    text = includes.expand(source, path, label)   # label: the name the .cu's lines go by (default: path)

NVRTC (CuPy's RawModule, `minigrad kernels check`) and the CPU emulator's g++ build both compile
this one text, so they see the same code, and every cache keyed on the compiled text (the emulator's
libraries, CuPy's kernel cache, which does not hash the headers a source includes) changes when a
header does. A quoted include names a file beside the .cu (when ``path`` is absolute) or in kernels/ (a
planted copy of a shipped .cu elsewhere still finds the headers); it is replaced by
``#line 1 "<header path>"``, the header, then ``#line <next line> "<label>"``, so errors and
sanitizer reports name the header's and the .cu's own lines. Headers may include headers; each is
spliced once (they are `#pragma once`). Angle-bracket includes and names found nowhere are left to
the compiler.
"""
from __future__ import annotations

import re
from pathlib import Path

KERNEL_DIR = Path(__file__).resolve().parent
_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]+"([^"]+)"[^\n]*$', re.MULTILINE)


def _find(name: str, cu: Path) -> Path | None:
    for folder in ((cu.parent,) if cu.is_absolute() else ()) + (KERNEL_DIR,):
        path = folder / name
        if path.is_file():
            return path.resolve()
    return None


def expand(source: str, path, label: str | None = None, _seen: set | None = None) -> str:
    """``source`` (the text of the .cu at ``path``) with each quoted include of a kernels header
    replaced by that header's text; the .cu's lines go by ``label`` (default: ``path``)."""
    path = Path(path)
    label = str(path) if label is None else label
    seen = set() if _seen is None else _seen
    out, pos = [], 0
    for m in _INCLUDE.finditer(source):
        header = _find(m.group(1), path)
        if header is None:
            continue
        out.append(source[pos:m.start()])
        if header not in seen:
            seen.add(header)
            body = expand(header.read_text(), header, None, seen)
            line_after = source.count("\n", 0, m.end()) + 2       # the line after the include, 1-based
            out.append(f'#line 1 "{header}"\n{body}{"" if body.endswith(chr(10)) else chr(10)}'
                       f'#line {line_after} "{label}"')
        pos = m.end()
    out.append(source[pos:])
    return "".join(out)
