"""The catalogue of scripts: read with ast, never run; broken files listed; links contained."""

from __future__ import annotations

import functools
import inspect
import os
import textwrap
import warnings

import pytest

from ska_oso_oet.procedure import catalogue

GOOD = textwrap.dedent(
    '''
    """Observe a target.

    More words.
    """
    import os

    os.makedirs(MARKER, exist_ok=True)


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


def test_a_script_is_described_without_running_it(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    marker = tmp_path / "made-if-the-script-ran"
    (root / "good.py").write_text(GOOD.replace("MARKER", repr(str(marker))))

    entries = catalogue.list_scripts([str(root)])

    by_name = {os.path.basename(e["script_uri"]): e for e in entries}
    assert sorted(by_name) == ["good.py"]
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
    assert not marker.exists()  # nothing was run


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


# -- a whole folder, asserted exactly ----------------------------------------------------------


def _tree(tmp_path):
    """A root with every kind of file and link the catalogue meets; (root, outside)."""
    root = tmp_path / "root"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "good.py").write_text('"""Good."""\n\n\ndef main(x=1):\n    """Run."""\n')
    (root / "broken.py").write_text("x = 1\n\ndef main(:\n    pass\n")
    (root / "indent.py").write_text("x = 1\n  y = 2\n")
    (root / "latin.py").write_bytes(b"x = '\xe9'\n")  # not UTF-8 and no coding line
    (root / "coded.py").write_bytes(b"# -*- coding: latin-1 -*-\n'''\xe9t\xe9.'''\n")
    (root / "nulls.py").write_bytes(b"x = 1\x00\n")
    (root / "empty.py").write_text("")
    (root / "warns.py").write_text('"""\\d is not an escape."""\n')
    os.mkfifo(root / "fifo.py")  # opening it would block: it must never be opened
    (root / "sub" / "nested.py").write_text("def nested():\n    pass\n")
    (root / "sub" / "deeper" / "waits.py").write_text(
        "async def wait(seconds: float = 1.0) -> None:\n    '''Wait.'''\n"
    )
    for hidden in (".hidden", "__pycache__", "sub/.git"):
        (root / hidden).mkdir()
        (root / hidden / "skipped.py").write_text("def main():\n    pass\n")
    (root / ".dotfile.py").write_text("def main():\n    pass\n")
    (root / "notes.txt").write_text("def main():\n    pass\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "elsewhere.py").write_text("def main():\n    pass\n")
    os.symlink(outside / "elsewhere.py", root / "link_out.py")
    os.symlink(outside, root / "dir_out")
    os.symlink(root / "sub" / "nested.py", root / "link_in.py")
    os.symlink(root / "sub", root / "dir_in")
    os.symlink(root, root / "sub" / "deeper" / "loop")
    os.symlink(root / "missing.py", root / "dangling.py")
    os.symlink(root / "self.py", root / "self.py")
    return root, outside


def test_every_kind_of_file_and_link_in_a_folder(tmp_path):
    root, _ = _tree(tmp_path)
    real = os.path.realpath(root)

    def uri(name):
        return f"file://{real}/{name}"

    def problem(name, error):
        return {"script_uri": uri(name), "doc": None, "functions": [], "error": error}

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a script's SyntaxWarning is not the catalogue's
        entries = catalogue.list_scripts([str(root)])

    assert entries == [
        problem("broken.py", "SyntaxError: invalid syntax (line 3)"),
        {"script_uri": uri("coded.py"), "doc": "été.", "functions": []},
        problem("dangling.py", "FileNotFoundError: No such file or directory"),
        {"script_uri": uri("empty.py"), "doc": None, "functions": []},
        problem("fifo.py", "not a regular file: not read"),
        {
            "script_uri": uri("good.py"),
            "doc": "Good.",
            "functions": [{"name": "main", "signature": "(x=1)", "doc": "Run."}],
        },
        problem("indent.py", "IndentationError: unexpected indent (line 2)"),
        entries[7],  # latin.py: the message is the interpreter's, checked below
        problem("nulls.py", entries[8]["error"]),
        problem("self.py", "OSError: Too many levels of symbolic links"),
        {
            "script_uri": uri("sub/deeper/waits.py"),
            "doc": None,
            "functions": [
                {
                    "name": "wait",
                    "signature": "(seconds: float = 1.0) -> None",
                    "doc": "Wait.",
                    "async": True,
                }
            ],
        },
        {
            "script_uri": uri("sub/nested.py"),
            "doc": None,
            "functions": [{"name": "nested", "signature": "()", "doc": None}],
        },
        {"script_uri": uri("warns.py"), "doc": "\\d is not an escape.", "functions": []},
    ]
    assert entries[7]["script_uri"] == uri("latin.py")
    assert entries[7]["error"].startswith("SyntaxError: (unicode error) 'utf-8' codec can't")
    assert entries[7]["error"].endswith("(line 1)")
    assert entries[8]["error"].startswith("SyntaxError: ")
    assert "null bytes" in entries[8]["error"]


def test_a_listing_is_the_same_every_time_and_each_file_is_listed_once(tmp_path):
    root, _ = _tree(tmp_path)
    first = catalogue.list_scripts([str(root)])
    # the same root twice, a root inside it, and the root through a link: nothing doubles
    os.symlink(root, tmp_path / "root_link")
    again = catalogue.list_scripts([str(tmp_path / "root_link"), str(root / "sub"), str(root)])
    assert again == first
    uris = [e["script_uri"] for e in again]
    assert uris == sorted(set(uris))


def test_a_link_leading_out_of_the_roots_is_followed_when_its_target_is_a_root(tmp_path):
    root, outside = _tree(tmp_path)
    entries = catalogue.list_scripts([str(root), str(outside)])
    assert f"file://{os.path.realpath(outside)}/elsewhere.py" in [e["script_uri"] for e in entries]


# -- what a script makes, in the styles operators write ----------------------------------------

SKA_STYLE = '''
"""Configure a subarray and scan.

The subarray is bound at init."""
import functools
from subprocess import run
from math import sqrt as root

__all__ = ["root", "_helper", "Configurer"]


def main(*args, **kwargs):
    """Placeholder until init binds the subarray."""


def init(subarray_id: int, context=None):
    """Bind the subarray."""
    global main, observe, later
    main = functools.partial(_main, subarray_id)
    observe = Observer(subarray_id)
    if subarray_id > 1:
        later = make_later(subarray_id)
    local = functools.partial(_main, 2)  # not global: not the module's


def _main(subarray_id: int, configuration, scan_duration: float, repeat=1, process_json=True):
    """Configure the subarray and scan."""


configure = functools.partial(_main, subarray_id=1)
tuned = functools.partial(_main, 1, "cfg", repeat=3)
wrong = functools.partial(_main, 1, 2, 3, 4, 5, 6)
unsafe = functools.partial(run, "ls")


class Observer:
    """Observes with one subarray."""

    def __init__(self, subarray_id):
        self.subarray_id = subarray_id

    def __call__(self, target, *, dwell=10.0):
        """Point at target and dwell."""

    async def track(self, target, /, rate=1):
        pass


class Configurer:
    """Made by name: __all__ lists the class."""

    def __init__(self, band: str = "1"):
        pass


class Plain:
    pass


default_observer = Observer(1)
track = default_observer.track
alias = configure
plain = Plain()
_helper = functools.partial(_main, 1)
_hidden = Observer(3)
'''


def test_the_callables_of_a_script_in_ska_style(tmp_path):
    (tmp_path / "observe.py").write_text(SKA_STYLE)
    [entry] = catalogue.list_scripts([str(tmp_path)])
    assert entry["doc"] == "Configure a subarray and scan.\n\nThe subarray is bound at init."
    main_doc = "Configure the subarray and scan."
    configure = {
        "signature": (
            "(*, subarray_id: int = 1, configuration, scan_duration: float, repeat=1, "
            "process_json=True)"
        ),
        "doc": main_doc,
        "kind": "partial",
        "wraps": "_main",
        "bound_in": "module",
    }
    assert entry["functions"] == [
        {
            "name": "main",  # what init binds, not the placeholder
            "signature": "(configuration, scan_duration: float, repeat=1, process_json=True)",
            "doc": main_doc,
            "kind": "partial",
            "wraps": "_main",
            "bound_in": "init",
        },
        {
            "name": "init",
            "signature": "(subarray_id: int, context=None)",
            "doc": "Bind the subarray.",
        },
        {"name": "configure", **configure},
        {
            "name": "tuned",
            "signature": "(scan_duration: float, *, repeat=3, process_json=True)",
            "doc": main_doc,
            "kind": "partial",
            "wraps": "_main",
            "bound_in": "module",
        },
        {
            "name": "wrong",  # cannot bind: Start would fail; the catalogue does not guess
            "signature": "(...)",
            "doc": main_doc,
            "kind": "partial",
            "wraps": "_main",
            "bound_in": "module",
        },
        {
            "name": "default_observer",
            "signature": "(target, *, dwell=10.0)",
            "doc": "Point at target and dwell.",
            "kind": "instance",
            "wraps": "Observer",
            "bound_in": "module",
        },
        {
            "name": "track",
            "signature": "(target, /, rate=1)",
            "doc": None,
            "async": True,
            "kind": "method",
            "wraps": "Observer.track",
            "bound_in": "module",
        },
        {"name": "alias", **configure},  # the same callable
        {
            "name": "_helper",
            "signature": "(configuration, scan_duration: float, repeat=1, process_json=True)",
            "doc": main_doc,
            "kind": "partial",
            "wraps": "_main",
            "bound_in": "module",
        },
        {
            "name": "observe",
            "signature": "(target, *, dwell=10.0)",
            "doc": "Point at target and dwell.",
            "kind": "instance",
            "wraps": "Observer",
            "bound_in": "init",
        },
        {
            "name": "later",  # init binds it to what only the running script knows
            "signature": "(...)",
            "doc": None,
            "kind": "unknown",
            "bound_in": "init",
        },
        {"name": "root", "signature": "(...)", "doc": None, "kind": "imported"},
        {
            "name": "Configurer",
            "signature": "(band: str = '1')",
            "doc": "Made by name: __all__ lists the class.",
            "kind": "class",
        },
    ]


# every (function, partial arguments) whose signature Python 3.11 and 3.13 agree on
PARTIALS = (
    [
        ("def f(a, b, c=3): pass", args)
        for args in ("", "1", "1, 2", "1, 2, 3", "a=1", "b=2", "c=4", "1, c=4", "1, b=2")
    ]
    + [
        ("def f(a, /, b, *args, c, d=4, **kw): pass", args)
        for args in ("1", "1, 2", "1, 2, 3, 4", "b=2", "c=3", "d=5", "zz=1", "1, 2, d=5")
    ]
    + [
        (
            "def f(a: int, b: 'str' = 'x', *args: int, c: float = 1.5, **kw: dict) -> None: pass",
            args,
        )
        for args in ("1", "b='y'", "1, 'y', 3", "c=2.5", "a=1")
    ]
    + [("def f(*args, **kwargs): pass", args) for args in ("", "1", "a=1", "1, b=2")]
    + [("def f(a, b, /, c, *, d): pass", args) for args in ("1", "1, 2", "1, 2, 3", "d=4", "c=3")]
)


def define(source: str) -> dict:
    """Run the test's own ``def`` (the catalogue itself runs nothing), without this module's
    ``from __future__ import annotations``, which would turn its annotations into strings."""
    namespace: dict = {"functools": functools}
    exec(compile(source, "<test>", "exec", dont_inherit=True), namespace)
    return namespace


def partial_script(source: str, bound: str) -> str:
    private = source.replace("def f", "def _f")
    return f"import functools\n\n{private}\n\nmain = functools.partial(_f, {bound})\n"


@pytest.mark.parametrize(("source", "bound"), PARTIALS)
def test_the_signature_of_a_partial_is_what_inspect_gives(tmp_path, source, bound):
    made = eval(f"functools.partial(f, {bound})", define(source))
    expected = str(inspect.signature(made))
    (tmp_path / "p.py").write_text(partial_script(source, bound))
    [entry] = catalogue.list_scripts([str(tmp_path)])
    assert entry["functions"][0]["signature"] == expected


@pytest.mark.parametrize(
    ("source", "bound", "signature"),
    [
        # a positional-only name given as a keyword goes to **kw (3.11's inspect refuses it)
        ("def f(a, /, b, **kw): pass", "a=1", "(a, /, b, **kw)"),
        # a positional-only name given as a keyword, with no **kw: the call can never bind
        # (3.13's inspect drops the parameter)
        ("def f(a, b, /, c): pass", "b=2", "(...)"),
    ],
)
def test_partials_that_inspect_versions_disagree_on_follow_the_call(
    tmp_path, source, bound, signature
):
    (tmp_path / "p.py").write_text(partial_script(source, bound))
    [entry] = catalogue.list_scripts([str(tmp_path)])
    assert entry["functions"][0]["signature"] == signature
    made = eval(f"functools.partial(f, {bound})", define(source))
    if signature == "(...)":
        with pytest.raises(TypeError):
            made(1, 3)
    else:
        made(1, 2)  # a=... went to **kw: a is still needed


@pytest.mark.parametrize(
    ("params", "signature"),
    [
        ("a, /", "(a, /)"),
        ("a, /, b", "(a, /, b)"),
        ("a, /, *, b", "(a, /, *, b)"),
        ("*, a", "(*, a)"),
        ("*args, a=1, **kw", "(*args, a=1, **kw)"),
        ("a=[1, 2], b={'k': (3,)}", "(a=[1, 2], b={'k': (3,)})"),
        ("a: 'list[int]' = None", "(a: 'list[int]' = None)"),
    ],
)
def test_signatures_are_rendered_as_inspect_renders_them(tmp_path, params, signature):
    source = f"def main({params}):\n    pass\n"
    assert str(inspect.signature(define(source)["main"])) == signature
    (tmp_path / "s.py").write_text(source)
    [entry] = catalogue.list_scripts([str(tmp_path)])
    assert entry["functions"] == [{"name": "main", "signature": signature, "doc": None}]


# -- bounds ------------------------------------------------------------------------------------


def test_the_number_of_files_is_bounded_and_the_listing_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(catalogue, "MAX_FILES", 3)
    for name in "abcde":
        (tmp_path / f"{name}.py").write_text("")
    entries = catalogue.list_scripts([str(tmp_path)])
    real = os.path.realpath(tmp_path)
    assert [e["script_uri"] for e in entries] == [
        f"file://{real}/",
        f"file://{real}/a.py",
        f"file://{real}/b.py",
        f"file://{real}/c.py",
    ]
    assert entries[0]["error"] == (
        "listing stopped: more than 3 .py files under the script roots; the first ones are listed"
    )


def test_the_directory_entries_examined_are_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(catalogue, "MAX_ENTRIES", 50)
    for i in range(60):
        (tmp_path / f"n{i}.txt").write_text("")
    [entry] = catalogue.list_scripts([str(tmp_path)])
    assert entry["script_uri"] == f"file://{os.path.realpath(tmp_path)}/"
    assert "more than 50 directory entries" in entry["error"]


def test_docstrings_functions_and_the_whole_text_are_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(catalogue, "MAX_DOC", 10)
    monkeypatch.setattr(catalogue, "MAX_FUNCTIONS", 2)
    monkeypatch.setattr(catalogue, "MAX_TEXT", 400)
    fns = "".join(f"def f{i}():\n    '''Doc.'''\n\n" for i in range(5))
    (tmp_path / "a.py").write_text(f'"""{"x" * 25}"""\n{fns}')
    params = ", ".join(f"parameter_{i}" for i in range(30))
    (tmp_path / "b.py").write_text(f"def big({params}):\n    pass\n")
    (tmp_path / "c.py").write_text("def tiny():\n    pass\n")
    a, b, c = catalogue.list_scripts([str(tmp_path)])
    assert a["doc"] == "xxxxxxxxxx [... 15 more characters]"
    assert [f["name"] for f in a["functions"]] == ["f0", "f1"]
    assert b["error"] == "not described: the catalogue passed its bound of 400 characters"
    assert b["doc"] is None
    assert "error" not in c  # the bound leaves room for what still fits


# -- the catalogue kept by the device ----------------------------------------------------------


def test_a_catalogue_parses_again_only_what_changed(tmp_path, monkeypatch):
    (tmp_path / "a.py").write_text("def one():\n    pass\n")
    (tmp_path / "b.py").write_text("def two():\n    pass\n")
    read: list[str] = []
    real_read = catalogue._read

    def counting_read(path, info):
        read.append(os.path.basename(path))
        return real_read(path, info)

    monkeypatch.setattr(catalogue, "_read", counting_read)
    kept = catalogue.Catalogue([str(tmp_path)])
    first = kept.list()
    assert sorted(read) == ["a.py", "b.py"]
    assert kept.list() == first
    assert sorted(read) == ["a.py", "b.py"]  # nothing changed: nothing read again
    (tmp_path / "b.py").write_text("def two(x=2):\n    pass\n")
    (tmp_path / "c.py").write_text("")
    (tmp_path / "a.py").unlink()
    third = kept.list()
    assert sorted(read) == ["a.py", "b.py", "b.py", "c.py"]
    assert [(os.path.basename(e["script_uri"]), e["functions"]) for e in third] == [
        ("b.py", [{"name": "two", "signature": "(x=2)", "doc": None}]),
        ("c.py", []),
    ]


def test_the_cli_notes_what_init_binds_and_prints_no_control_characters():
    from ska_oso_oet.cli import format_catalogue

    text = format_catalogue(
        [
            {"script_uri": "file:///s/", "doc": None, "functions": [], "error": "listing stopped"},
            {
                "script_uri": "file:///s/\x1b[31mred.py",
                "doc": "\n  Observe.\x07\n\nMore.",
                "functions": [
                    {"name": "init", "signature": "(subarray_id)", "doc": None},
                    {
                        "name": "main",
                        "signature": "(scan=1)",
                        "doc": "Scan.",
                        "kind": "partial",
                        "wraps": "_main",
                        "bound_in": "init",
                    },
                    {
                        "name": "observe",
                        "signature": "(target)",
                        "doc": None,
                        "kind": "instance",
                        "wraps": "Observer",
                        "bound_in": "module",
                    },
                    {
                        "name": "later",
                        "signature": "(...)",
                        "doc": None,
                        "kind": "unknown",
                        "bound_in": "init",
                    },
                    {"name": "root", "signature": "(...)", "doc": None, "kind": "imported"},
                ],
            },
        ]
    )
    assert text.splitlines() == [
        "file:///s/",
        "    listing stopped",
        "file:///s/\\x1b[31mred.py",
        "    Observe.\\x07",
        "    init(subarray_id)",
        "    main(scan=1)  [init binds it: partial of _main]  - Scan.",
        "    observe(target)  [instance of Observer]",
        "    later(...)  [init binds it: known only when it runs]",
        "    root(...)  [imported; __all__ lists it]",
    ]


@pytest.mark.parametrize(
    "source",
    [
        "x = " + "1 + " * 100_000 + "1\n",
        "def main(x=" + "-" * 400_000 + "1):\n    pass\n",
        "x = " + "[" * 300_000 + "]" * 300_000 + "\n",
    ],
)
def test_a_source_nested_too_deep_is_listed_with_an_error(tmp_path, source):
    (tmp_path / "deep.py").write_text(source)
    [entry] = catalogue.list_scripts([str(tmp_path)])
    assert entry["error"].split(":")[0] in ("RecursionError", "MemoryError", "SyntaxError")
    assert entry["error"].split(":", 1)[1].strip()  # says why
    assert entry["functions"] == []
