"""Includes and stored spec paths never show the content of a file that is not a .cnn spec."""

from __future__ import annotations

from pathlib import Path

import pytest

from cnnc.compiler.check import check_file
from cnnc.dsl.diagnostics import render_all

SECRET = "root:$6$not-a-real-hash:19000:0:99999:7:::"


def _rendered(path: Path, text: str) -> str:
    path.write_text(text)
    result = check_file(path)
    assert result.has_errors
    return render_all(result.diagnostics, result.sources)


@pytest.mark.parametrize("name", ["secret.txt", "secret", "/proc/self/environ"])
def test_an_include_of_a_non_spec_file_never_echoes_it(name: str, tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_text(SECRET + "\n")
    (tmp_path / "secret").write_text(SECRET + "\n")
    rendered = _rendered(tmp_path / "m.cnn", f'include "{name}"\nmodel m {{\n input x(1, 4, 4)\n flatten\n}}\n')
    assert f'cannot include "{name}": only .cnn files can be included' in rendered
    assert "not-a-real-hash" not in rendered and "PATH=" not in rendered


def test_an_include_name_longer_than_a_file_name_can_be_is_located(tmp_path: Path) -> None:
    name = "a" * 300 + ".cnn"
    rendered = _rendered(tmp_path / "m.cnn", f'include "{name}"\nmodel m {{\n input x(1, 4, 4)\n flatten\n}}\n')
    assert "m.cnn:1:1: error[E024]" in rendered
    assert "a name in it is 304 bytes long, more than a file name can be (255)" in rendered


def test_a_long_path_of_short_names_is_a_missing_file(tmp_path: Path) -> None:
    name = "/".join(["d" * 200] * 30) + "/x.cnn"  # beyond PATH_MAX: the system refuses to look it up
    rendered = _rendered(tmp_path / "m.cnn", f'include "{name}"\nmodel m {{\n input x(1, 4, 4)\n flatten\n}}\n')
    assert "no such file" in rendered


def test_a_stored_spec_is_rechecked_from_its_sources_only(tmp_path: Path) -> None:
    secret = tmp_path / "secret.cnn"
    secret.write_text(SECRET + "\n")
    stored = {"m.cnn": f'include "{secret}"\nmodel m {{\n input x(1, 4, 4)\n flatten\n}}\n'}
    result = check_file("m.cnn", sources=stored, sources_only=True)
    rendered = render_all(result.diagnostics, result.sources)
    assert "the stored sources do not hold it" in rendered and "not-a-real-hash" not in rendered


def test_a_utf8_byte_order_mark_is_not_a_syntax_error(tmp_path: Path) -> None:
    spec = tmp_path / "bom.cnn"
    spec.write_bytes(b"\xef\xbb\xbf" + b"model m {\n input x(1, 8, 8)\n flatten\n dense(2, kernel=3)\n}\n")
    result = check_file(spec)
    assert [d.code for d in result.diagnostics] == ["E003"]
    assert result.diagnostics[0].span.line == 4  # lines and columns count as if the mark were not there
