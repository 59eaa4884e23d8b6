"""Facts the docs state that the code decides: the Redis key schema and the tokens file's reload interval.

Each is read from its one home in the code (server/store_keys.py, server/auth.py's RELOAD_SECONDS) and
looked for in every place that states it, so a doc cannot drift from the code unnoticed.
"""
import inspect
import re
from pathlib import Path

import pytest

from moodstream.compose.cli import build_parser
from moodstream.server import store_keys
from moodstream.server.auth import RELOAD_SECONDS

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted([ROOT / "README.md", ROOT / "deploy" / "README.md", *(ROOT / "docs").glob("*.md")])
# The placeholders the docs write for each id (store_keys' module docstring says which is which).
PLACEHOLDERS = {"participant_id": "P", "session_id": "S", "model_version": "V", "code_digest": "D"}
# Keys an earlier release wrote, named only where the docs say they are no longer read.
RETIRED_KEYS = {"ms:{p:P}:V:updates": "models.md"}


def schema_from_code() -> set[str]:
    """Every key store_keys makes, with the placeholders for its ids."""
    keys = set(vars(store_keys.SessionKeys.build("P", "S", "V")).values())
    keys |= {store_keys.VERSIONS_KEY}
    for name in store_keys.__all__:
        function = getattr(store_keys, name)
        parameters = inspect.signature(function).parameters if inspect.isfunction(function) else {"-": None}
        if name.endswith("_key") and set(parameters) <= set(PLACEHOLDERS):
            keys.add(function(*(PLACEHOLDERS[p] for p in parameters)))
    return keys


def schema_in_docstring() -> set[str]:
    return set(re.findall(r"^    (ms:\S+)", store_keys.__doc__, flags=re.MULTILINE))


def keys_named(path: Path) -> set[str]:
    return {key.rstrip(".…") for key in re.findall(r"`(ms:[^`]*)`", path.read_text())}


def test_the_key_schemas_docstring_lists_exactly_the_keys_the_code_makes():
    assert schema_in_docstring() == schema_from_code()


def test_the_stored_data_table_lists_every_key_and_the_docs_name_no_other():
    schema = schema_from_code()
    table = set(re.findall(r"^\| `(ms:[^`]*)` \|", (ROOT / "docs" / "privacy.md").read_text(), flags=re.MULTILINE))
    assert table == schema, "docs/privacy.md's table of what Redis holds"
    for path in DOCS:
        named = keys_named(path)
        for retired, where in RETIRED_KEYS.items():
            if retired in named:
                assert path.name == where, f"{path.name} names {retired}, which no release reads any more"
                named.discard(retired)
        # "ms:{p:P}:V:s:S..." stands for the session's keys: its prefix must be one.
        unknown = {key for key in named if key not in schema and not any(k.startswith(key) for k in schema)}
        assert not unknown, f"{path.relative_to(ROOT)} names keys store_keys does not make: {sorted(unknown)}"


def test_streaming_md_lists_every_key_of_a_session():
    session = set(vars(store_keys.SessionKeys.build("P", "S", "V")).values())
    assert keys_named(ROOT / "docs" / "streaming.md") >= session | {store_keys.VERSIONS_KEY,
                                                                     store_keys.directory_key("V")}


def help_texts() -> str:
    parser = build_parser()
    token = next(a.choices for a in parser._actions if a.choices and "token" in a.choices)["token"]
    texts = [token.format_help()]
    for action in token._actions:
        if action.choices:
            texts += [sub.format_help() for sub in action.choices.values()]
            texts += [choice.help or "" for choice in action._choices_actions]
    return " ".join(" ".join(texts).split())  # argparse wraps lines


NUMBER_WORDS = {"second": 1.0, "a second": 1.0}
RELOAD_PHRASES = [  # each says how soon a running server follows a changed tokens file
    r"reloads? (?:the|its tokens) file within (\d+(?:\.\d+)?) s\b",
    r"looks at its tokens file every (second|\d+(?:\.\d+)? s)\b",
    r"refuses? it within (\d+(?:\.\d+)?) s\b",
    r"revoked one is refused, \*\*within (\d+(?:\.\d+)?) s\*\*",
    r"revoked while servers run \| refused within (\d+(?:\.\d+)?) s\b",
]


@pytest.mark.parametrize("where", ["docs", "--help"])
def test_every_statement_of_the_token_reload_interval_is_reload_seconds(where):
    texts = ([" ".join(path.read_text().split()) for path in DOCS] if where == "docs" else [help_texts()])
    stated = [found for text in texts for phrase in RELOAD_PHRASES for found in re.findall(phrase, text)]
    assert len(stated) >= (4 if where == "docs" else 2), stated
    seconds = [NUMBER_WORDS.get(value, None) or float(value.removesuffix(" s")) for value in stated]
    assert seconds == [RELOAD_SECONDS] * len(seconds), stated
