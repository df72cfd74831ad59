"""Asset descriptions render as markdown in the UI: a bare <dataset> would be eaten as an HTML tag."""

from __future__ import annotations

import re

from sae_genomics_dagster.definitions import build_definitions


def test_placeholders_in_asset_descriptions_are_in_code_spans(tmp_path) -> None:
    from sae_genomics_core.config import Home

    defs = build_definitions(Home(tmp_path / "home"))
    bare = {}
    for spec in defs.resolve_all_asset_specs():
        text = re.sub(r"`[^`]*`", "", spec.description or "")  # code spans show their text as it is
        found = re.findall(r"<[A-Za-z_][\w-]*>", text)
        if found:
            bare[spec.key.to_user_string()] = found
    assert bare == {}
