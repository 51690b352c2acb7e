"""`report.html`: one self-contained page (inline CSS and JS, figures as data URIs, no network).

Sections: a header (model, size, what was reduced), the tables, the findings (report.findings), the
figures, and a case browser. The browser lists one entry per (case, editor): prompt, target,
rephrase, the five neighbours with their expected (unedited) answers, the unedited and edited outputs
with word differences highlighted, and the scores; it filters by task, editor and failed check.
Filters can be preset from the URL hash (`#task=cnle&editor=GRACE&failed=gen`), which is also how the
browser test drives it.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from clmedit.report.escape import script_json
from clmedit.report.findings import LEGEND, Finding
from clmedit.report.study_tables import Table

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1200px;padding:0 16px 40px;color:#222}
h1{font-size:22px}h2{margin-top:32px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0;font-size:12.5px}td,th{border:1px solid #ddd;padding:3px 6px}
th{background:#f3f3f3}td{text-align:right}td:first-child,td.l{text-align:left}
tr.published td{color:#666;font-style:italic;background:#fafafa}.note{color:#666;font-size:12px}
.finding h3{font-size:15px;margin-bottom:2px}.verdict{font-weight:600}li.published{color:#666;font-style:italic}
figure{display:inline-block;margin:8px;vertical-align:top}figure img{max-width:560px;border:1px solid #eee}
.filters{position:sticky;top:0;background:#fff;padding:8px 0;border-bottom:1px solid #ddd}
.case{border:1px solid #ddd;border-radius:4px;margin:6px 0;padding:4px 8px}.case summary{cursor:pointer}
.bad{color:#b00;font-weight:600}.ok{color:#070}pre{white-space:pre-wrap;margin:2px 0;background:#f7f7f7;padding:3px}
ins{background:#cfc;text-decoration:none}del{background:#fcc}.k{color:#666;width:110px;display:inline-block}
"""

JS = r"""
const DATA = JSON.parse(document.getElementById('cases-data').textContent);
const esc = s => String(s ?? '').replace(/[&<>"]/g, c => ({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c]));
function diff(a, b) {  // word-level LCS: words of b not in a are <ins>, of a not in b are <del>
  const x = String(a ?? '').split(/(\s+)/), y = String(b ?? '').split(/(\s+)/);
  const n = x.length, m = y.length, L = Array.from({length: n + 1}, () => new Int32Array(m + 1));
  for (let i = n - 1; i >= 0; i--) for (let j = m - 1; j >= 0; j--)
    L[i][j] = x[i] === y[j] ? L[i + 1][j + 1] + 1 : Math.max(L[i + 1][j], L[i][j + 1]);
  let i = 0, j = 0, out = '';
  while (i < n && j < m) {
    if (x[i] === y[j]) { out += esc(x[i]); i++; j++; }
    else if (L[i + 1][j] >= L[i][j + 1]) { out += '<del>' + esc(x[i++]) + '</del>'; }
    else { out += '<ins>' + esc(y[j++]) + '</ins>'; }
  }
  while (i < n) out += '<del>' + esc(x[i++]) + '</del>';
  while (j < m) out += '<ins>' + esc(y[j++]) + '</ins>';
  return out;
}
const pct = v => v == null ? '-' : (100 * v).toFixed(1);
function score(name, t) {
  if (!t) return '';
  return `<span class="${t.em >= 1 ? 'ok' : 'bad'}">${name} EM ${pct(t.em)} BLEU ${pct(t.bleu)} RL ${pct(t.rouge_l)}</span> `;
}
function entry(c, e) {
  const r = c.runs[e], base = c.runs[DATA.unedited] || {}, bo = base.outputs || {}, o = r.outputs || {};
  const s = r.scores || {}, failed = r.failed.join(' ');
  let h = `<summary><b>${esc(c.task.toUpperCase())}</b> · ${esc(e)} · ${esc(c.case_id)} `;
  h += r.error ? `<span class="bad">error: ${esc(r.error.type)}</span>` :
       score('Eff', s.effectiveness) + score('Gen', s.generalization) + score('Spec', s.specificity);
  h += `</summary><div><span class="k">prompt</span><pre>${esc(c.prompt)}</pre>`;
  h += `<span class="k">target</span><pre>${esc(c.target)}</pre>`;
  h += `<span class="k">rephrase</span><pre>${esc(c.rephrase)}</pre>`;
  if (r.error) h += `<pre class="bad">${esc(r.error.message)}</pre>`;
  h += `<span class="k">on prompt</span><pre>${diff(bo.prompt, o.prompt)}</pre>`;
  h += `<span class="k">on rephrase</span><pre>${diff(bo.rephrase, o.rephrase)}</pre>`;
  c.neighbours.forEach((nb, k) => {
    h += `<span class="k">neighbour ${k + 1}</span><pre>${esc(nb.prompt)}</pre>`;
    h += `<span class="k">expected</span><pre>${esc(nb.expected)}</pre>`;
    h += `<span class="k">edited</span><pre>${diff(nb.expected, (o.neighbours || [])[k])}</pre>`;
  });
  h += '<p class="note">Differences: <del>unedited</del> → <ins>edited</ins> (neighbours: expected → edited).</p></div>';
  return `<details class="case" data-task="${esc(c.task)}" data-editor="${esc(e)}" data-failed="${esc(failed)}">${h}</details>`;
}
const list = document.getElementById('cases');
list.innerHTML = DATA.cases.flatMap(c => Object.keys(c.runs).filter(e => e !== DATA.unedited || Object.keys(c.runs).length === 1)
  .map(e => entry(c, e))).join('');
const sel = {task: document.getElementById('f-task'), editor: document.getElementById('f-editor'), failed: document.getElementById('f-failed')};
function apply() {
  let shown = 0;
  for (const el of list.children) {
    const ok = (!sel.task.value || el.dataset.task === sel.task.value) && (!sel.editor.value || el.dataset.editor === sel.editor.value)
      && (!sel.failed.value || (sel.failed.value === 'any' ? el.dataset.failed !== '' : el.dataset.failed.split(' ').includes(sel.failed.value)));
    el.hidden = !ok; shown += ok;
  }
  document.getElementById('shown').textContent = `${shown} of ${list.children.length} shown`;
}
for (const [k, v] of new URLSearchParams(location.hash.slice(1))) if (sel[k]) sel[k].value = v;
Object.values(sel).forEach(s => s.addEventListener('change', apply));
apply();
"""


