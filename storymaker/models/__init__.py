"""Model files: the README's table as data, and ``storymaker fetch`` to download them.

Nothing here runs on import or from a node: downloads happen only when the user runs the command.
"""

from .catalog import ITEMS, KEYS, HubSource, ModelItem, Pin, UrlSource, select
from .errors import FetchError, NetworkUnavailable, VerificationFailed
from .fetch import Fetcher, FetchOptions, Outcome

__all__ = ["ITEMS", "KEYS", "FetchError", "FetchOptions", "Fetcher", "HubSource", "ModelItem", "NetworkUnavailable",
           "Outcome", "Pin", "UrlSource", "VerificationFailed", "select"]
