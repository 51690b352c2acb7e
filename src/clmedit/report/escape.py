"""One escaper per output format, for any text that comes from a dataset, a model or a results file.

Such text is data, never markup: after escaping it reads the same and cannot start a heading, a
table cell, a LaTeX command, a mathtext formula or a script. Control characters (a terminal escape
sequence in a model name, a newline in a label) become spaces in the line-based formats.
"""

from __future__ import annotations

import json
import re
from typing import Any

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")  # C0/C1 controls and Unicode line breaks
_MARKDOWN = {ch: "\\" + ch for ch in "\\|<`*"}  # CommonMark backslash escapes
_LATEX = {
    "\\": r"\textbackslash{}", "^": r"\textasciicircum{}", "~": r"\textasciitilde{}",
    "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
    "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}",
}  # fmt: skip


def one_line(text: Any) -> str:
    """`text` as one line: every control character or line break is a space."""
    return _CONTROL.sub(" ", str(text))


def markdown(text: Any) -> str:
    """`text` for a Markdown table cell or heading: one line, no cell break, HTML tag, code span,
    emphasis or link (backslash escapes, so a terminal shows it almost as it is)."""
    return "".join(_MARKDOWN.get(ch, ch) for ch in one_line(text)).replace("](", "]\\(")


def latex(text: Any) -> str:
    """`text` for LaTeX body text: every special character typeset as itself, on one line."""
    return "".join(_LATEX.get(ch, ch) for ch in one_line(text))


def script_json(value: Any) -> str:
    """`value` as JSON safe inside an HTML <script> block: no `</script>`, `<!--` or `-->` can form,
    because every `<`, `>` and `&` is a JSON unicode escape (JSON.parse reads them back unchanged)."""
    text = json.dumps(value, ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
