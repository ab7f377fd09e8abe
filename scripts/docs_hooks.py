"""MkDocs hooks (mkdocs.yml ``hooks:``): the reference pages are generated from the code on every
build, in memory, so the site cannot describe settings, commands or routes that are not there.

A setting, command or route without a reference entry stops the build with one line naming it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File


def _generator():
    path = Path(__file__).with_name("gen_reference.py")
    spec = importlib.util.spec_from_file_location("gen_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def on_files(files, config):
    """Add the generated reference pages to the site's files."""
    generator = _generator()
    try:
        pages = generator.generate()
    except generator.ReferenceGap as gap:
        raise PluginError(f"reference: {gap}") from None
    for path, content in pages.items():
        files.append(File.generated(config, path, content=content))
    return files
