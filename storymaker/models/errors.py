"""Errors the fetch command reports as a message (never a traceback)."""


class FetchError(Exception):
    """A model could not be fetched; the message says why and what to do."""


class NetworkUnavailable(FetchError):
    """The source host could not be reached at all (no network, DNS, firewall, proxy, closed port)."""


class VerificationFailed(FetchError):
    """Downloaded bytes do not have the published size or sha256."""
