"""The exceptions the add-on catches or raises."""


class NonAuthorizedOperationError(Exception):
    """The datablock belongs to another user: you may not change it."""


class ContextError(Exception):
    """Blender is not in a state where the datablock can be dumped or loaded
    (for example a mesh in edit mode); the add-on skips it and retries later."""


class UnsupportedTypeError(Warning):
    """No implementation is registered for this kind of datablock."""


class StateError(Exception):
    """The session is not in a state where this can be done."""


class ServiceNetworkError(Exception):
    """The server cannot be reached or started."""


class NetworkFrameError(Exception):
    """The server sent something this package cannot read."""


class DataError(Exception):
    """A datablock's data cannot be sent (a value with no MessagePack form)."""
