"""report.html in a real headless browser: it renders, its tables hold one row per editor, and the case
browser lists the cases and filters them (filters preset through the URL hash, as a user's selection)."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from clmedit.report.study import write_study_report
from tests.report_fixtures import make_study

BROWSER = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
pytestmark = pytest.mark.skipif(
    BROWSER is None, reason="no headless browser installed (apt-get install chromium) to open report.html"
)


def _dom(page, tmp_path, fragment: str = "") -> str:
    """The page's DOM after its scripts ran."""
    cmd = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}",
           "--dump-dom", page.as_uri() + fragment]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _visible(dom: str) -> list[tuple[str, str]]:
    tags = re.findall(
        r'<details class="case" data-task="(\w+)" data-editor="([^"]+)" data-failed="[^"]*"( hidden="")?>',
        dom,
    )
    return [(task, editor) for task, editor, hidden in tags if not hidden]


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    return write_study_report(make_study(tmp_path_factory.mktemp("html") / "study"))


def test_page_renders_tables_and_lists_every_case(page, tmp_path):
    dom = _dom(page, tmp_path)
    table4 = dom[dom.index("Table IV") :]
    table4 = table4[: table4.index("</table>")]
    rows = re.findall(r'<tr class="ours"><td[^>]*>(\w+)</td><td[^>]*>([^<]+)</td>', table4)
    assert sorted(rows) == sorted((t, e) for t in ("CNLE", "CSNE") for e in ("Unedited", "GRACE", "A-GRACE"))
    assert sorted(_visible(dom)) == sorted(
        (t, e) for t in ("cnle", "csne") for e in ("GRACE", "A-GRACE") for _ in range(2)
    )
    assert 'id="shown">8 of 8 shown' in dom
    assert "<ins>f(0)</ins>" in dom  # the edited output's difference from the unedited one is highlighted


def test_case_browser_filters(page, tmp_path):
    only = _visible(_dom(page, tmp_path, "#task=cnle&editor=GRACE&failed=spec"))
    assert only == [("cnle", "GRACE")]  # case cnle-1: specificity EM 0
    gen = _visible(_dom(page, tmp_path, "#failed=gen"))
    assert sorted(gen) == [("cnle", "A-GRACE"), ("cnle", "GRACE"), ("cnle", "GRACE"), ("csne", "GRACE")]


PAYLOADS = [
    "<!--<script>",
    "</script><script>document.title='pwned'</script>",
    '<img src=x onerror="document.title=\'pwned\'">',
    "-->]]>\u2028\u2029",
]


def test_hostile_texts_stay_text_in_the_page(tmp_path):
    """Case texts, a model name and an editor label holding markup: every case is still listed and
    each payload shows as text; nothing runs and no element is injected."""
    import json

    study = make_study(tmp_path / "study")
    for task in ("cnle", "csne"):
        path = study / task / "study_cases.jsonl"
        cases = [json.loads(line) for line in path.read_text().splitlines()]
        for case, payload in zip(cases, PAYLOADS[:2] if task == "cnle" else PAYLOADS[2:]):
            case["prompt"] = case["rephrase"] = case["target"] = payload
        path.write_text("".join(json.dumps(c) + "\n" for c in cases))
    summary = study / "cnle" / "grace" / "summary.json"
    summary.write_text(json.dumps({**json.loads(summary.read_text()), "label": "$\\frac{$ <!--"}))
    manifest = json.loads((study / "study.json").read_text())
    (study / "study.json").write_text(json.dumps({**manifest, "model": "m</title><script>x=1</script>\n# h"}))
    dom = _dom(write_study_report(study), tmp_path)
    assert 'id="shown">8 of 8 shown' in dom
    assert "<img src=x" not in dom and "pwned" not in re.search(r"<title>(.*?)</title>", dom, re.S)[1]
    for payload in ("&lt;!--&lt;script&gt;", "&lt;/script&gt;&lt;script&gt;document.title='pwned'&lt;/script&gt;"):
        assert f"<pre>{payload}</pre>" in dom
    assert "$\\frac{$ &lt;!--" in dom  # the label, as text (and drawn in the figures without mathtext)
    assert dom.count("<script>") == 1  # only the page's own
