"""A griffe extension for the API pages: Sphinx roles in docstrings (:class:`X`, :meth:`x`) become `X`, `x`.

The package's docstrings are reST-ish prose; mkdocstrings renders Markdown, where a role would show as
``:meth:`` followed by code. Loaded by mkdocs.yml (plugins > mkdocstrings > python > options > extensions).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:class|meth|func|attr|mod|data|obj|exc):`~?([^`]+)`")
LITERAL = re.compile(r"``([^`]+)``")


class SphinxRoles(griffe.Extension):
    """Rewrite roles and reST double-backtick literals into Markdown code spans."""

    def on_object(self, *, obj: griffe.Object, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = LITERAL.sub(r"`\1`", ROLE.sub(r"`\1`", obj.docstring.value))
