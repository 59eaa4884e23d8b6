"""The one home of the id rules: participant, session and device ids on the wire, in Redis keys and tokens.

Ids never hold ':', '{', '}', a glob character or whitespace, which is what
lets them sit inside Redis keys and hash tags unescaped.
"""
import re

ID_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")
DEVICE_PATTERN = re.compile(r"[A-Za-z0-9_.-]{0,64}")
ID_RULE = "1-64 characters from A-Z a-z 0-9 _ . -"


def is_id(value: object) -> bool:
    return isinstance(value, str) and ID_PATTERN.fullmatch(value) is not None
