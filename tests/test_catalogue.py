"""The catalogue of scripts: read with ast, never run; broken files listed; links contained."""

from __future__ import annotations

import os
import textwrap

from ska_oso_oet.procedure import catalogue

GOOD = textwrap.dedent(
    '''
    """Observe a target.

    More words.
    """
    import os

    os.makedirs("/tmp/never-made-by-the-catalogue", exist_ok=True)


    def init(subarray_id: int, *, context=None):
        """Bind the subarray."""


    def main(name="world", *args, scan: float = 1.5, **kwargs):
        """Say hello."""


    async def wait(seconds, /, retries=3):
        pass


    def _private():
        pass


    class Observer:
        def method(self):
            pass
    '''
)


def test_a_folder_with_good_broken_and_linked_files(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "good.py").write_text(GOOD)
    (root / "broken.py").write_text("def main(:\n    pass\n")
    (root / "binary.py").write_bytes(b"\xff\xfe\x00 not python")
    (root / "notes.txt").write_text("not a script")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "secret.py").write_text("def main():\n    pass\n")
    (root / "sub" / "nested.py").write_text("def main():\n    pass\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "elsewhere.py").write_text("def main():\n    pass\n")
    os.symlink(outside / "elsewhere.py", root / "link_out.py")
    os.symlink(outside, root / "dir_out")
    os.symlink(root / "sub" / "nested.py", root / "link_in.py")
    os.symlink(root, root / "sub" / "loop")

    entries = catalogue.list_scripts([str(root)])

    by_name = {os.path.basename(e["script_uri"]): e for e in entries}
    assert sorted(by_name) == ["binary.py", "broken.py", "good.py", "nested.py"]
    assert [e["script_uri"] for e in entries] == sorted(e["script_uri"] for e in entries)
    assert by_name["good.py"] == {
        "script_uri": f"file://{os.path.realpath(root / 'good.py')}",
        "doc": "Observe a target.\n\nMore words.",
        "functions": [
            {
                "name": "init",
                "signature": "(subarray_id: int, *, context=None)",
                "doc": "Bind the subarray.",
            },
            {
                "name": "main",
                "signature": "(name='world', *args, scan: float = 1.5, **kwargs)",
                "doc": "Say hello.",
            },
            {"name": "wait", "signature": "(seconds, /, retries=3)", "doc": None, "async": True},
        ],
    }
    assert by_name["broken.py"]["error"].startswith("SyntaxError: ")
    assert "line 1" in by_name["broken.py"]["error"]
    assert by_name["binary.py"]["error"]
    assert not os.path.exists("/tmp/never-made-by-the-catalogue")  # nothing was run


def test_roots_that_do_not_exist_give_an_empty_catalogue(tmp_path):
    assert catalogue.list_scripts([str(tmp_path / "missing")]) == []
    assert catalogue.list_scripts([]) == []


def test_a_file_too_large_is_listed_with_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr(catalogue, "MAX_FILE_BYTES", 10)
    (tmp_path / "big.py").write_text("def main():\n    pass\n")
    [entry] = catalogue.list_scripts([str(tmp_path)])
    assert "larger than 10 bytes" in entry["error"]


def test_the_cli_shows_each_script_with_its_functions():
    from ska_oso_oet.cli import format_catalogue

    text = format_catalogue(
        [
            {
                "script_uri": "file:///s/a.py",
                "doc": "Observe.\nMore.",
                "functions": [
                    {"name": "main", "signature": "(x=1)", "doc": "Run it."},
                    {"name": "wait", "signature": "()", "doc": None, "async": True},
                ],
            },
            {"script_uri": "file:///s/b.py", "doc": None, "functions": [], "error": "SyntaxError"},
        ]
    )
    assert text.splitlines() == [
        "file:///s/a.py",
        "    Observe.",
        "    main(x=1)  - Run it.",
        "    async wait()",
        "file:///s/b.py",
        "    cannot be read: SyntaxError",
    ]
    assert format_catalogue([]) == "No scripts under the device's ScriptRoots."
