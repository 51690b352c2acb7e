"""EditCase JSONL I/O: round trip, malformed input counted not raised, atomic writes."""

from collections import Counter

import pytest

from clmedit.data.schema import CaseFileError, EditCase, format_prompt, read_cases, write_cases
from tests.conftest import make_case


def test_prompt_templates_match_the_study():
    assert format_prompt("cnle", "sort a list") == "Intent: sort a list\nCode:"
    assert format_prompt("csne", "x = 1") == "Code: x = 1\nDescription:"
    with pytest.raises(ValueError, match="unknown task"):
        format_prompt("xyz", "a")


def test_round_trip(tmp_path):
    cases = [make_case(i) for i in range(3)]
    cases[0].neighbours[0].answers["m"] = "out"
    path = write_cases(tmp_path / "c.jsonl", cases)
    assert read_cases(path) == cases
    assert not list(tmp_path.glob(".*tmp"))  # no temporary file left behind


def test_malformed_lines_are_skipped_and_counted(tmp_path):
    good = make_case(0).model_dump_json()
    path = tmp_path / "c.jsonl"
    path.write_bytes(
        b"\n".join([good.encode(), b"{not json", b"[1, 2]", b'{"case_id": "x"}', b"\xff\xfe bad utf8", b""])
    )
    skipped = Counter()
    cases = read_cases(path, skipped)
    assert [c.case_id for c in cases] == ["case-0"]
    assert skipped["malformed json line"] == 1
    assert skipped["json line is not an object"] == 1
    assert skipped["non-utf8 line"] == 1
    assert sum(v for k, v in skipped.items() if k.startswith("invalid case")) == 1


def test_missing_or_empty_file_is_a_clear_error(tmp_path):
    with pytest.raises(CaseFileError, match="no such file"):
        read_cases(tmp_path / "absent.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(CaseFileError, match="no valid edit case"):
        read_cases(tmp_path / "empty.jsonl")


def test_unknown_fields_are_rejected():
    data = make_case(0).model_dump()
    data["surprise"] = 1
    with pytest.raises(ValueError):
        EditCase.model_validate(data)


def test_has_answers():
    case = make_case(0)
    assert not case.has_answers("m")
    for n in case.neighbours:
        n.answers["m"] = "x"
    assert case.has_answers("m")
