"""The one --help style of every moodstream command, and the argument types they share."""
import argparse

NOTHING_TO_SHOW = (None, False, argparse.SUPPRESS, "", ())


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default unless its help already explains it, or there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        default = action.default
        # Identity, not equality: 0 and 0.0 are defaults worth showing although they equal False.
        empty = any(default is nothing for nothing in NOTHING_TO_SHOW) or default == "" or default == []
        if "default" in help_text.lower() or empty:
            return help_text
        return super()._get_help_string(action)


def port_number(text: str) -> int:
    """argparse type: a TCP port number, 0-65535 (0 = any free port, where an option allows it)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number (0-65535)")
    return port
