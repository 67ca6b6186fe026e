"""Fetch the docs pages' bundles pinned in ``app.docs.pages`` from the npm registry: ``just docs-assets``.

Each tarball is checked against the registry's sha512 integrity before a file is taken from it, and the
directory of every version no longer pinned is removed. To move to a new version, change it in
``app.docs.pages``, run this, and check the pages (``tests/browser``).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import shutil
import sys
import tarfile
import urllib.request

from app.docs.pages import ASSETS_DIR, BUNDLES, Bundle

REGISTRY = "https://registry.npmjs.org"


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310 (a fixed https registry)
        body: bytes = response.read()
        return body


def fetch(bundle: Bundle) -> None:
    metadata = json.loads(_get(f"{REGISTRY}/{bundle.package}/{bundle.version}"))
    tarball = _get(metadata["dist"]["tarball"])
    algorithm, _, expected = metadata["dist"]["integrity"].partition("-")
    if algorithm != "sha512" or base64.b64decode(expected) != hashlib.sha512(tarball).digest():
        raise SystemExit(f"{bundle.package}@{bundle.version}: the tarball does not match its integrity")
    target = ASSETS_DIR / bundle.directory
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(tarball)) as archive:
        for name, member in bundle.files.items():
            source = archive.extractfile(member)
            if source is None:
                raise SystemExit(f"{bundle.package}@{bundle.version} has no file {member}")
            (target / name).write_bytes(source.read())
    print(f"{bundle.package}@{bundle.version} -> {target.relative_to(ASSETS_DIR.parent)}")


def main() -> None:
    for bundle in BUNDLES:
        fetch(bundle)
    pinned = {bundle.directory for bundle in BUNDLES}
    for directory in ASSETS_DIR.iterdir():
        if directory.is_dir() and directory.name not in pinned:
            shutil.rmtree(directory)
            print(f"removed {directory.name}", file=sys.stderr)


if __name__ == "__main__":
    main()
