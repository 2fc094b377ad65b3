"""Helpers for testing and benchmarking an OET installation without a package index."""

from __future__ import annotations

import base64
import hashlib
import pathlib
import zipfile


def make_wheel(
    directory: pathlib.Path, name: str = "localdep", version: str = "1.0"
) -> pathlib.Path:
    """Write a pure-Python wheel by hand (no build tools needed) and return its path.

    Its package ``name`` has one attribute, ``VALUE = "from <name> <version>"``: a script
    environment that installed it can prove so.
    """
    wheel = directory / f"{name}-{version}-py3-none-any.whl"
    dist_info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": f'VALUE = "from {name} {version}"\n',
        f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist_info}/WHEEL": "Wheel-Version: 1.0\nGenerator: ska-oso-oet\n"
        "Root-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, text in files.items():
            data = text.encode()
            zf.writestr(path, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            record.append(f"{path},sha256={digest.decode()},{len(data)}")
        record.append(f"{dist_info}/RECORD,,")
        zf.writestr(f"{dist_info}/RECORD", "\n".join(record) + "\n")
    return wheel
