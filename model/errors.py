"""Errors with one sentence that says what to do."""


class CheckpointError(ValueError):
    """A checkpoint folder is missing, incomplete, corrupt or from another format."""


class BackboneUnavailableError(CheckpointError):
    """The requested backbone weights cannot be found offline."""


class StateError(ValueError):
    """Serialised scorer state that is corrupt, from another format or from another model."""
