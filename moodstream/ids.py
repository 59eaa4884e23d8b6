"""The one home of the id rules: participant, session and device ids on the wire, in Redis keys and tokens.

Ids never hold ':', '{', '}', a glob character or whitespace, which is what
lets them sit inside Redis keys and hash tags unescaped.
"""
import re

ID_CHARACTERS = "A-Za-z0-9_.-"  # the body of a regular-expression character class
ID_PATTERN = re.compile(f"[{ID_CHARACTERS}]{{1,64}}")
DEVICE_PATTERN = re.compile(f"[{ID_CHARACTERS}]{{0,64}}")
ID_RULE = "1-64 characters from A-Z a-z 0-9 _ . -"


def is_id(value: object) -> bool:
    return isinstance(value, str) and ID_PATTERN.fullmatch(value) is not None


def to_id(text: str) -> str:
    """`text` with each character an id may not hold replaced by '-', cut to 64 characters ('' stays '')."""
    return re.sub(f"[^{ID_CHARACTERS}]", "-", text)[:64]