def _table_html(t: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in t.head)
    body = []
    for i, row in enumerate(t.rows):
        cls = t.classes[i] if i < len(t.classes) else "ours"
        cells = "".join(
            f"<td{' class=l' if j < 2 and not _num(c) else ''}>{html.escape(c)}</td>"
            for j, c in enumerate(row)
        )
        body.append(f'<tr class="{cls}">{cells}</tr>')
    note = f'<p class="note">{html.escape(t.note)}</p>' if t.note else ""
    return f"<h3>{html.escape(t.title)}</h3><table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{note}"


def _finding_html(f: Finding) -> str:
    items = [f"<li>ours: {html.escape(x)}</li>" for x in f.evidence]
    items += [f'<li class="published">{html.escape(x)}</li>' for x in f.published]
    return (f'<div class="finding"><h3>{html.escape(f.key)}: {html.escape(f.claim)} — <span class="verdict">'
            f"{html.escape(f.verdict)}</span></h3><p class=\"note\">Rule: {html.escape(f.rule)}.</p>"
            f"<ul>{''.join(items)}</ul></div>")  # fmt: skip


def _num(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return text == "-"


def _figure_html(caption: str, path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}"><figcaption>{html.escape(caption)}</figcaption></figure>'


def _options(values: list[str], all_label: str) -> str:
    return f'<option value="">{all_label}</option>' + "".join(
        f'<option value="{html.escape(v)}">{html.escape(v)}</option>' for v in values
    )


def render_page(title: str, header: list[str], tables: list[Table], figures: list[tuple[str, Path]],
                cases: list[dict[str, Any]], unedited: str = "Unedited",
                findings: list[Finding] | None = None) -> str:  # fmt: skip
    """The whole page as one string. `cases`: dicts with task, case_id, prompt, target, rephrase,
    neighbours [{prompt, expected}], runs {editor label: {outputs, scores, error, failed: [checks]}}."""
    tasks = sorted({c["task"] for c in cases})
    editors = sorted({e for c in cases for e in c["runs"] if e != unedited})
    payload = script_json({"cases": cases, "unedited": unedited})
    failed = (
        '<option value="">any result</option><option value="any">some check failed</option>'
        '<option value="eff">effectiveness failed</option><option value="gen">generalization failed</option>'
        '<option value="spec">specificity failed</option><option value="error">edit raised an error</option>'
    )
    parts = [
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>",
        f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>",
        "".join(f"<p>{html.escape(line)}</p>" for line in header),
        '<h2 id="tables">Tables</h2>',
        *(_table_html(t) for t in tables),
        *([f'<h2 id="findings">Findings</h2><p class="note">{html.escape(LEGEND)}</p>'] if findings else []),
        *(_finding_html(f) for f in findings or []),
        '<h2 id="figures">Figures</h2>',
        *(_figure_html(c, p) for c, p in figures),
        '<h2 id="browser">Case browser</h2><div class="filters">',
        f'<select id="f-task">{_options(tasks, "all tasks")}</select> ',
        f'<select id="f-editor">{_options(editors, "all editors")}</select> ',
        f'<select id="f-failed">{failed}</select> <span id="shown"></span></div>',
        '<div id="cases"></div>',
        f'<script type="application/json" id="cases-data">{payload}</script>',
        f"<script>{JS}</script></body></html>",
    ]
    return "\n".join(parts)
